"""The stage-function boundary: forward, residuals and backward pieces of a
chunk equal tf.GradientTape on the same cells; B and W split the work."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo import layers
from gpipe_lingvo.pipeline import stage_function
from tests import pipeline_test_util as util


def _Dense(name, dim=8, act='tanh'):
  return layers.FullyConnected.Params().Set(name=name, input_dim=dim,
                                            output_dim=dim, activation=act)


def _Conv(name, cin, cout):
  return layers.Conv2D.Params().Set(name=name, input_dim=cin, output_dim=cout,
                                    filter_shape=3, use_bias=True)


# name -> (cells, input nest); inputs are [4, ...] batches.
CASES = {
    'dense': (lambda: [_Dense('a'), _Dense('b', act='relu')],
              lambda: tf.random.stateless_normal([4, 8], [1, 1])),
    'conv': (lambda: [_Conv('c1', 2, 3), layers.Activation.Params().Set(
        name='relu'), _Conv('c2', 3, 2)],
             lambda: tf.random.stateless_normal([4, 5, 5, 2], [1, 2])),
    'batch_norm': (lambda: [_Conv('c', 2, 3), layers.BatchNorm.Params().Set(
        name='bn', dim=3)],
                   lambda: tf.random.stateless_normal([4, 5, 5, 2], [1, 3])),
    'nested': (lambda: [util.DictDense.Params().Set(name='d'),
                        util.UseMask.Params().Set(name='merge')],
               lambda: {'x': tf.random.stateless_normal([4, 8], [1, 4]),
                        'mask': tf.constant([[1] * 8, [0] * 8] * 2)}),
    'drop_path': (lambda: [_Dense('a', act='none'),
                           layers.DropPath.Params().Set(name='dp',
                                                        keep_prob=0.5),
                           _Dense('b')],
                  lambda: tf.random.stateless_normal([4, 8], [1, 6])),
    'bfloat16': (lambda: [_Dense('a').Set(fprop_dtype=tf.bfloat16),
                          _Dense('b').Set(fprop_dtype=tf.bfloat16)],
                 lambda: tf.random.stateless_normal([4, 8], [1, 5])),
}


def _Build(case):
  cells_fn, x_fn = CASES[case]
  net = layers.Sequential.Params().Set(name='net',
                                       cells=cells_fn()).Instantiate()
  x = x_fn()
  variables = net.TrainableVariables()
  flat_x = tf.nest.flatten(x)

  def Body(*flat):
    stats = {}
    with context.Scope(training=True, step=0, micro_batch=0, stats=stats):
      y = net.FProp(tf.nest.pack_sequence_as(x, list(flat)))
    aux = [v for p in sorted(stats) for tup in stats[p] for v in tup]
    return tf.nest.flatten(y), aux

  fn = stage_function.StageFunction(
      Body, [tf.TensorSpec(t.shape, t.dtype) for t in flat_x], variables)
  return net, fn, flat_x, Body, variables


def _Reference(body, flat_x, variables, dys):
  floats = [t for t in flat_x if t.dtype.is_floating]
  with tf.GradientTape() as tape:
    tape.watch(floats)
    outs, aux = body(*flat_x)
    ys = [o for o in outs if o.dtype.is_floating]
  grads = tape.gradient(ys, floats + variables, output_gradients=dys)
  return outs, aux, grads[:len(floats)], grads[len(floats):]


def _Close(a, b, dtype, scale=1.0):
  """`scale` is the magnitude of the values the compared ones are sums of:
  a gradient that cancels to ~0 (batch norm's shift) keeps rounding noise
  of that size, whatever the summation order oneDNN picks."""
  scale = max(1.0, scale)
  tol = dict(rtol=2e-2, atol=2e-2 * scale) if dtype == tf.bfloat16 else dict(
      rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(tf.cast(a, tf.float32), tf.cast(b, tf.float32),
                             **tol)


@pytest.mark.parametrize('case', sorted(CASES))
def testPiecesEqualGradientTape(case):
  _, fn, flat_x, body, variables = _Build(case)
  out_dtype = fn.output_specs[0].dtype
  dys = [tf.cast(tf.random.stateless_normal(s.shape, [2, j]), s.dtype)
         for j, (s, tr) in enumerate(zip(fn.output_specs, fn.diff_trainable))
         if tr]
  outs, aux, ref_in, ref_var = _Reference(body, flat_x, variables, dys)
  float_pos = [j for j, t in enumerate(flat_x) if t.dtype.is_floating]

  @tf.function(autograph=False)
  def Pieces():
    fwd, res = fn.Forward(flat_x)
    only = fn.ForwardOutputs(flat_x)
    in_g, var_g = fn.Backward(res, dys)
    b_in, w_in = fn.BackwardInput(res, dys)
    w_var = fn.BackwardWeights(w_in)
    return fwd, only, in_g, [g for _, g in var_g], b_in, [g for _, g in w_var]

  fwd, only, in_g, var_g, b_in, w_var = Pieces()
  assert len(fwd) == len(outs) + len(aux)
  for a, b, c in zip(fwd, only, list(outs) + list(aux)):
    _Close(a, c, out_dtype)
    _Close(b, c, out_dtype)
  assert [v.name for v in fn.variables] == [v.name for v in variables]
  for grads in (in_g, b_in):
    assert [j for j, g in enumerate(grads) if g is not None] == float_pos
    for j, r in zip(float_pos, ref_in):
      _Close(grads[j], r, out_dtype)
  scale = max(float(tf.reduce_max(tf.abs(tf.cast(r, tf.float32))))
              for r in ref_var)
  for grads in (var_g, w_var):
    for g, r in zip(grads, ref_var):
      _Close(g, r, out_dtype, scale)


def testResidualsSkipVariableReadsAndSplitDoesNoWorkTwice():
  """Two dense tanh layers: the residuals are activations, not weights; the
  fused backward has the 4 matmuls of the gradient; B has the 2 input-
  gradient matmuls, W the 2 weight-gradient matmuls and no forward op."""
  _, fn, _, _, _ = _Build('dense')
  assert all(s.shape[0] == 4 for s in fn.residual_specs)
  assert 'Tanh' not in fn.CountOps('backward')
  assert fn.CountOps('backward')['MatMul'] == 4
  b_ops, w_ops = fn.CountOps('B'), fn.CountOps('W')
  assert b_ops['MatMul'] == 2 and w_ops['MatMul'] == 2
  assert 'TanhGrad' in b_ops and 'TanhGrad' not in w_ops
  for ops in (b_ops, w_ops):
    assert not {'Tanh', 'Relu'} & set(ops)
  # Without input gradients (the first chunk) B keeps only what W needs.
  assert fn.CountOps('B', input_grads=False)['MatMul'] == 1


def testResidualsAreOnlyWhatTheGradientsRead():
  """tf.gradients also builds the gradient of the drop-path mask, which
  nothing fetches; the linear layer's output only that gradient reads is
  not kept: the input, the scaled mask, and the last layer's input and
  tanh output are."""
  _, fn, _, _, _ = _Build('drop_path')
  assert sorted(s.shape.as_list() for s in fn.residual_specs) == [
      [4, 1], [4, 8], [4, 8], [4, 8]]


def testStaticShapesAreConstantsNotStashedTensors():
  """A convolution's weight gradient reads the filter's shape: W computes
  it as a constant (XLA needs it at compile time) instead of taking it from
  B, and no static shape is kept as a residual."""
  _, fn, _, _, _ = _Build('conv')
  assert all(s.dtype.is_floating for s in fn.WeightInputSpecs())
  assert all(s.dtype.is_floating for s in fn.residual_specs)
  w_ops = fn.CountOps('W')
  assert w_ops['Conv2DBackpropFilter'] == 2 and 'ShapeN' not in w_ops
  with tf.Graph().as_default():
    x = tf.compat.v1.placeholder(tf.float32, [2, 3])
    value = stage_function.StaticShapeValue
    assert value(tf.raw_ops.Shape(input=x)).tolist() == [2, 3]
    assert value(tf.raw_ops.ShapeN(input=[x, x[:1]])[1]).tolist() == [1, 3]
    assert value(tf.raw_ops.Size(input=x)) == 6
    y = tf.compat.v1.placeholder(tf.float32, [None, 3])
    assert value(tf.raw_ops.Shape(input=y)) is None


def testForwardRunsOnceAcrossAllPieces():
  """A stateful op in the forward (a counter) runs in Forward only: no
  backward piece copies forward ops."""
  cell = util.CountingCell.Params().Set(name='cell', inner=_Dense('inner'))
  net = layers.Sequential.Params().Set(name='net', cells=[cell]).Instantiate()
  x = tf.ones([4, 8])

  def Body(x):
    with context.Scope(training=True, step=0, micro_batch=0):
      return [net.FProp(x)], []

  fn = stage_function.StageFunction(Body, [tf.TensorSpec(x.shape, x.dtype)],
                                    net.TrainableVariables())
  dy = tf.ones([4, 8])

  @tf.function(autograph=False)
  def Run():
    _, res = fn.Forward([x])
    fn.Backward(res, [dy])
    _, w_in = fn.BackwardInput(res, [dy])
    return [g for _, g in fn.BackwardWeights(w_in)]

  Run()
  assert float(net.cell.vars.count.numpy()) == 1.0


def testPlacementScopeAppliesToTraceAndCalls():
  x = tf.ones([4, 8])
  net = layers.Sequential.Params().Set(name='net',
                                       cells=[_Dense('a')]).Instantiate()
  fn = stage_function.StageFunction(
      lambda x: ([net.FProp(x)], []), [tf.TensorSpec(x.shape, x.dtype)],
      net.TrainableVariables(), scope=lambda: tf.device('/device:CPU:1'))
  devices = {op.device for op in fn._g1.graph.get_operations()  # pylint: disable=protected-access
             if op.type in ('MatMul', 'Tanh', 'TanhGrad')}
  assert devices == {'/device:CPU:1'}


def testDynamicShapesAndVersionAreRejectedClearly():
  net = layers.Sequential.Params().Set(name='net',
                                       cells=[_Dense('a')]).Instantiate()
  with pytest.raises(stage_function.StageFunctionError, match='static'):
    stage_function.StageFunction(
        lambda x: ([net.FProp(x)], []), [tf.TensorSpec([None, 8])],
        net.TrainableVariables())
  stage_function.CheckTensorFlowVersion('2.21.3')
  with pytest.raises(stage_function.UnsupportedTensorFlowError,
                     match=r'needs TensorFlow 2\.21\.x; found 2\.16\.1'):
    stage_function.CheckTensorFlowVersion('2.16.1')


def testBodyMayCaptureTensorsOfTheEnclosingFunction():
  """A loss scaled by a tensor of the calling tf.function (the global batch
  size) is captured by every piece, as in the trainer's step."""
  net = layers.Sequential.Params().Set(name='net',
                                       cells=[_Dense('a')]).Instantiate()

  @tf.function(autograph=False)
  def Step(x):
    n = tf.cast(tf.shape(x)[0], tf.float32)
    fn = stage_function.StageFunction(
        lambda x: ([tf.reduce_sum(net.FProp(x)) / n], []),
        [tf.TensorSpec(x.shape, x.dtype)], net.TrainableVariables())
    _, res = fn.Forward([x])
    _, grads = fn.Backward(res, [tf.ones([])], input_grads=False)
    _, w_in = fn.BackwardInput(res, [tf.ones([])], input_grads=False)
    return [g for _, g in grads], [g for _, g in fn.BackwardWeights(w_in)]

  x = tf.random.stateless_normal([4, 8], [3, 1])
  fused, split = Step(x)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(net.FProp(x)) / 4.0
  for a, b, r in zip(fused, split, tape.gradient(loss,
                                                  net.TrainableVariables())):
    np.testing.assert_allclose(a, r, rtol=1e-5)
    np.testing.assert_allclose(b, r, rtol=1e-5)
