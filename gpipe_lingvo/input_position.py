"""The training input's position, saved with every checkpoint, so that a
resumed run reads exactly the batches an uninterrupted run would have read.

Every checkpoint holds, under `input/`:
- `examples`: how many examples of the global training stream the run had
  read at the checkpoint's step (all shards together);
- `num_shards`: how many shards (workers) read it;
- `iterator`: the state of the tf.data iterator (shuffle buffer, cache,
  prefetched batches, file positions), in single-process runs whose input
  has `resume_by = 'iterator'` and whose pipeline tf.data can save.

A resumed run restores the iterator if the checkpoint holds one written by
the same input params; otherwise it rebuilds the input and skips to
`examples` (BaseInputGenerator.GetDatasetFrom). Both are exact for the
framework's inputs: their stream is deterministic. Everything else that
decides a step is restored with the model or derived from the step:
weights, optimizer slots and batch-norm statistics are variables; the
learning rate is a function of the step; dropout and drop-path masks come
from stateless seeds of (step, micro-batch, layer path).

Checkpoints written before the input position was saved restore as
before: the input starts from its beginning, and one line says so.
"""
import hashlib
import os
import tempfile
from typing import Callable, List, Optional

import tensorflow as tf

from gpipe_lingvo import checkpoints

_PREFIX = 'input/'
_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
ITERATOR_KEY = 'input/iterator/.ATTRIBUTES/ITERATOR_STATE'


def ParamsHash(params) -> int:
  """A 63-bit hash of the input params: a saved iterator is restored only
  into a pipeline built from the same params."""
  digest = hashlib.sha256(params.ToText().encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') >> 1


def _ReadPosition(path):
  """(examples, num_shards, params hash, whether an iterator is saved) of
  checkpoint `path`, or None if it holds no input position."""
  reader = tf.train.load_checkpoint(path)
  keys = reader.get_variable_to_shape_map()
  if _PREFIX + 'examples' + _SUFFIX not in keys:
    return None
  value = lambda name: int(reader.get_tensor(_PREFIX + name + _SUFFIX))  # pylint: disable=unnecessary-lambda-assignment
  return (value('examples'), value('num_shards'), value('params_hash'),
          ITERATOR_KEY in keys)


class InputState(tf.Module):
  """What a checkpoint holds about the training input (saved as `input`)."""

  def __init__(self):
    super().__init__(name='input')
    self.examples = tf.Variable(0, dtype=tf.int64, trainable=False,
                                name='examples')
    self.num_shards = tf.Variable(1, dtype=tf.int64, trainable=False,
                                  name='num_shards')
    self.params_hash = tf.Variable(0, dtype=tf.int64, trainable=False,
                                   name='params_hash')

  @property
  def state_variables(self) -> List[tf.Variable]:
    """The variables every worker must agree on (broadcast by the chief)."""
    return [self.examples, self.num_shards, self.params_hash]


def CanSave(dataset: tf.data.Dataset) -> Optional[str]:
  """None if tf.data can save an iterator of `dataset`, else why not
  (e.g. a py_function or a stateful random op in a map). Serialises a
  fresh iterator: no element is read."""
  with tempfile.TemporaryDirectory(prefix='gpipe_lingvo_input_') as d:
    try:
      tf.train.Checkpoint(iterator=iter(dataset)).write(os.path.join(d, 'it'))
    except (tf.errors.OpError, ValueError, TypeError) as e:
      return checkpoints.ErrorLine(e)
  return None


class TrainInput:
  """The training input of one run: restores its position from the
  checkpoint the run resumed from, gives the iterator the training loop
  reads, and records the position before every save.

  generator: the training input generator of this process (its shard);
  replicas: the run's replica hooks (gpipe_lingvo.distribute.replicas).
  """

  def __init__(self, generator, replicas, print_fn: Callable = print):
    self.generator = generator
    self.replicas = replicas
    self._print = print_fn
    self.state = InputState()
    p = generator.params
    self._global_batch = int(p.batch_size)
    self._num_shards = int(p.num_shards)
    self._hash = ParamsHash(p)
    self._iterator = None
    self._base = None  # (step, examples) the run started from.
    self.mode = self._Mode()

  def _Mode(self):
    """'iterator' if this run saves the iterator, else 'skip'."""
    resume_by = dict(self.generator.params.IterParams()).get('resume_by',
                                                             'iterator')
    if (resume_by != 'iterator' or
        not getattr(self.replicas, 'saves_input_iterator', False)):
      return 'skip'
    why = CanSave(self.replicas.Dataset(self.generator))
    if why is None:
      return 'iterator'
    self._print('Input: the training pipeline cannot be saved '
                f'({why}); a resumed run skips to its position instead '
                '(exact if the pipeline is deterministic).')
    return 'skip'

  @property
  def state_variables(self) -> List[tf.Variable]:
    return self.state.state_variables

  # -- restore -----------------------------------------------------------------

  def Restore(self, path: Optional[str]) -> None:
    """Reads the input position of checkpoint `path` (None: a fresh run),
    and restores its iterator where it can. Prints one line on resume."""
    self.state.num_shards.assign(self._num_shards)
    self.state.params_hash.assign(self._hash)
    if path is None:
      return
    name = os.path.basename(path)
    saved = _ReadPosition(path)
    if saved is None:
      self._print(f'Input: {name} holds no input position (written by an '
                  'older version); the training input starts from its '
                  'beginning.')
      return
    examples, shards, params_hash, has_iterator = saved
    self.state.examples.assign(examples)
    if self.mode == 'iterator' and has_iterator:
      self._RestoreIterator(path, examples, params_hash == self._hash)
    elif shards != self._num_shards and getattr(
        self.generator, 'SHARDS_IN_EXAMPLES', False):
      self._print(
          f'Input: {name} was written by a run reading the training data in '
          f'{shards} shard(s) and this run reads {self._num_shards}: each '
          'shard starts at the same position in its own part of the data, '
          'so the batches differ from those of an uninterrupted run from '
          'here on.')
    else:
      self._print(f'Input: skipping to example {examples} of the training '
                  f'stream (the position of {name}).')

  def _RestoreIterator(self, path, examples, same_params):
    """Restores the iterator saved in `path`; if it cannot (other params,
    damaged bytes), says so and leaves the input to skip to `examples`."""
    name = os.path.basename(path)
    if not same_params:
      self._print(f'Input: the training input params differ from those '
                  f'{name} was written with; skipping to its position '
                  f'(example {examples}) instead of restoring its iterator.')
      return
    it = iter(self.replicas.Dataset(self.generator))

    def Holder():
      holder = tf.Module()
      holder.iterator = it
      return tf.train.Checkpoint(input=holder)

    error = checkpoints.ReadQuietly(Holder, path)
    if error:
      self._print(f'Input: the iterator saved in {name} cannot be restored '
                  f'({error}); skipping to its position (example '
                  f'{examples}) instead.')
      return
    self._iterator = it
    self._print(f'Input: restored the iterator of {name} (example '
                f'{examples} of the training stream).')

  # -- training ----------------------------------------------------------------

  def Iterator(self, step: int):
    """The iterator the training loop reads, at the position of `step`
    (the step the run starts from, after every worker received the
    chief's state)."""
    examples = int(self.state.examples.numpy())
    self._base = (int(step), examples)
    if self._iterator is None:
      self._iterator = iter(self.replicas.Dataset(self.generator,
                                                  start=examples))
    if self.mode == 'iterator':
      self.state.iterator = self._iterator
    return self._iterator

  def Mark(self, step: int) -> None:
    """Records the position at `step` (before the checkpoint of `step` is
    written): the examples read up to it, with this run's global batch."""
    base_step, base_examples = self._base
    self.state.examples.assign(
        base_examples + (int(step) - base_step) * self._global_batch)
    self.state.num_shards.assign(self._num_shards)
    self.state.params_hash.assign(self._hash)
