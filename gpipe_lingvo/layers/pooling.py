"""Max / average pooling (average excludes padding) and global pooling."""
import tensorflow as tf

from gpipe_lingvo import base_layer


class Pool2D(base_layer.BaseLayer):
  """Spatial pooling. tf.nn.avg_pool with SAME excludes padded cells."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('pooling_type', 'MAX', 'MAX or AVG.')
    p.Define('window', 2, 'Window size (int or (h, w)).')
    p.Define('stride', 2, 'Stride (int or (h, w)).')
    p.Define('padding', 'SAME', 'SAME or VALID.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    if self.params.pooling_type not in ('MAX', 'AVG'):
      raise ValueError(f'{self.path}: pooling_type must be MAX or AVG, got '
                       f'{self.params.pooling_type!r}.')

  def FProp(self, inputs):
    p = self.params
    fn = tf.nn.max_pool2d if p.pooling_type == 'MAX' else tf.nn.avg_pool2d
    return fn(self.CastInput(inputs), p.window, p.stride, p.padding)


class GlobalPool(base_layer.BaseLayer):
  """Mean (or max) over the spatial axes: [N, H, W, C] -> [N, C]."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('pooling_type', 'AVG', 'AVG or MAX.')
    return p

  def FProp(self, inputs):
    x = self.CastInput(inputs)
    if self.params.pooling_type == 'MAX':
      return tf.reduce_max(x, axis=[1, 2])
    return tf.reduce_mean(x, axis=[1, 2])
