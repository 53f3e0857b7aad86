"""Dropout with stateless seeds, so recomputation reproduces the mask."""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context


def StatelessDropout(x, keep_prob, seed, noise_shape=None):
  """Inverted dropout drawing its mask from a stateless seed."""
  shape = noise_shape if noise_shape is not None else tf.shape(x)
  u = tf.random.stateless_uniform(shape, seed, dtype=tf.float32)
  mask = tf.cast(u < keep_prob, x.dtype) / tf.cast(keep_prob, x.dtype)
  return x * mask


class Dropout(base_layer.BaseLayer):
  """Drops activations in training with probability 1 - keep_prob."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('keep_prob', 1.0, 'Probability of keeping an activation.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    if not 0.0 < self.params.keep_prob <= 1.0:
      raise ValueError(f'{self.path}: keep_prob must be in (0, 1], got '
                       f'{self.params.keep_prob}.')

  def FProp(self, inputs):
    keep = self.params.keep_prob
    if keep >= 1.0 or not context.Current().training:
      return inputs
    return StatelessDropout(inputs, keep, context.LayerSeed(self.path))
