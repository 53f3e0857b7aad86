"""Greedy decoding with a Transformer's cells, un-pipelined (as Lingvo's
evaluation decodes): the source is encoded once, then the decoder layers
extend one target position at a time from cached keys and values, with
static shapes throughout (a tf.while_loop over at most max_length steps
that stops once every row has emitted EOS)."""
from typing import List, NamedTuple

import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo.models import transformer


class StackParts(NamedTuple):
  embedding: transformer.TransformerEmbeddingCell
  encoder: List[base_layer.BaseLayer]  # layers and final norm, in order
  decoder: List[transformer.TransformerLayerCell]
  decoder_ln: object  # TransformerLayerNormCell or None (post-LN)
  softmax: transformer.TransformerSoftmaxCell


def Parts(cells) -> StackParts:
  """The roles of a Transformer stack's cells (see models/transformer.py)."""
  emb = [c for c in cells
         if isinstance(c, transformer.TransformerEmbeddingCell)]
  soft = [c for c in cells
          if isinstance(c, transformer.TransformerSoftmaxCell)]
  if len(emb) != 1 or len(soft) != 1:
    raise ValueError('Not a Transformer stack: need one embedding cell and '
                     'one softmax cell.')
  side = lambda c: getattr(c.params, 'side', None)
  encoder = [c for c in cells if side(c) == 'src']
  decoder = [c for c in cells if side(c) == 'tgt' and
             isinstance(c, transformer.TransformerLayerCell)]
  ln = [c for c in cells if side(c) == 'tgt' and
        isinstance(c, transformer.TransformerLayerNormCell)]
  return StackParts(emb[0], encoder, decoder, ln[0] if ln else None, soft[0])


def GreedyDecode(cells, src_ids, src_segment_ids, src_positions,
                 max_length: int, bos_id: int, eos_id: int) -> tf.Tensor:
  """Target ids [b, max_length] (EOS, then zeros after it) of the most
  likely next token at each step, for one source sequence per row."""
  parts = Parts(cells)
  b = src_ids.shape[0]
  with context.Scope(training=False):
    enc = {'src': parts.embedding.EmbedSide('src', src_ids, src_positions),
           'src_segment_ids': src_segment_ids}
    for cell in parts.encoder:
      enc = cell.FProp(enc)
    memory = enc['src']
    caches = [c.layer.InitCache(b, max_length, memory) for c in parts.decoder]

    def Step(t, token, done, out, caches):
      x = parts.embedding.EmbedSide('tgt', token[:, None],
                                    tf.fill([b, 1], t))
      new_caches = []
      for cell, cache in zip(parts.decoder, caches):
        x, cache = cell.layer.ExtendStep(x, t, cache, src_segment_ids)
        new_caches.append(cache)
      if parts.decoder_ln is not None:
        x = parts.decoder_ln.ln.FProp(x)
      logits = parts.softmax.softmax.FProp(x)[:, 0]
      nxt = tf.argmax(logits, -1, output_type=tf.int32)
      nxt = tf.where(done, 0, nxt)
      out = tf.tensor_scatter_nd_update(
          out, tf.stack([tf.range(b), tf.fill([b], t)], 1), nxt)
      return t + 1, nxt, done | tf.equal(nxt, eos_id), out, new_caches

    _, _, _, out, _ = tf.while_loop(
        lambda t, token, done, out, caches: tf.logical_and(
            t < max_length, tf.logical_not(tf.reduce_all(done))),
        Step, (tf.constant(0), tf.fill([b], bos_id), tf.zeros([b], tf.bool),
               tf.zeros([b, max_length], tf.int32), caches))
  return out
