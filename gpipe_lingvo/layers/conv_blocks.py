"""Convolution blocks of NAS cells: ReLU-conv-BN, separable, bottlenecked
and factorised-reduction convolutions.

Every block takes a `bn` template (BatchNorm params whose decay, epsilon and
mode are the model's); `dim` is filled in per use. Convolutions have no
bias. All blocks run in the activation dtype (`fprop_dtype`) with variables
in `dtype`.
"""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo.layers import activation
from gpipe_lingvo.layers import conv
from gpipe_lingvo.layers import normalization


def _BN(template, dim):
  return template.Copy().Set(dim=dim)


def _CheckDims(layer, *dims):
  for name in dims:
    v = getattr(layer.params, name)
    if not isinstance(v, int) or v <= 0:
      raise ValueError(f'{layer.path}: {name} must be a positive int, got {v!r}.')


class ConvBN(base_layer.BaseLayer):
  """[pre-activation] -> conv (no bias) -> BN -> [post-activation]."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('output_dim', 0, 'Output channels.')
    p.Define('filter_shape', (1, 1), 'Kernel (h, w) or one int.')
    p.Define('stride', 1, 'Stride: int or (h, w).')
    p.Define('padding', 'SAME', 'SAME or VALID.')
    p.Define('pre_activation', 'none', 'Activation before the conv.')
    p.Define('post_activation', 'none', 'Activation after the BN.')
    p.Define('bn', normalization.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    _CheckDims(self, 'input_dim', 'output_dim')
    self._pre = activation.GetActivation(p.pre_activation)
    self._post = activation.GetActivation(p.post_activation)
    self.CreateChild('conv', conv.Conv2D.Params().Set(
        input_dim=p.input_dim, output_dim=p.output_dim,
        filter_shape=p.filter_shape, stride=p.stride, padding=p.padding))
    self.CreateChild('bn', _BN(p.bn, p.output_dim))

  def FProp(self, inputs):
    x = self._pre(self.CastInput(inputs))
    return self._post(self.bn.FProp(self.conv.FProp(x)))


class SeparableConv2D(base_layer.BaseLayer):
  """Depthwise KxK (multiplier 1) then pointwise 1x1; no bias, no BN."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('output_dim', 0, 'Output channels.')
    p.Define('filter_shape', (3, 3), 'Depthwise kernel (h, w) or one int.')
    p.Define('stride', 1, 'Stride of the depthwise conv.')
    p.Define('dilation', 1, 'Dilation of the depthwise conv.')
    p.Define('padding', 'SAME', 'SAME or VALID.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    _CheckDims(self, 'input_dim', 'output_dim')
    self.CreateChild('depthwise', conv.DepthwiseConv2D.Params().Set(
        input_dim=p.input_dim, filter_shape=p.filter_shape, stride=p.stride,
        dilation=p.dilation, padding=p.padding))
    self.CreateChild('pointwise', conv.Conv2D.Params().Set(
        input_dim=p.input_dim, output_dim=p.output_dim, filter_shape=1))

  def FProp(self, inputs):
    return self.pointwise.FProp(self.depthwise.FProp(self.CastInput(inputs)))


class StackedSeparableConv(base_layer.BaseLayer):
  """num_layers x (ReLU -> separable conv -> BN); stride in the first only.

  NASNet/AmoebaNet's `separable_KxK_2` is num_layers = 2.
  """

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('output_dim', 0, 'Output channels.')
    p.Define('filter_shape', (3, 3), 'Depthwise kernel.')
    p.Define('stride', 1, 'Stride of the first pass.')
    p.Define('dilation', 1, 'Dilation of the depthwise convs.')
    p.Define('num_layers', 2, 'Number of ReLU-sep-BN passes.')
    p.Define('bn', normalization.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    _CheckDims(self, 'input_dim', 'output_dim', 'num_layers')
    cin = p.input_dim
    for i in range(p.num_layers):
      self.CreateChild(f'sep_{i}', SeparableConv2D.Params().Set(
          input_dim=cin, output_dim=p.output_dim, filter_shape=p.filter_shape,
          stride=p.stride if i == 0 else 1, dilation=p.dilation))
      self.CreateChild(f'bn_{i}', _BN(p.bn, p.output_dim))
      cin = p.output_dim

  def FProp(self, inputs):
    x = self.CastInput(inputs)
    for i in range(self.params.num_layers):
      x = getattr(self, f'bn_{i}').FProp(
          getattr(self, f'sep_{i}').FProp(tf.nn.relu(x)))
    return x


class BottleneckConv(base_layer.BaseLayer):
  """ReLU-1x1-BN down to R channels, inner convs at R, ReLU-1x1-BN up.

  `inner_kernels` [(3, 3)] gives AmoebaNet's bottlenecked `3x3`;
  [(1, 7), (7, 1)] its `1x7_7x1`. Each inner conv is ReLU -> conv -> BN
  and strides along the axes its kernel spans (so 1x7 strides along W and
  7x1 along H).
  """

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('output_dim', 0, 'Output channels.')
    p.Define('inner_kernels', [(3, 3)], 'Kernels of the inner convs.')
    p.Define('bottleneck_ratio', 0.25, 'R = int(output_dim * ratio).')
    p.Define('stride', 1, 'Stride (int), applied by the inner convs.')
    p.Define('bn', normalization.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    _CheckDims(self, 'input_dim', 'output_dim')
    r = int(p.output_dim * p.bottleneck_ratio)
    if r <= 0:
      raise ValueError(f'{self.path}: bottleneck width int({p.output_dim} * '
                       f'{p.bottleneck_ratio}) is 0; raise output_dim.')
    if not p.inner_kernels:
      raise ValueError(f'{self.path}: inner_kernels is empty.')
    if not isinstance(p.stride, int) or p.stride <= 0:
      raise ValueError(f'{self.path}: stride must be a positive int.')
    kernels = [conv._Pair(k, f'{self.path}: inner_kernels')  # pylint: disable=protected-access
               for k in p.inner_kernels]
    if p.stride > 1:
      for ax in (0, 1):
        if not any(k[ax] > 1 for k in kernels):
          raise ValueError(f'{self.path}: stride {p.stride} needs an inner '
                           f'kernel wider than 1 along axis {ax}; got '
                           f'{kernels}.')
    relu = dict(pre_activation='relu', bn=p.bn)
    self.CreateChild('reduce', ConvBN.Params().Set(
        input_dim=p.input_dim, output_dim=r, **relu))
    inner = []
    for kh, kw in kernels:
      stride = (p.stride if kh > 1 else 1, p.stride if kw > 1 else 1)
      inner.append(ConvBN.Params().Set(
          input_dim=r, output_dim=r, filter_shape=(kh, kw), stride=stride,
          **relu))
    self._inner = self.CreateChildren('inner', inner)
    self.CreateChild('expand', ConvBN.Params().Set(
        input_dim=r, output_dim=p.output_dim, **relu))

  def FProp(self, inputs):
    x = self.reduce.FProp(self.CastInput(inputs))
    for i in range(len(self.params.inner_kernels)):
      x = getattr(self, f'inner_{i}').FProp(x)
    return self.expand.FProp(x)


class FactorizedReduction(base_layer.BaseLayer):
  """Halves the spatial size with two offset 1x1 paths (NASNet).

  Stride 2: path 1 takes every 2nd pixel, path 2 the same after shifting by
  one pixel (pad bottom/right, drop the first row and column); each is a
  1x1 conv to output_dim/2, concatenated, then one BN. Stride 1: 1x1 conv
  and BN. Same parameter count as a 1x1 conv + BN.
  """

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('output_dim', 0, 'Output channels (even when stride is 2).')
    p.Define('stride', 2, '1 or 2.')
    p.Define('pre_activation', 'none', 'Activation applied first.')
    p.Define('bn', normalization.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    _CheckDims(self, 'input_dim', 'output_dim')
    if p.stride not in (1, 2):
      raise ValueError(f'{self.path}: stride must be 1 or 2, got {p.stride}.')
    self._pre = activation.GetActivation(p.pre_activation)
    if p.stride == 1:
      self.CreateChild('conv', conv.Conv2D.Params().Set(
          input_dim=p.input_dim, output_dim=p.output_dim, filter_shape=1))
    else:
      if p.output_dim % 2:
        raise ValueError(f'{self.path}: output_dim must be even for a stride-2 '
                         f'factorized reduction, got {p.output_dim}.')
      half = p.output_dim // 2
      self.CreateChild('path1', conv.Conv2D.Params().Set(
          input_dim=p.input_dim, output_dim=half, filter_shape=1))
      self.CreateChild('path2', conv.Conv2D.Params().Set(
          input_dim=p.input_dim, output_dim=half, filter_shape=1))
    self.CreateChild('bn', _BN(p.bn, p.output_dim))

  def FProp(self, inputs):
    x = self._pre(self.CastInput(inputs))
    if self.params.stride == 1:
      return self.bn.FProp(self.conv.FProp(x))
    p1 = self.path1.FProp(x[:, ::2, ::2, :])
    shifted = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :]
    p2 = self.path2.FProp(shifted[:, ::2, ::2, :])
    return self.bn.FProp(tf.concat([p1, p2], axis=3))
