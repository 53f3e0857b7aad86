"""The Transformer layer: self-attention, optional cross-attention and a
feed-forward block, each with a residual connection, layer norm before
(pre-LN) or after (post-LN, Vaswani et al.) and dropout on the attention
probabilities, the residual branch and the ReLU output. Dropout draws
stateless masks from (step, micro-batch, layer path), so a forward
recomputed in the pipeline's backward is exact.
"""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo.layers import attention
from gpipe_lingvo.layers import dense
from gpipe_lingvo.layers import dropout
from gpipe_lingvo.layers import normalization


def _Dropout(prob):
  return dropout.Dropout.Params().Set(keep_prob=1.0 - prob)


def _CheckProb(layer, name, value):
  if not 0.0 <= value < 1.0:
    raise ValueError(f'{layer.path}: {name} must be in [0, 1), got {value}.')


class AttentionBlock(base_layer.BaseLayer):
  """x + dropout(attention(LN(x), memory)) (pre-LN), or
  LN(x + dropout(attention(x, memory))) (post-LN). With memory None the
  block attends to its own (normalised) input: self-attention."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('model_dim', 0, 'Width d.')
    p.Define('num_heads', 1, 'Attention heads.')
    p.Define('atten_hidden_dim', 0, 'Attention width, num_heads x head '
             'width (0: model_dim).')
    p.Define('atten_dropout_prob', 0.0, 'Dropout on attention probabilities.')
    p.Define('residual_dropout_prob', 0.0, 'Dropout on the residual branch.')
    p.Define('pre_layer_norm', True, 'Layer norm before (True) or after.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    _CheckProb(self, 'residual_dropout_prob', p.residual_dropout_prob)
    self.CreateChild('ln', normalization.LayerNorm.Params().Set(
        dim=p.model_dim))
    self.CreateChild('atten', attention.MultiHeadAttention.Params().Set(
        model_dim=p.model_dim, num_heads=p.num_heads,
        hidden_dim=p.atten_hidden_dim,
        atten_dropout_prob=p.atten_dropout_prob))
    self.CreateChild('dropout', _Dropout(p.residual_dropout_prob))

  def _Residual(self, x, y):
    out = x + self.dropout.FProp(y)
    return out if self.params.pre_layer_norm else self.ln.FProp(out)

  def Query(self, x):
    """What the attention sees of x: LN(x) (pre-LN) or x."""
    return self.ln.FProp(x) if self.params.pre_layer_norm else x

  def FProp(self, x, bias, memory=None):
    q = self.Query(x)
    y = self.atten.FProp(q, q if memory is None else memory, bias)
    return self._Residual(x, y)

  def ExtendStep(self, x, bias, keys, values):
    """One decoding step: x [b, 1, d] attends cached keys/values."""
    return self._Residual(x, self.atten.Attend(self.Query(x), keys, values,
                                               bias))


class FeedForwardBlock(base_layer.BaseLayer):
  """x + dropout(W2 dropout(relu(W1 LN(x)))) (pre-LN), or the post-LN
  order."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('model_dim', 0, 'Width d.')
    p.Define('hidden_dim', 0, 'Width of the hidden (ReLU) layer.')
    p.Define('relu_dropout_prob', 0.0, 'Dropout on the ReLU output.')
    p.Define('residual_dropout_prob', 0.0, 'Dropout on the residual branch.')
    p.Define('pre_layer_norm', True, 'Layer norm before (True) or after.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    _CheckProb(self, 'relu_dropout_prob', p.relu_dropout_prob)
    _CheckProb(self, 'residual_dropout_prob', p.residual_dropout_prob)
    self.CreateChild('ln', normalization.LayerNorm.Params().Set(
        dim=p.model_dim))
    self.CreateChild('fc1', dense.FullyConnected.Params().Set(
        input_dim=p.model_dim, output_dim=p.hidden_dim, activation='relu'))
    self.CreateChild('relu_dropout', _Dropout(p.relu_dropout_prob))
    self.CreateChild('fc2', dense.FullyConnected.Params().Set(
        input_dim=p.hidden_dim, output_dim=p.model_dim))
    self.CreateChild('dropout', _Dropout(p.residual_dropout_prob))

  def FProp(self, x):
    pre = self.params.pre_layer_norm
    h = self.fc1.FProp(self.ln.FProp(x) if pre else x)
    out = x + self.dropout.FProp(self.fc2.FProp(self.relu_dropout.FProp(h)))
    return out if pre else self.ln.FProp(out)


class TransformerLayer(base_layer.BaseLayer):
  """Self-attention (causal with mask_self_atten), cross-attention to a
  memory (has_aux_atten: a decoder layer) and a feed-forward block; the
  names follow Lingvo's TransformerLayer."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('model_dim', 0, 'Width d.')
    p.Define('hidden_dim', 0, 'Feed-forward hidden width.')
    p.Define('num_heads', 1, 'Attention heads.')
    p.Define('atten_hidden_dim', 0, 'Attention width, num_heads x head '
             'width (0: model_dim).')
    p.Define('mask_self_atten', False,
             'Causal self-attention (a decoder or language model).')
    p.Define('has_aux_atten', False,
             'Cross-attention to a memory (encoder-decoder decoder).')
    p.Define('atten_dropout_prob', 0.0, 'Dropout on attention probabilities.')
    p.Define('residual_dropout_prob', 0.0, 'Dropout on residual branches.')
    p.Define('relu_dropout_prob', 0.0, 'Dropout on the ReLU output.')
    p.Define('pre_layer_norm', True, 'Layer norm before (True) or after.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    atten = AttentionBlock.Params().Set(
        model_dim=p.model_dim, num_heads=p.num_heads,
        atten_hidden_dim=p.atten_hidden_dim,
        atten_dropout_prob=p.atten_dropout_prob,
        residual_dropout_prob=p.residual_dropout_prob,
        pre_layer_norm=p.pre_layer_norm)
    self.CreateChild('self_atten', atten)
    if p.has_aux_atten:
      self.CreateChild('aux_atten', atten.Copy())
    self.CreateChild('ffn', FeedForwardBlock.Params().Set(
        model_dim=p.model_dim, hidden_dim=p.hidden_dim,
        relu_dropout_prob=p.relu_dropout_prob,
        residual_dropout_prob=p.residual_dropout_prob,
        pre_layer_norm=p.pre_layer_norm))

  def FProp(self, x, segment_ids, memory=None, memory_segment_ids=None):
    """x [b, t, d] with int segment_ids [b, t] (0: padding); memory
    [b, s, d] with memory_segment_ids [b, s] for a decoder layer."""
    p = self.params
    x = self.self_atten.FProp(x, attention.AttentionBias(
        segment_ids, segment_ids, causal=p.mask_self_atten))
    if p.has_aux_atten:
      x = self.aux_atten.FProp(x, attention.AttentionBias(
          segment_ids, memory_segment_ids), memory)
    return self.ffn.FProp(x)

  # -- cached decoding (one new target position at a time) --------------------

  def InitCache(self, batch, max_length, memory=None):
    """Decoding state: self-attention keys/values [b, n, max_length, h]
    filled step by step, and the memory's keys/values, projected once."""
    p = self.params
    n, h = p.num_heads, self.self_atten.atten.head_dim
    zeros = tf.zeros([batch, n, max_length, h], self.fprop_dtype)
    cache = {'keys': zeros, 'values': zeros}
    if p.has_aux_atten:
      cache['mem_keys'], cache['mem_values'] = (
          self.aux_atten.atten.KeysValues(memory))
    return cache

  def ExtendStep(self, x, t, cache, memory_segment_ids=None):
    """x [b, 1, d] at position t (all rows one sequence from 0 to t);
    returns (output [b, 1, d], updated cache)."""
    p = self.params
    q = self.self_atten.Query(x)
    k, v = self.self_atten.atten.KeysValues(q)
    length = cache['keys'].shape[2]
    at_t = tf.reshape(tf.one_hot(t, length, dtype=k.dtype), [1, 1, length, 1])
    cache = dict(cache, keys=cache['keys'] * (1 - at_t) + k * at_t,
                 values=cache['values'] * (1 - at_t) + v * at_t)
    b = tf.shape(x)[0]
    visible = tf.range(length) <= t
    bias = tf.where(visible, 0.0, attention.NEG)
    bias = tf.broadcast_to(bias[None, None, None, :], [b, 1, 1, length])
    x = self.self_atten.ExtendStep(x, bias, cache['keys'], cache['values'])
    if p.has_aux_atten:
      mem_bias = tf.where(tf.not_equal(memory_segment_ids, 0), 0.0,
                          attention.NEG)[:, None, None, :]
      x = self.aux_atten.ExtendStep(x, mem_bias, cache['mem_keys'],
                                    cache['mem_values'])
    return self.ffn.FProp(x), cache
