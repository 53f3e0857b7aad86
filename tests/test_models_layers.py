"""Layers the NAS cells need: counts, shapes, semantics, mixed precision."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo import layers
from gpipe_lingvo.layers import drop_path as drop_path_lib
from gpipe_lingvo.models import genotypes


def _Build(p, name='layer'):
  return p.Set(name=name).Instantiate()


def _X(shape, seed=0, dtype=tf.float32):
  return tf.cast(tf.random.stateless_normal(shape, [seed, 7]), dtype)


def testSeparableStackCountAndStride():
  cin, f, k = 12, 16, 5
  layer = _Build(layers.StackedSeparableConv.Params().Set(
      input_dim=cin, output_dim=f, filter_shape=k, stride=2))
  expected = (k * k * cin + cin * f + 2 * f) + (k * k * f + f * f + 2 * f)
  assert layer.NumParams() == expected
  assert layer(_X([2, 9, 9, cin])).shape == [2, 5, 5, f]


@pytest.mark.parametrize('kernels,inner', [([(3, 3)], 9), ([(1, 7), (7, 1)], 14)])
def testBottleneckCountAndStride(kernels, inner):
  cin, f = 24, 32
  r = f // 4
  layer = _Build(layers.BottleneckConv.Params().Set(
      input_dim=cin, output_dim=f, inner_kernels=kernels, stride=2))
  n_bn = 2 * (r * (1 + len(kernels)) + f)
  assert layer.NumParams() == cin * r + inner * r * r + r * f + n_bn
  # Both spatial axes are strided, also for 1x7 then 7x1.
  assert layer(_X([2, 11, 10, cin])).shape == [2, 6, 5, f]


def testBottleneckRejectsEmptyWidth():
  with pytest.raises(ValueError, match='bottleneck width'):
    _Build(layers.BottleneckConv.Params().Set(input_dim=4, output_dim=2))


def testFactorizedReductionMatchesManualComputation():
  cin, f = 3, 4
  layer = _Build(layers.FactorizedReduction.Params().Set(
      input_dim=cin, output_dim=f, stride=2))
  assert layer.NumParams() == cin * f + 2 * f  # Same as 1x1 conv + BN.
  x = _X([1, 5, 5, cin])
  y = layer(x).numpy()  # Inference mode: BN with moving stats (0, 1).
  xn = x.numpy()
  w1 = layer.path1.vars.w.numpy()[0, 0]
  w2 = layer.path2.vars.w.numpy()[0, 0]
  p1 = xn[:, ::2, ::2, :] @ w1
  shifted = np.zeros_like(xn)
  shifted[:, :-1, :-1, :] = xn[:, 1:, 1:, :]
  p2 = shifted[:, ::2, ::2, :] @ w2
  eps = layer.params.bn.epsilon
  want = np.concatenate([p1, p2], axis=3) / np.sqrt(1.0 + eps)
  assert y.shape == (1, 3, 3, f)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def testFactorizedReductionNeedsEvenWidth():
  with pytest.raises(ValueError, match='even'):
    _Build(layers.FactorizedReduction.Params().Set(input_dim=3, output_dim=5))


def testAvgPoolExcludesPadding():
  pool = _Build(layers.Pool2D.Params().Set(pooling_type='AVG', window=3,
                                           stride=1, padding='SAME'))
  y = pool(tf.ones([1, 4, 4, 2])).numpy()
  # Counting the zero padding would give 4/9 in the corners.
  np.testing.assert_allclose(y, np.ones_like(y))


def testDropPathKeepProbRamp():
  k = drop_path_lib.KeepProb
  assert float(k(0.7, 100, 0)) == pytest.approx(1.0)
  assert float(k(0.7, 100, 50)) == pytest.approx(0.85)
  assert float(k(0.7, 100, 1000)) == pytest.approx(0.7)
  assert float(k(0.7, 0, 0)) == pytest.approx(0.7)


def testDropPathMasksWholeExamplesAndIsReproducible():
  layer = _Build(layers.DropPath.Params().Set(keep_prob=0.5), 'dp')
  x = tf.ones([64, 3, 3, 2])
  with context.Scope(training=False):
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
  with context.Scope(training=True, step=3, micro_batch=1):
    a = layer(x).numpy()
    b = layer(x).numpy()  # A recomputed forward draws the same mask.
  with context.Scope(training=True, step=3, micro_batch=2):
    c = layer(x).numpy()
  np.testing.assert_array_equal(a, b)
  per_example = a.reshape(64, -1)
  assert set(np.unique(per_example)) <= {0.0, 2.0}
  assert np.all(per_example.min(1) == per_example.max(1))  # Whole examples.
  assert 10 < np.count_nonzero(per_example[:, 0]) < 54
  assert not np.array_equal(a, c)  # Micro-batches draw their own masks.


def testDropPathRampStartsAtIdentity():
  layer = _Build(layers.DropPath.Params().Set(keep_prob=0.5,
                                              burn_in_steps=1000), 'dp')
  x = tf.ones([32, 2, 2, 1])
  with context.Scope(training=True, step=0):
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())


@pytest.mark.parametrize('p', [
    layers.StackedSeparableConv.Params().Set(input_dim=8, output_dim=8,
                                             stride=2),
    layers.BottleneckConv.Params().Set(input_dim=8, output_dim=8,
                                       inner_kernels=[(1, 7), (7, 1)]),
    layers.FactorizedReduction.Params().Set(input_dim=8, output_dim=8),
    layers.ConvBN.Params().Set(input_dim=8, output_dim=8, filter_shape=3,
                               pre_activation='relu'),
    layers.DropPath.Params().Set(keep_prob=0.8),
])
def testMixedPrecisionBfloat16ActivationsFloat32Variables(p):
  layer = _Build(p.Copy().Set(fprop_dtype=tf.bfloat16))
  x = _X([4, 6, 6, 8])
  with context.Scope(training=True, stats={}):
    with tf.GradientTape() as tape:
      y = layer(x)
      loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
  assert y.dtype == tf.bfloat16
  variables = layer.TrainableVariables()
  assert all(v.dtype == tf.float32 for v in variables)
  grads = tape.gradient(loss, variables)
  assert all(g is not None and g.dtype == tf.float32 for g in grads)


def testGenotypeValidationNamesTheProblem():
  g = genotypes.Genotype('D')
  g.normal_inputs = [1, 1, 1, 0, 0, 0, 2, 2, 6, 5]
  with pytest.raises(ValueError, match=r'normal_inputs\[8\]'):
    genotypes.Validate(g)
  g = genotypes.Genotype('B')
  g.reduction_ops = ['conv_9x9'] + list(g.reduction_ops[1:])
  with pytest.raises(ValueError, match='conv_9x9'):
    genotypes.Validate(g)
  with pytest.raises(ValueError, match='Unknown AmoebaNet genotype'):
    genotypes.Genotype('Z')
