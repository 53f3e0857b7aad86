"""The training input's position (input_position.TrainInput) for input
generators with their own tf.data pipeline, as a new task would write one:
a pipeline tf.data can save resumes from its iterator's state, one it
cannot (a py_function) says so in one line and resumes by skipping; both
continue exactly where an uninterrupted iterator would; so does a worker's
shard of a TFDS input skipping to its position."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import checkpoints
from gpipe_lingvo import input_position
from gpipe_lingvo.distribute import replicas as replicas_lib
from tasks import cifar
from tasks import digits
from tasks import imagenet
from tests import tasks_data


class _OwnPipeline(digits.DigitsInput):
  """Its own GetDataset (no BaseInputGenerator pipeline), saveable."""

  def GetDataset(self):
    p = self.params
    ds = tf.data.Dataset.from_tensor_slices((self._x, self._y))
    ds = ds.shuffle(300, seed=p.seed).repeat().batch(
        self.shard_batch_size, drop_remainder=True)
    return ds.map(lambda x, y: {'image': x, 'label': y}).prefetch(2)


class _PyFunctionPipeline(_OwnPipeline):
  """Deterministic, but tf.data cannot save a py_function's state."""

  def GetDataset(self):
    def Double(x):
      return tf.py_function(lambda t: t * 2, [x], tf.float32)
    return super().GetDataset().map(
        lambda b: {'image': Double(b['image']), 'label': b['label']})


def _Generator(cls, **kw):
  return cls.Params().Set(name='train', split='train', batch_size=16,
                          **kw).Instantiate()


def _Save(directory, position, step):
  """A checkpoint of the position at `step`, as the trainer writes it."""
  model = tf.Module()
  model.w = tf.Variable([1.0])
  ckpt = checkpoints.Checkpointer(str(directory), print_fn=lambda _: None,
                                  model=model)
  ckpt.Attach('input', position.state)
  position.Mark(step)
  return ckpt.Save(step)


def _Labels(it, n):
  return np.concatenate([next(it)['label'].numpy() for _ in range(n)])


@pytest.mark.parametrize('cls,resume_by,mode,line', [
    (_OwnPipeline, 'iterator', 'iterator', 'Input: restored the iterator of '
     'ckpt-5 (example 80 of the training stream).'),
    (_OwnPipeline, 'skip', 'skip', 'Input: skipping to example 80 of the '
     'training stream (the position of ckpt-5).'),
    (_PyFunctionPipeline, 'iterator', 'skip', 'Input: skipping to example '
     '80 of the training stream (the position of ckpt-5).'),
])
def testOwnPipelineResumesExactly(tmp_path, cls, resume_by, mode, line):
  whole = iter(_Generator(cls).GetDataset())
  want = _Labels(whole, 10)
  logs = []
  first = input_position.TrainInput(_Generator(cls, resume_by=resume_by),
                                    replicas_lib.SingleProcess(), logs.append)
  assert first.mode == mode
  if cls is _PyFunctionPipeline:
    assert logs == [
        'Input: the training pipeline cannot be saved (FailedPrecondition'
        'Error: EagerPyFunc is stateful. [Op:SerializeIterator]); a resumed '
        'run skips to its position instead (exact if the pipeline is '
        'deterministic).']
  first.Restore(None)
  it = first.Iterator(0)
  np.testing.assert_array_equal(_Labels(it, 5), want[:80])
  path = _Save(tmp_path, first, 5)
  reader = tf.train.load_checkpoint(path)
  assert (input_position.ITERATOR_KEY in reader.get_variable_to_shape_map()
          ) == (mode == 'iterator')
  logs = []
  second = input_position.TrainInput(_Generator(cls, resume_by=resume_by),
                                     replicas_lib.SingleProcess(), logs.append)
  second.Restore(path)
  assert logs[-1] == line
  np.testing.assert_array_equal(_Labels(second.Iterator(5), 5), want[80:])


def testChangedInputParamsSkipInsteadOfRestoringTheIterator(tmp_path):
  """A saved iterator restores only into the pipeline of the same params;
  otherwise the position is reached by skipping (here the same batches:
  only the prefetch depth changed)."""
  first = input_position.TrainInput(_Generator(_OwnPipeline),
                                    replicas_lib.SingleProcess(), print)
  first.Restore(None)
  _Labels(first.Iterator(0), 3)
  path = _Save(tmp_path, first, 3)
  logs = []
  second = input_position.TrainInput(_Generator(_OwnPipeline, prefetch=4),
                                     replicas_lib.SingleProcess(), logs.append)
  second.Restore(path)
  assert logs == [
      'Input: the training input params differ from those ckpt-3 was written '
      'with; skipping to its position (example 48) instead of restoring its '
      'iterator.']
  whole = iter(_Generator(_OwnPipeline).GetDataset())
  np.testing.assert_array_equal(_Labels(second.Iterator(3), 2),
                                _Labels(whole, 5)[48:])


@pytest.mark.parametrize('dataset', ['cifar10', 'imagenet2012'])
def testTfdsShardSkipsToItsPosition(dataset):
  """A worker's shard of a TFDS input (its own files) reaches the batches
  it would have read next by skipping: what each of 2 restarted workers
  does with the global position of the restored step."""
  if dataset == 'cifar10':
    p = cifar.InputParams('cifar10', 'train', 8,
                          data_dir=tasks_data.Cifar('cifar10')[0])
  else:
    p = imagenet.InputParams('train', 4, image_size=32,
                             data_dir=tasks_data.ImageNet())
  for shard in range(2):
    ps = p.Copy().Set(shard_index=shard, num_shards=2)
    whole = iter(ps.Instantiate().GetDataset())
    want = [next(whole) for _ in range(9)][5:]
    skipped = iter(ps.Instantiate().GetDatasetFrom(5 * p.batch_size))
    for w in want:
      got = next(skipped)
      for k in w:
        np.testing.assert_array_equal(got[k].numpy(), w[k].numpy(), err_msg=k)
