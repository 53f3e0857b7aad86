"""2-D convolutions (NHWC). Kernels carry weight decay; no bias by default."""
import tensorflow as tf

from gpipe_lingvo import base_layer


def _Pair(v, what):
  if isinstance(v, int):
    return (v, v)
  v = tuple(v)
  if len(v) != 2 or not all(isinstance(i, int) and i > 0 for i in v):
    raise ValueError(f'{what} must be an int or a pair of positive ints, got {v}.')
  return v


class Conv2D(base_layer.BaseLayer):
  """Convolution with optional bias: NHWC in, NHWC out."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('filter_shape', (3, 3), 'Kernel (height, width) or one int.')
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('output_dim', 0, 'Output channels.')
    p.Define('stride', 1, 'Stride: int or (h, w).')
    p.Define('dilation', 1, 'Dilation rate: int or (h, w).')
    p.Define('padding', 'SAME', 'SAME or VALID.')
    p.Define('use_bias', False, 'Add a bias.')
    p.Define('weight_decay', True, 'Whether the kernel is L2-regularised.')
    p.params_init = base_layer.WeightInit.FanOut(2.0)
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    kh, kw = _Pair(p.filter_shape, f'{self.path}: filter_shape')
    if p.input_dim <= 0 or p.output_dim <= 0:
      raise ValueError(f'{self.path}: input_dim and output_dim must be > 0, '
                       f'got {p.input_dim}, {p.output_dim}.')
    if p.padding not in ('SAME', 'VALID'):
      raise ValueError(f'{self.path}: padding must be SAME or VALID, got {p.padding!r}.')
    self._stride = _Pair(p.stride, f'{self.path}: stride')
    self._dilation = _Pair(p.dilation, f'{self.path}: dilation')
    self.CreateVariable('w', base_layer.WeightParams(
        [kh, kw, p.input_dim, p.output_dim], p.params_init, p.dtype,
        regularize=p.weight_decay))
    if p.use_bias:
      self.CreateVariable('b', base_layer.WeightParams(
          [p.output_dim], base_layer.WeightInit.Constant(0.0), p.dtype))

  def FProp(self, inputs):
    p = self.params
    x = self.CastInput(inputs)
    y = tf.nn.conv2d(x, self.Var('w'), strides=[1, *self._stride, 1],
                     padding=p.padding, dilations=[1, *self._dilation, 1])
    if p.use_bias:
      y = tf.nn.bias_add(y, self.Var('b'))
    return y


class DepthwiseConv2D(base_layer.BaseLayer):
  """Depthwise convolution (channel multiplier 1 by default), no bias."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('filter_shape', (3, 3), 'Kernel (height, width) or one int.')
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('channel_multiplier', 1, 'Outputs per input channel.')
    p.Define('stride', 1, 'Stride: int or (h, w) (must be equal).')
    p.Define('dilation', 1, 'Dilation rate: int or (h, w).')
    p.Define('padding', 'SAME', 'SAME or VALID.')
    p.Define('weight_decay', True, 'Whether the kernel is L2-regularised.')
    p.params_init = base_layer.WeightInit.FanOut(2.0)
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    kh, kw = _Pair(p.filter_shape, f'{self.path}: filter_shape')
    if p.input_dim <= 0:
      raise ValueError(f'{self.path}: input_dim must be > 0.')
    self._stride = _Pair(p.stride, f'{self.path}: stride')
    self._dilation = _Pair(p.dilation, f'{self.path}: dilation')
    self.CreateVariable('w', base_layer.WeightParams(
        [kh, kw, p.input_dim, p.channel_multiplier], p.params_init, p.dtype,
        regularize=p.weight_decay, fan_out=kh * kw * p.channel_multiplier))

  def FProp(self, inputs):
    x = self.CastInput(inputs)
    return tf.nn.depthwise_conv2d(
        x, self.Var('w'), strides=[1, *self._stride, 1],
        padding=self.params.padding, dilations=self._dilation)
