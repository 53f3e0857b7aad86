"""Layers: shapes, determinism, batch-norm statistics, dropout seeds, loss."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo import layers


def _Conv(**kw):
  p = layers.Conv2D.Params().Set(name='conv', input_dim=3, output_dim=5, **kw)
  return p.Instantiate()


def testConvShapesAndStride():
  x = tf.random.stateless_normal([2, 9, 9, 3], [1, 2])
  assert _Conv().FProp(x).shape == [2, 9, 9, 5]
  assert _Conv(stride=2).FProp(x).shape == [2, 5, 5, 5]
  assert _Conv(padding='VALID', filter_shape=(3, 1)).FProp(x).shape == [2, 7, 9, 5]


def testBadParamsFailAtInstantiate():
  with pytest.raises(ValueError, match='input_dim and output_dim'):
    layers.Conv2D.Params().Set(name='c', input_dim=0, output_dim=3).Instantiate()
  with pytest.raises(ValueError, match='keep_prob'):
    layers.Dropout.Params().Set(name='d', keep_prob=0.0).Instantiate()
  with pytest.raises(ValueError, match='batch-norm mode'):
    layers.BatchNorm.Params().Set(name='b', dim=3, mode='ghost').Instantiate()
  with pytest.raises(ValueError, match='identifier'):
    layers.Flatten.Params().Set(name='a/b').Instantiate()


def testInitialValuesDependOnlyOnPathAndSeed():
  a, b = _Conv(), _Conv()
  np.testing.assert_array_equal(a.vars.w.numpy(), b.vars.w.numpy())
  c = _Conv(random_seed=3)
  assert not np.allclose(a.vars.w.numpy(), c.vars.w.numpy())


def testSequentialNamesVariablesByLayerPath(tmp_path):
  p = layers.Sequential.Params().Set(name='net', cells=[
      layers.FullyConnected.Params().Set(name='fc1', input_dim=4, output_dim=3),
      layers.BatchNorm.Params().Set(name='bn', dim=3),
  ])
  net = p.Instantiate()
  ckpt = tf.train.Checkpoint(net=net)
  path = ckpt.write(str(tmp_path / 'ckpt'))
  keys = {k for k, _ in tf.train.list_variables(path)}
  assert 'net/fc1/w/.ATTRIBUTES/VARIABLE_VALUE' in keys
  assert 'net/bn/moving_mean/.ATTRIBUTES/VARIABLE_VALUE' in keys
  assert [v.name for v in net.TrainableVariables()] == [
      'net/fc1/w:0', 'net/fc1/b:0', 'net/bn/gamma:0', 'net/bn/beta:0']


def testBatchNormAccumulatedMicroBatchStatsEqualFullBatch():
  bn = layers.BatchNorm.Params().Set(name='bn', dim=4, decay=0.0).Instantiate()
  x = tf.random.stateless_normal([12, 3, 3, 4], [3, 4]) * 2.0 + 1.0
  stats = {}
  with context.Scope(training=True, stats=stats):
    for part in tf.split(x, 4):
      bn.FProp(part)
  bn.UpdateStats(stats['bn'])
  mean, var = tf.nn.moments(x, [0, 1, 2])
  np.testing.assert_allclose(bn.vars.moving_mean.numpy(), mean.numpy(), atol=1e-5)
  np.testing.assert_allclose(bn.vars.moving_variance.numpy(), var.numpy(),
                             atol=1e-4)


def testBatchNormTrainingNormalisesAndEvalUsesMovingStats():
  bn = layers.BatchNorm.Params().Set(name='bn', dim=2, epsilon=1e-6).Instantiate()
  x = tf.constant([[1.0, 10.0], [3.0, 30.0]])
  with context.Scope(training=True):
    y = bn.FProp(x).numpy()
  np.testing.assert_allclose(y, [[-1, -1], [1, 1]], atol=1e-3)
  np.testing.assert_allclose(bn.FProp(x).numpy(), x.numpy(), atol=1e-3)


def testDropoutMasksAreStatelessPerStepAndMicroBatch():
  d = layers.Dropout.Params().Set(name='drop', keep_prob=0.5).Instantiate()
  x = tf.ones([64, 16])
  def Run(step, mb):
    with context.Scope(training=True, step=step, micro_batch=mb):
      return d.FProp(x).numpy()
  np.testing.assert_array_equal(Run(3, 1), Run(3, 1))
  assert not np.array_equal(Run(3, 1), Run(3, 2))
  assert not np.array_equal(Run(3, 1), Run(4, 1))
  kept = Run(3, 1)
  assert set(np.unique(kept)) == {0.0, 2.0}
  np.testing.assert_array_equal(d.FProp(x).numpy(), x.numpy())  # eval: identity


def testSoftmaxCrossEntropyWithLabelSmoothingMatchesFormula():
  loss = layers.SoftmaxCrossEntropy.Params().Set(
      name='loss', num_classes=3, label_smoothing=0.3).Instantiate()
  logits = tf.constant([[2.0, 0.5, -1.0]])
  got = loss.FProp(logits, tf.constant([0])).numpy()
  logp = tf.nn.log_softmax(logits).numpy()[0]
  target = np.array([0.7 + 0.1, 0.1, 0.1])
  np.testing.assert_allclose(got, [-(target * logp).sum()], rtol=1e-6)


def testPoolingAndGlobalPool():
  x = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
  mx = layers.Pool2D.Params().Set(name='p').Instantiate().FProp(x)
  np.testing.assert_array_equal(mx.numpy().ravel(), [5, 7, 13, 15])
  avg = layers.Pool2D.Params().Set(name='a', pooling_type='AVG', window=3,
                                   stride=1).Instantiate().FProp(x)
  # SAME average pooling excludes padding: the corner averages 4 cells.
  assert avg.numpy()[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
  g = layers.GlobalPool.Params().Set(name='g').Instantiate().FProp(x)
  assert g.numpy().ravel() == pytest.approx([7.5])


def testBfloat16ActivationsKeepFloat32Variables():
  fc = layers.FullyConnected.Params().Set(
      name='fc', input_dim=4, output_dim=2, fprop_dtype=tf.bfloat16).Instantiate()
  y = fc.FProp(tf.ones([3, 4]))
  assert y.dtype == tf.bfloat16
  assert fc.vars.w.dtype == tf.float32
