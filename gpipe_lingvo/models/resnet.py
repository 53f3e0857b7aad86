"""ResNet v1.5 (ImageNet, bottleneck blocks) and CIFAR ResNets (basic
blocks) as flat lists of cells: stem, one cell per residual block, head.

v1.5: the stride of a downsampling bottleneck block sits on its 3x3 conv
(not on the first 1x1 as in v1). Counting convolutions without bias, BN
scale and offset and the classifier's weights and bias, ResNet-50 has
25,557,032 trainable parameters.
"""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import layers

IMAGENET_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
SHORTCUTS = ('projection', 'pad')


def DefaultBatchNorm():
  """BN template of the usual ResNet recipe (decay 0.9, eps 1e-5)."""
  return layers.BatchNorm.Params().Set(decay=0.9, epsilon=1e-5)


class Stem(base_layer.BaseLayer):
  """conv (no bias) -> BN -> ReLU [-> 3x3 stride-2 max pool]."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 3, 'Image channels.')
    p.Define('output_dim', 64, 'Filters.')
    p.Define('filter_shape', 7, 'Kernel size.')
    p.Define('stride', 2, 'Conv stride.')
    p.Define('max_pool', True, 'Follow with a 3x3 stride-2 max pool.')
    p.Define('bn', layers.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    self.CreateChild('conv_bn', layers.ConvBN.Params().Set(
        input_dim=p.input_dim, output_dim=p.output_dim,
        filter_shape=p.filter_shape, stride=p.stride, post_activation='relu',
        bn=p.bn))
    if p.max_pool:
      self.CreateChild('pool', layers.Pool2D.Params().Set(
          pooling_type='MAX', window=3, stride=2, padding='SAME'))

  def FProp(self, inputs):
    x = self.conv_bn.FProp(inputs)
    return self.pool.FProp(x) if self.params.max_pool else x


class ResidualBlock(base_layer.BaseLayer):
  """relu(branch(x) + shortcut(x)); branch = bottleneck or basic block.

  bottleneck: 1x1 (width) -> 3x3 (width, stride) -> 1x1 (output_dim), v1.5.
  basic: 3x3 (output_dim, stride) -> 3x3 (output_dim).
  Shortcut when the shape changes: 'projection' (1x1 conv stride s + BN) or
  'pad' (subsample and zero-pad channels; He et al.'s CIFAR option A).
  """

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('block_type', 'bottleneck', 'bottleneck or basic.')
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('output_dim', 0, 'Output channels.')
    p.Define('width', 0, 'Bottleneck inner width (output_dim / 4 usually).')
    p.Define('stride', 1, 'Stride (1 or 2).')
    p.Define('shortcut', 'projection', f'One of {SHORTCUTS}.')
    p.Define('zero_init_residual', False,
             "Start the branch's last BN gamma at 0 (block = identity).")
    p.Define('bn', layers.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if p.block_type not in ('bottleneck', 'basic'):
      raise ValueError(f'{self.path}: block_type must be bottleneck or basic, '
                       f'got {p.block_type!r}.')
    if p.shortcut not in SHORTCUTS:
      raise ValueError(f'{self.path}: shortcut must be one of {SHORTCUTS}, '
                       f'got {p.shortcut!r}.')
    if p.stride not in (1, 2):
      raise ValueError(f'{self.path}: stride must be 1 or 2, got {p.stride}.')
    last_bn = p.bn
    relu = dict(post_activation='relu', bn=p.bn)
    if p.block_type == 'bottleneck':
      if p.width <= 0:
        raise ValueError(f'{self.path}: bottleneck width must be > 0.')
      convs = [
          layers.ConvBN.Params().Set(input_dim=p.input_dim, output_dim=p.width,
                                     filter_shape=1, **relu),
          layers.ConvBN.Params().Set(input_dim=p.width, output_dim=p.width,
                                     filter_shape=3, stride=p.stride, **relu),
          layers.ConvBN.Params().Set(input_dim=p.width,
                                     output_dim=p.output_dim, filter_shape=1,
                                     bn=last_bn)]
    else:
      convs = [
          layers.ConvBN.Params().Set(input_dim=p.input_dim,
                                     output_dim=p.output_dim, filter_shape=3,
                                     stride=p.stride, **relu),
          layers.ConvBN.Params().Set(input_dim=p.output_dim,
                                     output_dim=p.output_dim, filter_shape=3,
                                     bn=last_bn)]
    self._convs = self.CreateChildren('conv', convs)
    self._zero_gamma = p.zero_init_residual
    self._shortcut = None
    if p.stride != 1 or p.input_dim != p.output_dim:
      if p.shortcut == 'projection':
        self._shortcut = self.CreateChild(
            'shortcut', layers.ConvBN.Params().Set(
                input_dim=p.input_dim, output_dim=p.output_dim,
                filter_shape=1, stride=p.stride, bn=p.bn))
      else:
        if p.output_dim < p.input_dim:
          raise ValueError(f'{self.path}: a "pad" shortcut cannot reduce '
                           f'channels ({p.input_dim} -> {p.output_dim}).')
        self._shortcut = 'pad'
    if self._zero_gamma:
      last = getattr(self, f'conv_{len(convs) - 1}').bn
      last.vars.gamma.assign(tf.zeros_like(last.vars.gamma))

  def FProp(self, inputs):
    p = self.params
    x = self.CastInput(inputs)
    y = x
    for c in self._convs:
      y = c.FProp(y)
    if self._shortcut is None:
      s = x
    elif self._shortcut == 'pad':
      s = x[:, ::p.stride, ::p.stride, :]
      extra = p.output_dim - p.input_dim
      s = tf.pad(s, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
    else:
      s = self._shortcut.FProp(x)
    return tf.nn.relu(y + s)


class Head(base_layer.BaseLayer):
  """Global average pool -> FC with bias."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, 'Channels.')
    p.Define('num_classes', 0, 'Classes.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    self.CreateChild('pool', layers.GlobalPool.Params())
    self.CreateChild('fc', layers.FullyConnected.Params().Set(
        input_dim=p.input_dim, output_dim=p.num_classes))

  def FProp(self, inputs):
    return self.fc.FProp(self.pool.FProp(self.CastInput(inputs)))


def _Finish(cells, fprop_dtype):
  if fprop_dtype is not None:
    for c in cells:
      c.fprop_dtype = fprop_dtype
  return cells


def ResNetCells(depth=50, num_classes=1000, bn=None, fprop_dtype=None,
                zero_init_residual=False, input_channels=3):
  """ImageNet ResNet v1.5-<depth> (50, 101 or 152): stem, 16-50 blocks, head."""
  if depth not in IMAGENET_DEPTHS:
    raise ValueError(f'ImageNet ResNet depth must be one of '
                     f'{sorted(IMAGENET_DEPTHS)}, got {depth}.')
  if num_classes <= 1:
    raise ValueError(f'num_classes must be > 1, got {num_classes}.')
  bn = (bn or DefaultBatchNorm()).Copy()
  cells = [Stem.Params().Set(name='stem', input_dim=input_channels,
                             output_dim=64, filter_shape=7, stride=2,
                             max_pool=True, bn=bn)]
  cin = 64
  for stage, n in enumerate(IMAGENET_DEPTHS[depth]):
    width = 64 * 2 ** stage
    for b in range(n):
      cells.append(ResidualBlock.Params().Set(
          name=f'stage{stage + 1}_block{b}', block_type='bottleneck',
          input_dim=cin, output_dim=4 * width, width=width,
          stride=2 if b == 0 and stage > 0 else 1, shortcut='projection',
          zero_init_residual=zero_init_residual, bn=bn))
      cin = 4 * width
  cells.append(Head.Params().Set(name='head', input_dim=cin,
                                 num_classes=num_classes))
  return _Finish(cells, fprop_dtype)


def CifarResNetCells(depth=20, num_classes=10, width=16, shortcut='pad',
                     bn=None, fprop_dtype=None, zero_init_residual=False,
                     input_channels=3):
  """He et al.'s CIFAR ResNet-<depth> (6n+2: 20, 32, 44, 56, 110, ...)."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f'CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, '
                     f'20, 32, 44, 56, 110, ...), got {depth}.')
  if num_classes <= 1:
    raise ValueError(f'num_classes must be > 1, got {num_classes}.')
  n = (depth - 2) // 6
  bn = (bn or DefaultBatchNorm()).Copy()
  cells = [Stem.Params().Set(name='stem', input_dim=input_channels,
                             output_dim=width, filter_shape=3, stride=1,
                             max_pool=False, bn=bn)]
  cin = width
  for stage in range(3):
    cout = width * 2 ** stage
    for b in range(n):
      cells.append(ResidualBlock.Params().Set(
          name=f'stage{stage + 1}_block{b}', block_type='basic',
          input_dim=cin, output_dim=cout,
          stride=2 if b == 0 and stage > 0 else 1, shortcut=shortcut,
          zero_init_residual=zero_init_residual, bn=bn))
      cin = cout
  cells.append(Head.Params().Set(name='head', input_dim=cin,
                                 num_classes=num_classes))
  return _Finish(cells, fprop_dtype)


def ResNet(name='network', **kwargs):
  """ResNetCells(**kwargs) in layers.Sequential (un-pipelined)."""
  return layers.Sequential.Params().Set(name=name, cells=ResNetCells(**kwargs))


def CifarResNet(name='network', **kwargs):
  """CifarResNetCells(**kwargs) in layers.Sequential (un-pipelined)."""
  return layers.Sequential.Params().Set(name=name,
                                        cells=CifarResNetCells(**kwargs))
