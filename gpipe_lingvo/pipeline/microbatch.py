"""Splitting a mini-batch nest into M micro-batches and merging them back."""
import tensorflow as tf

from gpipe_lingvo.pipeline import params_check


class MicroBatchError(ValueError):
  """The batch cannot be split into the requested micro-batches."""


def StaticBatchSize(nest):
  """The (static) batch size shared by every leaf of `nest`."""
  sizes = set()
  for t in tf.nest.flatten(nest):
    if t.shape.rank is None or t.shape.rank == 0:
      raise MicroBatchError(
          f'Every input of the pipeline needs a leading batch axis; got a '
          f'tensor of shape {t.shape}.')
    sizes.add(t.shape[0])
  if None in sizes:
    raise MicroBatchError(
        'The pipeline needs a static batch size to cut micro-batches (the '
        'input generator should drop the remainder); got an unknown batch '
        'axis.')
  if len(sizes) != 1:
    raise MicroBatchError(f'Inputs disagree on the batch size: {sorted(sizes)}.')
  return sizes.pop()


def Split(nest, num_micro_batches, where='network'):
  """Each leaf [N, ...] -> [M, N/M, ...] (micro-batch i = rows i*N/M ...)."""
  n = StaticBatchSize(nest)
  b = params_check.MicroBatchSize(n, num_micro_batches, where)
  return tf.nest.map_structure(
      lambda t: tf.reshape(t, [num_micro_batches, b] + t.shape[1:].as_list()),
      nest)


def Merge(nest):
  """Inverse of Split: each leaf [M, b, ...] -> [M*b, ...]."""
  return tf.nest.map_structure(
      lambda t: tf.reshape(t, [-1] + t.shape[2:].as_list()), nest)
