"""Tiny Transformer stacks and packed batches for tests."""
import numpy as np
import tensorflow as tf

from gpipe_lingvo.models import transformer

SRC_VOCAB, TGT_VOCAB, LENGTH = 11, 13, 8


def Stack(lm=False, **kw):
  """A 2+2-layer (or 2-layer LM) stack of width 8, dropout on, tied
  target embedding and softmax, packed input, unless kw says otherwise."""
  p = transformer.TransformerStack.Params().Set(
      model_dim=8, hidden_dim=16, num_heads=2, num_encoder_layers=0 if lm
      else 2, num_decoder_layers=2, source_vocab_size=0 if lm else
      SRC_VOCAB, target_vocab_size=TGT_VOCAB, max_length=LENGTH,
      packed_input=True, residual_dropout_prob=0.1, atten_dropout_prob=0.1,
      relu_dropout_prob=0.1, share_embedding_and_softmax=True)
  return p.Set(**kw).Instantiate()


def Batch(n=8, lm=False, packed=True, seed=0):
  """(network input nest, (labels, weights)): rows of two packed
  sequences (lengths 3 and 4) and a pad, or one sequence of 6 + padding."""
  r = np.random.RandomState(seed)
  if packed:
    seg = np.array([[1] * 3 + [2] * 4 + [0]] * n, np.int32)
    pos = np.array([[0, 1, 2, 0, 1, 2, 3, 0]] * n, np.int32)
  else:
    seg = np.array([[1] * 6 + [0] * 2] * n, np.int32)
    pos = np.array([list(range(6)) + [0, 0]] * n, np.int32)
  src = r.randint(1, SRC_VOCAB, [n, LENGTH]).astype(np.int32) * (seg > 0)
  tgt = r.randint(1, TGT_VOCAB, [n, LENGTH]).astype(np.int32) * (seg > 0)
  labels = r.randint(1, TGT_VOCAB, [n, LENGTH]).astype(np.int32)
  x = {'tgt_ids': tgt}
  if not lm:
    x['src_ids'] = src
  if packed:
    x.update(tgt_segment_ids=seg, tgt_positions=pos)
    if not lm:
      x.update(src_segment_ids=seg, src_positions=pos)
  x = {k: tf.constant(v) for k, v in x.items()}
  weights = (seg > 0).astype(np.float32)
  return x, (tf.constant(labels), tf.constant(weights))


def LossFn(logits, labels):
  """Per-token cross-entropy summed over the (micro-)batch, divided by a
  constant so micro-batch contributions add up to the batch mean."""
  y, w = labels
  per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y,
                                                       logits=logits)
  return tf.reduce_sum(per * w) / 56.0, {'tokens': tf.reduce_sum(w)}
