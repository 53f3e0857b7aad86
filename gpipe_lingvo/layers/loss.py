"""Softmax cross-entropy with label smoothing, per example."""
import tensorflow as tf

from gpipe_lingvo import base_layer


class SoftmaxCrossEntropy(base_layer.BaseLayer):
  """Per-example loss; the caller averages (the pipeline sums micro-batches)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('num_classes', 0, 'Number of classes.')
    p.Define('label_smoothing', 0.0, 'Mass spread uniformly over classes.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if p.num_classes <= 1:
      raise ValueError(f'{self.path}: num_classes must be > 1.')
    if not 0.0 <= p.label_smoothing < 1.0:
      raise ValueError(f'{self.path}: label_smoothing must be in [0, 1).')

  def FProp(self, logits, labels):
    p = self.params
    logits = tf.cast(logits, tf.float32)  # The loss is always float32.
    onehot = tf.one_hot(tf.cast(labels, tf.int32), p.num_classes)
    if p.label_smoothing:
      onehot = onehot * (1.0 - p.label_smoothing) + p.label_smoothing / p.num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=logits)
