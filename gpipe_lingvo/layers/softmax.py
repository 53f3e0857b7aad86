"""Softmax logits over a vocabulary, with its own weights or tied to an
embedding matrix (one variable used by the first and the last stage)."""

from gpipe_lingvo import base_layer
from gpipe_lingvo.layers import dense


class SoftmaxLogits(base_layer.BaseLayer):
  """[..., d] -> logits [..., num_classes] = x W^T + b, W [num_classes, d]
  (the embedding layout, so that tying needs no transpose variable)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, 'Width d.')
    p.Define('num_classes', 0, 'Vocabulary size.')
    p.Define('use_bias', True, 'Add a per-class bias (never tied).')
    p.Define('tie_key', '',
             'If set, W is the matrix an embedding offers under this key '
             '(layers/tied.py) instead of a variable of this layer.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if p.input_dim <= 0 or p.num_classes <= 1:
      raise ValueError(f'{self.path}: input_dim > 0 and num_classes > 1 '
                       f'needed, got {p.input_dim}, {p.num_classes}.')
    if not p.tie_key:
      self.CreateVariable('w', base_layer.WeightParams(
          [p.num_classes, p.input_dim],
          base_layer.WeightInit.Gaussian(p.input_dim ** -0.5), p.dtype))
    if p.use_bias:
      self.CreateVariable('b', base_layer.WeightParams(
          [p.num_classes], base_layer.WeightInit.Constant(0.0), p.dtype))

  def TiedRequests(self):
    p = self.params
    return {'w': (p.tie_key, [p.num_classes, p.input_dim])} if p.tie_key else {}

  def FProp(self, inputs):
    if 'w' not in self.vars:
      raise ValueError(f'{self.path} ties its weights to '
                       f'{self.params.tie_key!r}, which no layer offered: '
                       'build it inside layers.Sequential or a pipeline, '
                       'together with the embedding.')
    x = self.CastInput(inputs)
    logits = dense.Linear(x, self.Var('w'), transpose_w=True)
    if self.params.use_bias:
      logits += self.Var('b')
    return logits
