"""Batch shapes of a token-sequence task, without data.

For models that are planned and counted but not trained here: GPipe's
Transformer-L and T(64, 16384, 32) (params/gpipe_transformer.py) have no
corpus on this machine. `--mode=plan` and `--mode=summary` read only
`BatchSpecs()`; asking for data raises one line saying so.
"""
import tensorflow as tf

from gpipe_lingvo import base_input_generator
from gpipe_lingvo import errors
from tasks import packing



def PackedBatchSpecs(batch_size: int, length: int):
  """tf.TensorSpec dict of a batch of packed rows (tasks/packing.FIELDS, int32
  [batch, length]) and their float32 example weights."""
  specs = {f: tf.TensorSpec([batch_size, length], tf.int32)
           for f in packing.FIELDS}
  specs['weight'] = tf.TensorSpec([batch_size], tf.float32)
  return specs


def PackedStandInBatch(batch_size: int, length: int):
  """A batch of PackedBatchSpecs without data: every row one sequence of
  `length` tokens on each side (token id 0), weight 1, so that attention,
  loss and gradients do the work of a full batch."""
  specs = PackedBatchSpecs(batch_size, length)
  positions = tf.tile(tf.range(length, dtype=tf.int32)[None], [batch_size, 1])

  def Field(name, spec):
    if name.endswith('segment_ids'):
      return tf.ones(spec.shape, spec.dtype)
    if name.endswith('positions'):
      return positions
    return tf.zeros(spec.shape, spec.dtype)

  batch = {f: Field(f, specs[f]) for f in packing.FIELDS}
  batch['weight'] = tf.ones([batch_size], tf.float32)
  return batch


class PackedRows:
  """BatchSpecs and StandInBatch of an input generator whose batches are
  packed rows of `self.length` tokens (a mixin, listed before the base
  generator)."""

  def BatchSpecs(self, batch_size=None):
    n = self.shard_batch_size if batch_size is None else batch_size
    return PackedBatchSpecs(n, self.length)

  def StandInBatch(self, batch_size: int):
    return PackedStandInBatch(batch_size, self.length)


class NoDataError(errors.UserError):
  """The input gives shapes only."""


class SequenceShapes(PackedRows, base_input_generator.BaseInputGenerator):
  """Packed rows of `length` tokens, the fields of tasks/packing.py."""

  SHAPES_ONLY = True

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('length', 1024, 'Tokens per row (source and target).')
    return p

  def __init__(self, params):
    super().__init__(params)
    if self.params.length <= 0:
      raise ValueError(f'{self.params.name}: length must be > 0, got '
                       f'{self.params.length}.')

  @property
  def length(self) -> int:
    return self.params.length

  def CheckData(self):
    raise NoDataError(
        f'{self.params.name}: this model\'s input gives batch shapes only '
        '(for --mode=plan and --mode=summary); to train it, set its train '
        'input to a prepared corpus (e.g. tasks.translation.InputParams).')

  def GetDataset(self):
    self.CheckData()
