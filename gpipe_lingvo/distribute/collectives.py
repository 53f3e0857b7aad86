"""Cross-worker sums through tf.distribute's collectives, one per dtype.

The pipeline keeps its own per-stage variables (see replicas.py for why);
only the sums go through the strategy: the tensors to reduce are flattened
into one vector per dtype on the worker's host device and summed by the
replica context's all_reduce inside `strategy.run`, so a step costs one
collective (not one per variable) whatever the number of variables.
"""
import collections
from typing import List, Sequence

import tensorflow as tf

SUM = tf.distribute.ReduceOp.SUM


class Packing:
  """How a list of tensors maps to one flat vector per dtype, and back."""

  def __init__(self, tensors: Sequence[tf.Tensor]):
    self.shapes = [t.shape for t in tensors]
    self.dtypes = [t.dtype for t in tensors]
    groups = collections.OrderedDict()
    for i, t in enumerate(tensors):
      groups.setdefault(t.dtype, []).append(i)
    self.groups = list(groups.items())

  def Pack(self, tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """[flat vector per dtype group]."""
    return [tf.concat([tf.reshape(tensors[i], [-1]) for i in idx], 0)
            for _, idx in self.groups]

  def Unpack(self, flats: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    out = [None] * len(self.shapes)
    for (_, idx), flat in zip(self.groups, flats):
      sizes = [self.shapes[i].num_elements() for i in idx]
      for i, part in zip(idx, tf.split(flat, sizes)):
        out[i] = tf.reshape(part, self.shapes[i])
    return out


@tf.autograph.experimental.do_not_convert
def AllReduceSum(strategy: tf.distribute.Strategy,
                 tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
  """Sums each tensor over all replicas; one collective per dtype.

  Call from the cross-replica context (a tf.function of the trainer, not
  inside strategy.run). Tensors may live on any local device: they are
  packed on the worker's host device, where the collective runs.
  """
  if not tensors:
    return []
  packing = Packing(tensors)
  with tf.device(strategy.extended.worker_devices[0]):
    flats = packing.Pack(tensors)

  def Reduce(*values):
    ctx = tf.distribute.get_replica_context()
    # One call per dtype: given a list, all_reduce would pack mixed dtypes.
    return [ctx.all_reduce(SUM, v) for v in values]

  reduced = strategy.run(Reduce, args=tuple(flats))
  reduced = reduced if isinstance(reduced, (list, tuple)) else [reduced]
  with tf.device(strategy.extended.worker_devices[0]):
    return packing.Unpack([strategy.experimental_local_results(r)[0]
                           for r in reduced])


@tf.autograph.experimental.do_not_convert
def BroadcastFromChief(strategy: tf.distribute.Strategy,
                       variables: Sequence[tf.Variable], is_chief: bool):
  """Gives every worker the chief's values of `variables` (in place).

  A sum in which only the chief contributes: one all-reduce per dtype
  instead of a dedicated broadcast op, so it runs on every collective
  implementation, and the chief's values come back unchanged (x + 0 = x).
  """
  values = [v.read_value() if is_chief else tf.zeros(v.shape, v.dtype)
            for v in variables]
  for v, value in zip(variables, AllReduceSum(strategy, values)):
    v.assign(value)
