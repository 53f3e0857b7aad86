"""Per-cell recompute: `remat` as one boolean per cell.

The pipelined step equals the un-pipelined network in loss and every
gradient; recomputed cells are not stashed (fewer residual bytes), and the
backward pieces rerun exactly their forward ops."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import errors
from gpipe_lingvo.pipeline import pipelined_network
from gpipe_lingvo.pipeline import stage_function
from tests import pipeline_test_util as util
from tests import test_pipeline_equivalence as equivalence

# Eight cells (conv, conv, flatten, fc, split, dict_fc, merge, logits).
_MIXED = [True, False, True, True, False, True, False, False]
_ALL = [True] * 8


def _Net(remat, k=2, m=4, schedule='1f1b', v=1, execution='ticks',
         cells=None):
  return pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=cells or util.ConvDenseCells(), num_stages=k,
      num_micro_batches=m, schedule=schedule, remat=remat, virtual_stages=v,
      execution=execution).Instantiate()


@pytest.mark.parametrize('remat,k,m,schedule,v,execution', [
    (_MIXED, 2, 4, '1f1b', 1, 'ticks'),
    (_ALL, 2, 4, 'gpipe', 1, 'dataflow'),
    (str(_MIXED), 2, 4, 'zb_h1', 1, 'dataflow'),
    (_MIXED, 2, 4, 'interleaved_1f1b', 2, 'ticks'),
])
def testLossAndGradientsMatchUnpipelined(remat, k, m, schedule, v, execution):
  ref = equivalence._Reference()
  net = _Net(remat, k, m, schedule, v, execution)
  x, lab = util.Batch()
  loss, _, grads, _ = net.ComputeLossAndGradients(
      x, lab, util.LossFn(16), tf.constant(0, tf.int64))
  np.testing.assert_allclose(loss.numpy(), ref['loss'], rtol=1e-5, atol=1e-6)
  for g, r, name in zip(grads, ref['grads'], ref['names']):
    np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-6,
                               err_msg=name)


def testRecomputedCellsReproduceDropoutMasks():
  cells = util.ConvDenseCells(dropout=0.5)
  flags = [False, True, True, False, True, True, False, True, False]
  x, lab = util.Batch()
  out = [_Net(r, cells=cells).ComputeLossAndGradients(
      x, lab, util.LossFn(16), tf.constant(3, tf.int64))
         for r in (flags, 'never')]
  np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
  for a, b in zip(out[0][2], out[1][2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _Chunk(flags):
  """A StageFunction of three dense layers, flags[i]: layer i recomputed."""
  ws = [tf.Variable(tf.random.stateless_normal([8, 8], [i, 0]))
        for i in range(3)]

  def Body(x):
    for w, again in zip(ws, flags):
      with (stage_function.Recomputed() if again else
            tf.name_scope('kept')):
        x = tf.tanh(tf.matmul(x, w))
    return [x], []

  return stage_function.StageFunction(
      Body, [tf.TensorSpec([4, 8], tf.float32)], ws), ws


def testRecomputedCellsAreNotStashedAndRerunInTheBackward():
  kept, _ = _Chunk([False] * 3)
  mixed, _ = _Chunk([False, True, True])
  size = lambda fn: sum(int(np.prod(s.shape)) for s in fn.residual_specs)
  assert size(mixed) < size(kept)
  # The backward of the mixed chunk reruns the two recomputed layers'
  # forward (MatMul + Tanh each) on top of the kept chunk's backward.
  kb, mb = kept.CountOps('backward'), mixed.CountOps('backward')
  assert mb.get('Tanh', 0) - kb.get('Tanh', 0) == 2
  assert mb['MatMul'] - kb['MatMul'] == 2
  x = tf.random.stateless_normal([4, 8], [5, 5])
  dy = tf.ones([4, 8])
  out = []
  for fn in (kept, mixed):
    _, res = fn.Forward([x])
    out.append(fn.Backward(res, [dy]))
  for a, b in zip(out[0][0] + [g for _, g in out[0][1]],
                  out[1][0] + [g for _, g in out[1][1]]):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)


def testSplitBackwardWithRecomputedCells():
  """B and W pieces (zero-bubble schedules) give the fused gradients."""
  fn, _ = _Chunk([True, False, True])
  x = tf.random.stateless_normal([4, 8], [6, 6])
  dy = tf.ones([4, 8])
  _, res = fn.Forward([x])
  fused_in, fused_w = fn.Backward(res, [dy])
  split_in, w_inputs = fn.BackwardInput(res, [dy])
  split_w = fn.BackwardWeights(w_inputs)
  np.testing.assert_allclose(fused_in[0], split_in[0], rtol=1e-5)
  for (_, a), (_, b) in zip(fused_w, split_w):
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize('remat,match', [
    ([True] * 3, 'lists 3 flags but the network has 8 cells'),
    ([1, 0, 1, 0, 1, 0, 1, 0], 'list of booleans'),
    ('[True, False]', 'lists 2 flags'),
    ('auto', "remat is 'auto'"),
])
def testBadListsNameTheField(remat, match):
  with pytest.raises(errors.ParamsError, match=match) as e:
    _Net(remat)
  assert 'net.remat' in str(e.value)


def testRecomputeWaitsForTheGradientOfItsRun():
  """In the backward piece the recomputed layer's ops have control inputs
  (the gradient reaching their run), so they cannot run at its start."""
  fn, _ = _Chunk([True, False, False])
  fn.Backward(fn.Forward([tf.ones([4, 8])])[1], [tf.ones([4, 8])])
  graph = fn._BackwardFn(True).graph  # pylint: disable=protected-access
  tanh = [op for op in graph.get_operations() if op.type == 'Tanh']
  gated = [op for op in tanh if op.control_inputs]
  assert len(gated) == 1 and len(tanh) == 1
