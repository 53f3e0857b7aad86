"""Multi-head dot-product attention and the masks it needs.

Masks are built where they are used, from int segment ids (0 = padding;
in a packed row each sequence has its own id) and, for causal attention,
token indices: a [b, 1, tq, tk] additive bias. Building one is an
elementwise comparison, far cheaper than the attention it masks, while
carrying it between pipeline stages would move and stash O(t^2) values per
example instead of O(t).
"""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo.layers import dense
from gpipe_lingvo.layers import dropout

# Added to the logits of keys a query may not attend.
NEG = -1e9


def _Dim(x, i):
  """Static size of axis i if known (keeps shapes static for the
  pipeline's stage functions), else the dynamic one."""
  return x.shape[i] if x.shape[i] is not None else tf.shape(x)[i]


def AttentionBias(q_segment_ids, k_segment_ids, causal=False,
                  q_offset=None):
  """Additive bias [b, 1, tq, tk]: 0 where query i may attend key j (same
  non-zero segment; j <= i when causal), a large negative number elsewhere.
  q_offset: index of the first query among the keys (cached decoding)."""
  q = q_segment_ids[:, :, None]
  k = k_segment_ids[:, None, :]
  ok = tf.logical_and(tf.equal(q, k), tf.not_equal(k, 0))
  if causal:
    tq, tk = _Dim(q_segment_ids, 1), _Dim(k_segment_ids, 1)
    qi = tf.range(tq)[:, None] + (0 if q_offset is None else q_offset)
    ok = tf.logical_and(ok, (tf.range(tk)[None, :] <= qi)[None])
  return tf.where(ok, 0.0, NEG)[:, None]


class MultiHeadAttention(base_layer.BaseLayer):
  """softmax(q k^T / sqrt(h) + bias) v over num_heads heads of width
  hidden_dim / num_heads, then an output projection back to model_dim.
  hidden_dim is model_dim unless set (Lingvo's MultiHeadedAttention
  hidden_dim): GPipe's T(64, 16384, 32) has 32 heads of 64 at d = 1024."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('model_dim', 0, 'Width d of queries, keys, values and output.')
    p.Define('hidden_dim', 0, 'Width of the projected queries, keys and '
             'values, num_heads x head width (0: model_dim).')
    p.Define('num_heads', 1, 'Heads; must divide hidden_dim.')
    p.Define('atten_dropout_prob', 0.0,
             'Dropout on the attention probabilities (training).')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    hd = self.hidden_dim
    if p.model_dim <= 0 or hd <= 0 or p.num_heads <= 0 or hd % p.num_heads:
      raise ValueError(f'{self.path}: num_heads ({p.num_heads}) must divide '
                       f'hidden_dim ({hd}; model_dim {p.model_dim} unless '
                       'set), all > 0.')
    if not 0.0 <= p.atten_dropout_prob < 1.0:
      raise ValueError(f'{self.path}: atten_dropout_prob must be in [0, 1).')
    d = p.model_dim
    for name in ('query', 'key', 'value', 'post'):
      shape = [hd, d] if name == 'post' else [d, hd]
      self.CreateVariable(f'w_{name}', base_layer.WeightParams(
          shape, p.params_init, p.dtype, regularize=True))
      self.CreateVariable(f'b_{name}', base_layer.WeightParams(
          shape[1:], base_layer.WeightInit.Constant(0.0), p.dtype))

  @property
  def hidden_dim(self) -> int:
    return self.params.hidden_dim or self.params.model_dim

  @property
  def head_dim(self) -> int:
    return self.hidden_dim // self.params.num_heads

  def _Project(self, x, name):
    return dense.Linear(x, self.Var(f'w_{name}')) + self.Var(
        f'b_{name}')

  def _Heads(self, x):
    """[b, t, d] -> [b, n, t, h]."""
    n = self.params.num_heads
    b, t = _Dim(x, 0), _Dim(x, 1)
    h = self.head_dim
    return tf.transpose(tf.reshape(x, [b, t, n, h]), [0, 2, 1, 3])

  def KeysValues(self, memory):
    """Projected keys and values [b, n, tk, h] of memory [b, tk, d] (what a
    decoder caches)."""
    memory = self.CastInput(memory)
    return (self._Heads(self._Project(memory, 'key')),
            self._Heads(self._Project(memory, 'value')))

  def Attend(self, query, keys, values, bias):
    """query [b, tq, d], keys/values [b, n, tk, h], bias [b, 1, tq, tk]."""
    p = self.params
    query = self.CastInput(query)
    q = self._Heads(self._Project(query, 'query'))
    h = self.head_dim
    logits = tf.einsum('bnqh,bnkh->bnqk', q, keys) * tf.cast(h ** -0.5,
                                                             q.dtype)
    logits = tf.cast(logits, tf.float32) + bias
    probs = tf.cast(tf.nn.softmax(logits, axis=-1), q.dtype)
    if p.atten_dropout_prob and context.Current().training:
      probs = dropout.StatelessDropout(probs, 1.0 - p.atten_dropout_prob,
                                       context.LayerSeed(self.path))
    ctx = tf.einsum('bnqk,bnkh->bnqh', probs, values)
    b, tq = _Dim(query, 0), _Dim(query, 1)
    ctx = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]),
                     [b, tq, self.hidden_dim])
    return self._Project(ctx, 'post')

  def FProp(self, query, memory, bias):
    """query [b, tq, d] attends memory [b, tk, d] under bias [b, 1, tq, tk]."""
    keys, values = self.KeysValues(memory)
    return self.Attend(query, keys, values, bias)
