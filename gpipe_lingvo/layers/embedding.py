"""Token embedding plus position embedding: ids [b, t] -> vectors [b, t, d].

Positions are sinusoidal (Vaswani et al.; no weights, any position below
`max_length`) or learned (a [max_length, d] table). Packed rows (several
sequences in one fixed-length row) pass each token's position within its
own sequence.
"""
import numpy as np
import tensorflow as tf

from gpipe_lingvo import base_layer

POSITION_TYPES = ('sinusoidal', 'learned', 'none')


class SequenceTooLongError(ValueError):
  """A sequence is longer than the position table."""


def SinusoidalTable(length: int, dim: int) -> np.ndarray:
  """[length, dim]: sin of position / 10000^(2i/dim) in the first half of
  the features, cos in the second (the tensor2tensor layout)."""
  half = dim // 2
  inv = np.exp(-np.log(10000.0) * np.arange(half) / max(half - 1, 1))
  angles = np.arange(length)[:, None] * inv[None, :]
  table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  if dim % 2:
    table = np.pad(table, [[0, 0], [0, 1]])
  return table.astype(np.float32)


class Embedding(base_layer.BaseLayer):
  """ids -> emb[ids] * sqrt(d) (optionally) + position embedding."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('vocab_size', 0, 'Rows of the embedding matrix.')
    p.Define('embedding_dim', 0, 'Width d.')
    p.Define('max_length', 0, 'Positions in the table: the longest row.')
    p.Define('position', 'sinusoidal', f'One of {POSITION_TYPES}.')
    p.Define('scale_sqrt_dim', True,
             'Multiply token vectors by sqrt(d) (Vaswani et al.).')
    p.Define('tie_key', '',
             'If set, offer the [vocab_size, d] matrix under this key to a '
             'layer that ties to it (a softmax; layers/tied.py).')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if p.vocab_size <= 1 or p.embedding_dim <= 0 or p.max_length <= 0:
      raise ValueError(f'{self.path}: vocab_size > 1, embedding_dim > 0 and '
                       f'max_length > 0 needed, got {p.vocab_size}, '
                       f'{p.embedding_dim}, {p.max_length}.')
    if p.position not in POSITION_TYPES:
      raise ValueError(f'{self.path}: position must be one of '
                       f'{POSITION_TYPES}, got {p.position!r}.')
    self.CreateVariable('emb', base_layer.WeightParams(
        [p.vocab_size, p.embedding_dim],
        base_layer.WeightInit.Gaussian(p.embedding_dim ** -0.5), p.dtype))
    if p.position == 'learned':
      self.CreateVariable('pos_emb', base_layer.WeightParams(
          [p.max_length, p.embedding_dim],
          base_layer.WeightInit.Gaussian(0.02), p.dtype))

  def TiedVariables(self):
    key = self.params.tie_key
    return {key: self.vars.emb} if key else {}

  def CheckLength(self, length: int) -> None:
    """Raises SequenceTooLongError if rows of `length` tokens do not fit
    the position table."""
    p = self.params
    if length is not None and p.position != 'none' and length > p.max_length:
      raise SequenceTooLongError(
          f'{self.path}: sequences of {length} tokens are longer than the '
          f'position table (max_length={p.max_length}); raise max_length '
          'in the model params or prepare the data with a shorter length.')

  def Positions(self, positions):
    """Position vectors [b, t, d] of int positions [b, t]."""
    p = self.params
    if p.position == 'learned':
      return tf.gather(self.Var('pos_emb'), positions)
    table = SinusoidalTable(p.max_length, p.embedding_dim)
    return tf.gather(tf.constant(table, self.fprop_dtype), positions)

  def FProp(self, ids, positions=None):
    """ids, positions: int [b, t]; positions default to 0..t-1."""
    p = self.params
    self.CheckLength(ids.shape[-1])
    x = tf.gather(self.Var('emb'), ids)
    if p.scale_sqrt_dim:
      x *= tf.cast(p.embedding_dim ** 0.5, x.dtype)
    if p.position == 'none':
      return x
    if positions is None:
      positions = tf.broadcast_to(tf.range(tf.shape(ids)[-1]), tf.shape(ids))
    return x + self.Positions(positions)
