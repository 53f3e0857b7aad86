"""Metrics accumulated as weighted sums over batches: classification
(top-1, top-5) and sequence tasks (per-token loss, perplexity, token
accuracy)."""
import math

import tensorflow as tf


def MetricSums(logits, labels, weights, num_classes):
  """Weighted sums of top-1 (and top-5 where > 5 classes) correct + count."""
  labels = tf.cast(labels, tf.int32)
  logits = tf.cast(logits, tf.float32)
  out = {'count': tf.reduce_sum(weights)}
  top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                 tf.float32)
  out['top1'] = tf.reduce_sum(top1 * weights)
  if num_classes > 5:
    top5 = tf.cast(tf.nn.in_top_k(labels, logits, 5), tf.float32)
    out['top5'] = tf.reduce_sum(top5 * weights)
  return out


class MetricAccumulator:
  """Sums per-batch metric sums (on the host) and reports means."""

  def __init__(self):
    self._sums = {}

  def Add(self, sums):
    for k, v in sums.items():
      self._sums[k] = self._sums.get(k, 0.0) + float(v)

  def Result(self):
    """{'loss': mean loss, 'accuracy': top-1, 'top5': top-5 (if any),
    'log_pplx' and 'perplexity' (if 'nll' was summed)}; per token for
    sequence tasks."""
    n = max(self._sums.get('count', 0.0), 1e-12)
    out = {}
    if 'loss' in self._sums:
      out['loss'] = self._sums['loss'] / n
    if 'top1' in self._sums:
      out['accuracy'] = self._sums['top1'] / n
    if 'top5' in self._sums:
      out['top5'] = self._sums['top5'] / n
    if 'nll' in self._sums:
      # Sequence tasks: 'count' is target tokens, 'nll' their negative
      # log-likelihood without label smoothing, 'examples' sequences.
      out['log_pplx'] = self._sums['nll'] / n
      out['perplexity'] = math.exp(min(out['log_pplx'], 700.0))
    if 'examples' in self._sums:
      out['num_tokens'] = int(round(self._sums['count']))
    out['num_examples'] = int(round(self._sums.get(
        'examples', self._sums.get('count', 0.0))))
    return out
