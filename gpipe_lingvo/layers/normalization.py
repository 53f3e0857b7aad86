"""Batch normalisation that works with micro-batches and recomputation.

In training the layer normalises with the statistics of the batch it sees
(a micro-batch inside the pipeline) and, instead of assigning moving averages
itself, records (count, sum, sum of squares) in the step context. The caller
updates the moving averages once per step from the statistics of the whole
mini-batch (UpdateStats), so neither micro-batching nor re-materialization
(which runs with statistics collection off) changes what is accumulated.

`full_batch` moments: when the step context carries `bn_moments[path]`
(mean, variance) for this layer, those are used for normalisation instead of
the local batch's, which is how the engine gives whole-mini-batch semantics.
"""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context

MODES = ('micro_batch', 'full_batch')


class BatchNorm(base_layer.BaseLayer):
  """Batch norm over all axes but the last."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('dim', 0, 'Number of channels (last axis).')
    p.Define('decay', 0.997, 'Moving-average decay.')
    p.Define('epsilon', 1e-3, 'Added to the variance.')
    p.Define('use_scale', True, 'Learn gamma.')
    p.Define('use_offset', True, 'Learn beta.')
    p.Define('mode', 'micro_batch',
             f'One of {MODES}: normalise with each micro-batch\'s statistics '
             '(GPipe paper) or with the whole mini-batch\'s (equals '
             'un-pipelined batch norm).')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if p.dim <= 0:
      raise ValueError(f'{self.path}: dim must be > 0, got {p.dim}.')
    if p.mode not in MODES:
      raise ValueError(f'{self.path}: unknown batch-norm mode {p.mode!r}; '
                       f'use one of {MODES}.')
    if not 0.0 <= p.decay < 1.0:
      raise ValueError(f'{self.path}: decay must be in [0, 1).')
    const = base_layer.WeightInit.Constant
    if p.use_scale:
      self.CreateVariable('gamma', base_layer.WeightParams([p.dim], const(1.0), p.dtype))
    if p.use_offset:
      self.CreateVariable('beta', base_layer.WeightParams([p.dim], const(0.0), p.dtype))
    self.CreateVariable('moving_mean', base_layer.WeightParams(
        [p.dim], const(0.0), p.dtype, trainable=False))
    self.CreateVariable('moving_variance', base_layer.WeightParams(
        [p.dim], const(1.0), p.dtype, trainable=False))

  def FProp(self, inputs):
    p = self.params
    x = self.CastInput(inputs)
    ctx = context.Current()
    if ctx.training:
      x32 = tf.cast(x, tf.float32)
      axes = list(range(x.shape.rank - 1))
      count = tf.cast(tf.reduce_prod(tf.shape(x32)[:-1]), tf.float32)
      s1 = tf.reduce_sum(x32, axes)
      s2 = tf.reduce_sum(tf.square(x32), axes)
      context.AddStats(self.path, (tf.stop_gradient(count), tf.stop_gradient(s1),
                                   tf.stop_gradient(s2)))
      moments = ctx.bn_moments
      if moments is not None and self.path in moments:
        mean, var = moments[self.path]
      else:
        mean, var = tf.nn.moments(x32, axes)
    else:
      mean, var = self.vars.moving_mean, self.vars.moving_variance
    mean = tf.cast(mean, x.dtype)
    var = tf.cast(var, x.dtype)
    gamma = self.Var('gamma') if p.use_scale else None
    beta = self.Var('beta') if p.use_offset else None
    return tf.nn.batch_normalization(x, mean, var, beta, gamma, p.epsilon)

  def StatsUpdates(self, stats):
    """[(variable, new value)] of the moving averages, not yet assigned
    (the task assigns them only if every value is finite).

    stats: list of (count, sum, sum_sq) tuples from one step's forwards.
    """
    if not stats:
      return []
    count = tf.add_n([s[0] for s in stats])
    s1 = tf.add_n([s[1] for s in stats])
    s2 = tf.add_n([s[2] for s in stats])
    mean = s1 / count
    var = tf.maximum(s2 / count - tf.square(mean), 0.0)
    d = self.params.decay
    return [
        (self.vars.moving_mean, d * self.vars.moving_mean +
         (1 - d) * tf.cast(mean, self.params.dtype)),
        (self.vars.moving_variance, d * self.vars.moving_variance +
         (1 - d) * tf.cast(var, self.params.dtype))]

  def UpdateStats(self, stats):
    """Assigns the moving averages of StatsUpdates(stats) at once."""
    for var, value in self.StatsUpdates(stats):
      var.assign(value)


class LayerNorm(base_layer.BaseLayer):
  """Layer normalisation over the last axis (per token): no batch
  statistics, so micro-batching and recomputation cannot change it."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('dim', 0, 'Features (last axis).')
    p.Define('epsilon', 1e-6, 'Added to the variance.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if p.dim <= 0:
      raise ValueError(f'{self.path}: dim must be > 0, got {p.dim}.')
    self.CreateVariable('scale', base_layer.WeightParams(
        [p.dim], base_layer.WeightInit.Constant(1.0), p.dtype))
    self.CreateVariable('bias', base_layer.WeightParams(
        [p.dim], base_layer.WeightInit.Constant(0.0), p.dtype))

  def FProp(self, inputs):
    x = self.CastInput(inputs)
    # Moments in float32 even for bfloat16 activations.
    x32 = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x32, axes=[-1], keepdims=True)
    y = (x32 - mean) * tf.math.rsqrt(var + self.params.epsilon)
    return tf.cast(y, x.dtype) * self.Var('scale') + self.Var('bias')
