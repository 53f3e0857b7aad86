"""AmoebaNet-A/B/D as a flat list of pipelineable cells.

Follows the TF reference (tensorflow/tpu `models/official/amoeba_net`) as
described in shared/notes/amoebanet.md: GPipe's AmoebaNet-X(L, F) has L
normal cells in total (L/3 per stack) and F filters per op in the first
stack, doubled at each of the two reduction cells.

Between cells the activation is a dict nest:
  {'cur': output of the last cell, 'prev': output of the one before,
   'aux_logits': auxiliary-head logits (training only, once computed)}
so the network can be cut between any two cells. The last cell returns
logits, or {'logits', 'aux_logits'} when the auxiliary head ran.
"""
import math

import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo import hyperparams
from gpipe_lingvo import layers
from gpipe_lingvo.models import genotypes

STEMS = ('imagenet', 'cifar')


def DefaultBatchNorm():
  """BN template of the TF reference hparams (decay 0.9997, eps 1e-3)."""
  return layers.BatchNorm.Params().Set(decay=0.9997, epsilon=1e-3)


class PoolOp(base_layer.BaseLayer):
  """Max/avg pool (SAME; avg excludes padding) then, if the width changes,
  1x1 conv + BN without ReLU (TF AmoebaNet pooling op)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('pooling_type', 'MAX', 'MAX or AVG.')
    p.Define('window', 3, 'Window size.')
    p.Define('stride', 1, 'Stride.')
    p.Define('input_dim', 0, 'Input channels.')
    p.Define('output_dim', 0, 'Output channels.')
    p.Define('bn', layers.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    self.CreateChild('pool', layers.Pool2D.Params().Set(
        pooling_type=p.pooling_type, window=p.window, stride=p.stride,
        padding='SAME'))
    self._project = p.input_dim != p.output_dim
    if self._project:
      self.CreateChild('project', layers.ConvBN.Params().Set(
          input_dim=p.input_dim, output_dim=p.output_dim, bn=p.bn))

  def FProp(self, inputs):
    x = self.pool.FProp(inputs)
    return self.project.FProp(x) if self._project else x


def OpParams(op, input_dim, filters, stride, bn):
  """Layer params of one AmoebaNet op (TF `network_utils` semantics)."""
  relu_conv = dict(pre_activation='relu', bn=bn)
  if op == 'none':
    if stride == 1 and input_dim == filters:
      return layers.Identity.Params()
    return layers.ConvBN.Params().Set(input_dim=input_dim, output_dim=filters,
                                      stride=stride, **relu_conv)
  if op == '1x1':
    return layers.ConvBN.Params().Set(input_dim=input_dim, output_dim=filters,
                                      stride=stride, **relu_conv)
  if op in ('3x3', '1x7_7x1'):
    kernels = [(3, 3)] if op == '3x3' else [(1, 7), (7, 1)]
    return layers.BottleneckConv.Params().Set(
        input_dim=input_dim, output_dim=filters, inner_kernels=kernels,
        stride=stride, bn=bn)
  if op.startswith('separable_') or op.startswith('dil_2_separable_'):
    # The TF parser reads only the kernel size and the layer count of
    # 'dil_2_separable_5x5_2' and builds an undilated separable 5x5 (flag F3
    # of the fact sheet); we do the same.
    k = int(op.split('x')[-1].split('_')[0])
    return layers.StackedSeparableConv.Params().Set(
        input_dim=input_dim, output_dim=filters, filter_shape=k, stride=stride,
        num_layers=int(op.rsplit('_', 1)[-1]), bn=bn)
  if op in ('avg_pool_3x3', 'max_pool_3x3', 'max_pool_2x2'):
    return PoolOp.Params().Set(
        pooling_type='AVG' if op.startswith('avg') else 'MAX',
        window=int(op[-1]), stride=stride, input_dim=input_dim,
        output_dim=filters, bn=bn)
  raise ValueError(f'Unknown AmoebaNet op {op!r}; known: {genotypes.OPS}.')


class StemConv(base_layer.BaseLayer):
  """3x3 conv + BN on the image; starts the state nest {'cur': ...}."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 3, 'Image channels.')
    p.Define('output_dim', 32, 'Filters.')
    p.Define('stride', 2, 'Stride.')
    p.Define('padding', 'VALID', 'SAME or VALID.')
    p.Define('bn', layers.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    self.CreateChild('conv_bn', layers.ConvBN.Params().Set(
        input_dim=p.input_dim, output_dim=p.output_dim, filter_shape=3,
        stride=p.stride, padding=p.padding, bn=p.bn))

  def FProp(self, inputs):
    return {'cur': self.conv_bn.FProp(inputs)}


class AmoebaCell(base_layer.BaseLayer):
  """One normal or reduction cell: (cur, prev) -> (new, cur)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('genotype', genotypes.Genotype('D'), 'Genotype params.')
    p.Define('reduction', False, 'Reduction cell (stride 2 on h0/h1 ops).')
    p.Define('filters', 0, 'Filters per op (F of this cell).')
    p.Define('input_dim', 0, "Channels of state 'cur'.")
    p.Define('skip_dim', 0,
             "Channels of state 'prev'; 0 if there is none (the first cell: "
             "h1 is then the raw 'cur').")
    p.Define('skip_reduce', False,
             "'prev' is spatially twice the size of 'cur' (the previous cell "
             'was a reduction): adapt it by a factorized reduction.')
    p.Define('drop_path', layers.DropPath.Params(),
             'Drop path applied to each op output except identities.')
    p.Define('bn', layers.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    g = p.genotype
    genotypes.Validate(g, f'{self.path}.genotype')
    f = p.filters
    if f <= 0 or p.input_dim <= 0:
      raise ValueError(f'{self.path}: filters and input_dim must be > 0, got '
                       f'{f}, {p.input_dim}.')
    kind = 'reduction' if p.reduction else 'normal'
    self._ops = list(g.Get(f'{kind}_ops'))
    self._inputs = list(g.Get(f'{kind}_inputs'))
    self._concat = list(g.Get(f'{kind}_concat'))
    relu_conv = dict(pre_activation='relu', bn=p.bn)
    # h0: ReLU -> 1x1 -> BN of the previous cell's output, always.
    self.CreateChild('prep_cur', layers.ConvBN.Params().Set(
        input_dim=p.input_dim, output_dim=f, **relu_conv))
    # h1: the output two cells back, adapted only when needed.
    self._raw_skip = p.skip_dim <= 0
    if self._raw_skip:
      h1_dim = p.input_dim
    elif p.skip_reduce:
      self.CreateChild('prep_prev', layers.FactorizedReduction.Params().Set(
          input_dim=p.skip_dim, output_dim=f, stride=2, **relu_conv))
      h1_dim = f
    elif p.skip_dim != f:
      self.CreateChild('prep_prev', layers.ConvBN.Params().Set(
          input_dim=p.skip_dim, output_dim=f, **relu_conv))
      h1_dim = f
    else:
      h1_dim = f
    self._adapt_prev = not self._raw_skip and hasattr(self, 'prep_prev')
    dims = [f, h1_dim] + [f] * 5
    # Children are attributes; these dicts hold their names only, since a
    # checkpoint cannot save layers kept under integer keys.
    self._drop = {}
    for j, (op, i) in enumerate(zip(self._ops, self._inputs)):
      stride = 2 if p.reduction and i < 2 else 1
      name = f'comb{j // 2}_{"left" if j % 2 == 0 else "right"}'
      self.CreateChild(name, OpParams(op, dims[i], f, stride, p.bn))
      if op != 'none':
        self._drop[j] = self.CreateChild(f'{name}_drop', p.drop_path).name
    # States concatenated at a different size or width (h0/h1 of a reduction
    # cell, a raw h1) go through a factorized reduction without ReLU first.
    self._concat_adapt = {}
    for i in self._concat:
      if (p.reduction and i < 2) or dims[i] != f:
        self._concat_adapt[i] = f'concat_adapt_{i}'
        self.CreateChild(
            f'concat_adapt_{i}', layers.FactorizedReduction.Params().Set(
                input_dim=dims[i], output_dim=f,
                stride=2 if p.reduction and i < 2 else 1, bn=p.bn))
    self.output_dim = f * len(self._concat)

  def FProp(self, inputs):
    if not isinstance(inputs, dict) or 'cur' not in inputs:
      raise ValueError(f'{self.path}: expects the AmoebaNet state dict '
                       f"{{'cur', 'prev', ...}}, got {type(inputs).__name__}.")
    cur = self.CastInput(inputs['cur'])
    states = [self.prep_cur.FProp(cur)]
    if self._raw_skip:
      states.append(cur)
    else:
      if 'prev' not in inputs:
        raise ValueError(f"{self.path}: needs state 'prev' (skip_dim > 0).")
      prev = self.CastInput(inputs['prev'])
      states.append(self.prep_prev.FProp(prev) if self._adapt_prev else prev)
    for k in range(5):
      branch = []
      for j in (2 * k, 2 * k + 1):
        side = 'left' if j % 2 == 0 else 'right'
        h = getattr(self, f'comb{k}_{side}').FProp(states[self._inputs[j]])
        if j in self._drop:
          h = getattr(self, self._drop[j]).FProp(h)
        branch.append(h)
      states.append(branch[0] + branch[1])
    parts = []
    for i in self._concat:
      s = states[i]
      parts.append(getattr(self, self._concat_adapt[i]).FProp(s) if i in self._concat_adapt
                   else s)
    out = dict(inputs)
    out['cur'] = tf.concat(parts, axis=3)
    out['prev'] = cur
    return out


class AuxHead(base_layer.BaseLayer):
  """Auxiliary classifier on 'cur' (training only); adds 'aux_logits'.

  ReLU -> 5x5 avg pool stride 3 VALID -> 1x1 conv-BN-ReLU ->
  conv over the whole remaining map, VALID -> BN-ReLU -> FC.
  """

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, "Channels of 'cur'.")
    p.Define('map_size', 0, "Spatial size of 'cur' (sets the big kernel).")
    p.Define('num_classes', 0, 'Classes.')
    p.Define('aux_scaling', 0.4, 'Scales the 128/768 widths of NASNet.')
    p.Define('bn', layers.BatchNorm.Params(), 'BN template.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    k = (p.map_size - 5) // 3 + 1
    if p.map_size < 5:
      raise ValueError(f'{self.path}: the auxiliary head needs a map of at '
                       f'least 5x5, got {p.map_size}; use a larger image or '
                       'disable it (use_aux_head=False).')
    w1, w2 = int(128 * p.aux_scaling), int(768 * p.aux_scaling)
    if w1 <= 0 or w2 <= 0:
      raise ValueError(f'{self.path}: aux_scaling {p.aux_scaling} gives an '
                       'empty layer.')
    self.CreateChild('pool', layers.Pool2D.Params().Set(
        pooling_type='AVG', window=5, stride=3, padding='VALID'))
    self.CreateChild('proj', layers.ConvBN.Params().Set(
        input_dim=p.input_dim, output_dim=w1, post_activation='relu',
        bn=p.bn))
    self.CreateChild('conv', layers.ConvBN.Params().Set(
        input_dim=w1, output_dim=w2, filter_shape=k, padding='VALID',
        post_activation='relu', bn=p.bn))
    self.CreateChild('fc', layers.FullyConnected.Params().Set(
        input_dim=w2, output_dim=p.num_classes))

  def FProp(self, inputs):
    if not context.Current().training:
      return inputs
    x = tf.nn.relu(self.CastInput(inputs['cur']))
    x = self.conv.FProp(self.proj.FProp(self.pool.FProp(x)))
    out = dict(inputs)
    out['aux_logits'] = self.fc.FProp(tf.reshape(x, [-1, x.shape[-1]]))
    return out


class Head(base_layer.BaseLayer):
  """ReLU -> global average pool -> dropout -> FC; ends the state nest."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, "Channels of 'cur'.")
    p.Define('num_classes', 0, 'Classes.')
    p.Define('dropout_keep_prob', 0.5, 'Dropout keep probability before FC.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    self.CreateChild('pool', layers.GlobalPool.Params())
    self.CreateChild('dropout', layers.Dropout.Params().Set(
        keep_prob=p.dropout_keep_prob))
    self.CreateChild('fc', layers.FullyConnected.Params().Set(
        input_dim=p.input_dim, output_dim=p.num_classes))

  def FProp(self, inputs):
    x = tf.nn.relu(self.CastInput(inputs['cur']))
    logits = self.fc.FProp(self.dropout.FProp(self.pool.FProp(x)))
    if 'aux_logits' in inputs:
      return {'logits': logits, 'aux_logits': inputs['aux_logits']}
    return logits


def ReductionIndices(num_normal_cells):
  """Normal-cell indices preceded by a reduction cell (TF rule)."""
  return [int(num_normal_cells / 3), int(2 * num_normal_cells / 3)]


def StageSizes(image_size, stem):
  """Spatial sizes (stem conv output, stack 1, stack 2, stack 3)."""
  if stem == 'imagenet':
    s0 = (image_size - 3) // 2 + 1
    s1 = math.ceil(math.ceil(s0 / 2) / 2)
  else:
    s0 = s1 = image_size
  s2 = math.ceil(s1 / 2)
  return s0, s1, s2, math.ceil(s2 / 2)


def AmoebaNetCells(genotype='D', num_normal_cells=18, filters=208,
                   image_size=224, num_classes=1000, stem='imagenet',
                   stem_filters=0, use_aux_head=True, aux_scaling=0.4,
                   dropout_keep_prob=0.5, drop_path_keep_prob=1.0,
                   drop_path_burn_in_steps=0, bn=None, fprop_dtype=None,
                   input_channels=3):
  """Cell params of AmoebaNet-<genotype>(L=num_normal_cells, F=filters).

  stem: 'imagenet' (3x3 stride-2 VALID conv with stem_filters (default 32)
  + two reduction stem cells at F/4 and F/2) or 'cifar' (3x3 stride-1 SAME
  conv with stem_filters (default 3F), no stem cells; NASNet's CIFAR stem).
  genotype: 'A', 'B', 'D' or genotype Params (genotypes.Genotype()).
  fprop_dtype: tf.bfloat16 for mixed precision (float32 variables).
  drop_path_burn_in_steps: length of the linear keep-prob ramp (normally
  the total training steps).
  """
  g = genotypes.Genotype(genotype) if isinstance(genotype, str) else genotype
  if not isinstance(g, hyperparams.Params):
    raise ValueError('genotype must be a name in '
                     f'{genotypes.NAMES} or genotypes.Genotype() params.')
  genotypes.Validate(g)
  if stem not in STEMS:
    raise ValueError(f'stem must be one of {STEMS}, got {stem!r}.')
  if num_normal_cells < 3:
    raise ValueError(f'num_normal_cells (L) must be >= 3 (three stacks), got '
                     f'{num_normal_cells}.')
  if filters <= 0 or filters % 4:
    raise ValueError(f'filters (F) must be a positive multiple of 4 (the '
                     f'stem cells use F/4 and F/2 and reduce by factorized '
                     f'reduction), got {filters}.')
  if stem == 'imagenet' and filters < 16:
    raise ValueError(f'filters (F) must be >= 16 with the ImageNet stem: its '
                     f'first stem cell runs at F/4 and bottlenecks to F/16 '
                     f'channels; got {filters}.')
  if num_classes <= 1:
    raise ValueError(f'num_classes must be > 1, got {num_classes}.')
  bn = (bn or DefaultBatchNorm()).Copy()
  sizes = StageSizes(image_size, stem)
  if min(sizes) < 1 or (stem == 'imagenet' and image_size < 3):
    raise ValueError(f'image_size {image_size} is too small.')
  drop = layers.DropPath.Params().Set(
      keep_prob=drop_path_keep_prob, burn_in_steps=drop_path_burn_in_steps)
  n_concat = {k: len(g.Get(f'{k}_concat')) for k in ('normal', 'reduction')}

  cells = []

  def Add(p):
    if fprop_dtype is not None:
      p.fprop_dtype = fprop_dtype
    cells.append(p)

  if stem == 'imagenet':
    stem_dim = stem_filters or 32
    Add(StemConv.Params().Set(name='stem', input_dim=input_channels,
                              output_dim=stem_dim, stride=2, padding='VALID',
                              bn=bn))
  else:
    stem_dim = stem_filters or 3 * filters
    Add(StemConv.Params().Set(name='stem', input_dim=input_channels,
                              output_dim=stem_dim, stride=1, padding='SAME',
                              bn=bn))
  # (channels of cur, channels of prev or 0, whether the last cell reduced)
  cur_dim, prev_dim, last_reduced = stem_dim, 0, False

  def AddCell(name, reduction, f):
    nonlocal cur_dim, prev_dim, last_reduced
    p = AmoebaCell.Params().Set(
        name=name, genotype=g.Copy(), reduction=reduction, filters=f,
        input_dim=cur_dim, skip_dim=prev_dim,
        skip_reduce=last_reduced and prev_dim > 0, drop_path=drop.Copy(),
        bn=bn)
    Add(p)
    cur_dim, prev_dim = f * n_concat['reduction' if reduction else 'normal'], cur_dim
    last_reduced = reduction

  if stem == 'imagenet':
    AddCell('stem_cell_0', True, filters // 4)
    AddCell('stem_cell_1', True, filters // 2)
  reductions = ReductionIndices(num_normal_cells)
  f = filters
  for i in range(num_normal_cells):
    if i in reductions:
      f *= 2
      AddCell(f'reduction_{reductions.index(i)}', True, f)
    AddCell(f'normal_{i}', False, f)
    if use_aux_head and i == reductions[1] - 1:
      Add(AuxHead.Params().Set(name='aux_head', input_dim=cur_dim,
                               map_size=sizes[2], num_classes=num_classes,
                               aux_scaling=aux_scaling, bn=bn))
  Add(Head.Params().Set(name='head', input_dim=cur_dim,
                        num_classes=num_classes,
                        dropout_keep_prob=dropout_keep_prob))
  return cells


def AmoebaNet(name='network', **kwargs):
  """AmoebaNetCells(**kwargs) wrapped in layers.Sequential (un-pipelined)."""
  return layers.Sequential.Params().Set(name=name,
                                        cells=AmoebaNetCells(**kwargs))
