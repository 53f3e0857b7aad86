"""Checkpoints a fault cannot lose or poison (in-process): restore from the
files, non-finite values, foreign checkpoints, errors before any write."""
import os

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import checkpoints
from gpipe_lingvo import errors
from gpipe_lingvo import input_position
from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from gpipe_lingvo import validation
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.pipeline import pipelined_network
from params import digits as digits_params


def _Params(model='digits.ConvNet', **train):
  p = model_registry.GetParams(model)
  p.task.train.Set(log_interval_steps=100, **train)
  return p


def _Trainer(logdir, logs=None, **train):
  return trainer_lib.Trainer(
      _Params(**train), str(logdir),
      print_fn=(logs.append if logs is not None else lambda _: None))


def _Files(directory):
  """{name: bytes} of the checkpoint files in a directory."""
  return {f: (directory / f).read_bytes() for f in os.listdir(directory)
          if f.startswith('ckpt-')}


def _NonFinite(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return [k for k, dtype in reader.get_variable_to_dtype_map().items()
          if dtype.is_floating and not np.isfinite(reader.get_tensor(k)).all()]


def _Weights(prefix):
  """{key: value} of a checkpoint's model variables and step."""
  reader = tf.train.load_checkpoint(str(prefix))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith(('task/', 'global_step/'))}


def _FlipByte(path, fraction):
  data = bytearray(path.read_bytes())
  data[int(len(data) * fraction)] ^= 0x10
  path.write_bytes(bytes(data))


FINAL = 18


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('uninterrupted')
  _Trainer(logdir, save_interval_steps=2).Train(max_steps=FINAL)
  return _Weights(logdir / 'ckpt' / f'ckpt-{FINAL}')


def testEveryCheckpointFaultThenRestoreTrainSaveRestore(
    tmp_path, capsys, uninterrupted):
  """Each fault of the table in turn, each followed by a run that restores,
  trains and saves (restored in turn by the next): no run fails, every
  fault says what it did, and the run ends with the weights of the same
  run without faults, bitwise (the input position is restored too)."""
  ckpt_dir = tmp_path / 'ckpt'
  out = []

  def Run(max_steps):
    logs = []
    _Trainer(tmp_path, logs, save_interval_steps=2,
             keep_checkpoint_max=10).Train(max_steps=max_steps)
    out.append(capsys.readouterr().out.splitlines() + logs)
    return out[-1]

  def Data(n):
    return ckpt_dir / f'ckpt-{n}.data-00000-of-00001'

  Run(4)
  # A bit flip in the model's values of the newest checkpoint (the model's
  # keys sort after the input's, at the end of the data file): set aside,
  # and the next save no longer names it (it raised NotFoundError).
  _FlipByte(Data(4), 0.98)
  lines = Run(6)
  assert any(l.startswith(f'WARNING: checkpoint {ckpt_dir}/ckpt-4 is '
                          f'unreadable; falling back to {ckpt_dir}/ckpt-2: '
                          'cannot read its values') and 'Checksum' in l
             for l in lines), lines
  assert f'Moved the unusable checkpoint ckpt-4 to {ckpt_dir}/unusable/ckpt-4.' in lines
  assert f'Resumed from {ckpt_dir}/ckpt-2 at step 2.' in lines
  assert f'Saved checkpoint {ckpt_dir}/ckpt-6' in lines
  # A bit flip in the input iterator's state (the middle of the file): the
  # weights are intact, and the input skips to the checkpoint's position.
  _FlipByte(Data(6), 0.4)
  lines = Run(8)
  assert f'Resumed from {ckpt_dir}/ckpt-6 at step 6.' in lines
  assert any(l.startswith('Input: the iterator saved in ckpt-6 cannot be '
                          'restored (DataLossError: ') and l.endswith(
                              'skipping to its position (example 384) '
                              'instead.') for l in lines), lines
  # A truncated newest checkpoint (a partial copy).
  Data(8).write_bytes(Data(8).read_bytes()[:1000])
  lines = Run(10)
  assert any(l.startswith(f'WARNING: checkpoint {ckpt_dir}/ckpt-8 is '
                          'unreadable; falling back to') for l in lines), lines
  assert f'Resumed from {ckpt_dir}/ckpt-6 at step 6.' in lines
  # The state file deleted: restore reads the files; none is overwritten.
  before = _Files(ckpt_dir)
  (ckpt_dir / 'checkpoint').unlink()
  lines = Run(12)
  assert f'Rebuilt {ckpt_dir}/checkpoint from the files (it was missing).' in lines
  assert f'Resumed from {ckpt_dir}/ckpt-10 at step 10.' in lines
  after = _Files(ckpt_dir)
  assert {f: after[f] for f in before} == before
  # A stale state file (a kill between a save's files and the state file):
  # evaluation and training both find the newest; evaluation leaves the
  # state file as it is.
  tf.compat.v1.train.update_checkpoint_state(
      str(ckpt_dir), 'ckpt-10', all_model_checkpoint_paths=['ckpt-10'])
  stale = (ckpt_dir / 'checkpoint').read_text()
  logs = []
  _Trainer(tmp_path, logs).Evaluate('test')
  assert f'Evaluating {ckpt_dir}/ckpt-12 (step 12) on test.' in logs, logs
  assert (ckpt_dir / 'checkpoint').read_text() == stale
  lines = Run(14)
  assert f'Rebuilt {ckpt_dir}/checkpoint from the files (it was stale).' in lines
  assert f'Resumed from {ckpt_dir}/ckpt-12 at step 12.' in lines
  state = tf.train.get_checkpoint_state(str(ckpt_dir))
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
      f'ckpt-{n}' for n in range(2, 15, 2)]
  # Non-finite values: never saved; a checkpoint holding them (written by
  # other means) is skipped and set aside, never overwritten.
  t = _Trainer(tmp_path)
  ckpt = t._Checkpointer()  # pylint: disable=protected-access
  ckpt.RestoreLatest()
  bn = t.task.network.block2.bn.vars.moving_variance
  bn.assign(tf.fill(bn.shape, float('nan')))
  with pytest.raises(checkpoints.NonFiniteError,
                     match='Not saving step 15: .*block2/bn/moving_variance'):
    ckpt.Save(15)
  assert not list(ckpt_dir.glob('ckpt-15*'))
  ckpt.checkpoint.write(str(ckpt_dir / 'ckpt-14'))
  capsys.readouterr()
  lines = Run(16)
  assert any(l.startswith(f'WARNING: checkpoint {ckpt_dir}/ckpt-14 holds '
                          f'non-finite values; falling back to') for l in lines)
  assert f'Resumed from {ckpt_dir}/ckpt-12 at step 12.' in lines
  assert _NonFinite(str(ckpt_dir / 'unusable' / 'ckpt-14')) != []
  assert all(_NonFinite(p) == [] for p in checkpoints.Candidates(str(ckpt_dir)))
  # Restore -> train -> save -> restore once more, to the end.
  lines = Run(FINAL)
  assert f'Resumed from {ckpt_dir}/ckpt-16 at step 16.' in lines
  assert sorted(os.listdir(ckpt_dir / 'unusable')) == [
      'ckpt-14.data-00000-of-00001', 'ckpt-14.index',
      'ckpt-4.data-00000-of-00001', 'ckpt-4.index',
      'ckpt-8.data-00000-of-00001', 'ckpt-8.index']
  got = _Weights(ckpt_dir / f'ckpt-{FINAL}')
  assert sorted(got) == sorted(uninterrupted)
  assert [k for k in got if not np.array_equal(got[k], uninterrupted[k])] == []


def testACheckpointThatFailedToReadIsNotReadAgainAtSave(tmp_path):
  """The checkpoint object that saves never reads: a read that fails leaves
  deferred restorations behind (of the save counter, made at the first
  save), which made the next save read the failed checkpoint again, by then
  moved to unusable/ (NotFoundError)."""
  model = tf.Module()
  model.w = tf.Variable(tf.range(1000, dtype=tf.float32))
  step = tf.Variable(0, dtype=tf.int64)
  ckpt = checkpoints.Checkpointer(str(tmp_path), print_fn=lambda _: None,
                                  model=model, global_step=step)
  for n in (2, 4):
    step.assign(n)
    ckpt.Save(n)
  data = tmp_path / 'ckpt-4.data-00000-of-00001'
  _FlipByte(data, 0.9)
  again = checkpoints.Checkpointer(str(tmp_path), print_fn=lambda _: None,
                                   model=model, global_step=step)
  assert again.RestoreLatest() == str(tmp_path / 'ckpt-2')
  assert int(step.numpy()) == 2
  step.assign(6)
  assert again.Save(6) == str(tmp_path / 'ckpt-6')
  assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / 'ckpt-6')


def testCheckpointWithoutInputPositionRestoresAsBefore(tmp_path):
  """A checkpoint of an older version (model and step only): training
  resumes from it, saying in one line that the input starts from its
  beginning; the run's next checkpoints have the position again, and
  initialise another run (init_from_checkpoint reads the model's keys)."""
  t = _Trainer(tmp_path, save_interval_steps=3)
  t.Train(max_steps=3)
  old = tmp_path / 'ckpt' / 'ckpt-3'
  for f in tmp_path.joinpath('ckpt').glob('ckpt-3.*'):
    f.unlink()
  tf.train.Checkpoint(task=t.task, global_step=t._global_step).write(  # pylint: disable=protected-access
      str(old))
  logs = []
  _Trainer(tmp_path, logs, save_interval_steps=3).Train(max_steps=6)
  assert logs[:2] == [
      f'Resumed from {old} at step 3.',
      'Input: ckpt-3 holds no input position (written by an older version); '
      'the training input starts from its beginning.']
  # The input restarted: the position counts from the resume.
  reader = tf.train.load_checkpoint(str(tmp_path / 'ckpt' / 'ckpt-6'))
  assert reader.get_tensor('input/examples/.ATTRIBUTES/VARIABLE_VALUE') == 192
  assert input_position.ITERATOR_KEY in reader.get_variable_to_shape_map()
  # Such a checkpoint (with the input's iterator) initialises another run.
  p = _Params()
  p.task.init_from_checkpoint.Set(checkpoint_path=str(tmp_path),
                                  ignore_rules=[])
  logs = []
  trainer_lib.Trainer(p, str(tmp_path / 'other'), print_fn=logs.append).Train(
      max_steps=0)
  assert any(l.startswith('Initialised 14 variables from '
                          f'{tmp_path}/ckpt/ckpt-6;') for l in logs), logs


def testNonFiniteStepIsNeitherAppliedNorSavedAndResumes(tmp_path):
  _Trainer(tmp_path, save_interval_steps=2).Train(max_steps=4)
  t = _Trainer(tmp_path, save_interval_steps=1)
  t.params.task.train.lr_schedule.learning_rate = 1e6
  with pytest.raises(checkpoints.NonFiniteError) as e:
    t.Train(max_steps=20)
  msg = str(e.value)
  step = int(msg.split()[1])
  assert msg.startswith(f'Step {step} was not applied: not finite: ')
  assert step >= 6, msg
  named = str(tmp_path / 'ckpt' / f'ckpt-{step - 1}')
  assert f'The newest checkpoint is {named} (step {step - 1})' in msg
  # No checkpoint on disk holds a NaN or an Inf, the named one included.
  prefixes = checkpoints.Candidates(str(tmp_path / 'ckpt'))
  assert named in prefixes
  assert all(_NonFinite(p) == [] for p in prefixes)
  # The step was not applied: the variables are still the named checkpoint's.
  reader = tf.train.load_checkpoint(named)
  ckpt = t._Checkpointer()  # pylint: disable=protected-access
  for key, var in ckpt.variables.items():
    np.testing.assert_array_equal(
        var.numpy(), reader.get_tensor(key + '/.ATTRIBUTES/VARIABLE_VALUE'),
        err_msg=key)
  # Rerun as it was: the same training (weights and input position
  # restored) reaches the same non-finite step.
  again = _Trainer(tmp_path, save_interval_steps=1)
  again.params.task.train.lr_schedule.learning_rate = 1e6
  with pytest.raises(checkpoints.NonFiniteError) as e:
    again.Train(max_steps=20)
  assert str(e.value) == msg
  # The run had diverged before the named checkpoint: as the message says,
  # move the newer checkpoints out and rerun with the learning rate as it
  # was: restore, train, save, and the next run restores that.
  for n in range(5, step):
    for f in (tmp_path / 'ckpt').glob(f'ckpt-{n}.*'):
      f.unlink()
  logs = []
  _Trainer(tmp_path, logs, save_interval_steps=2).Train(max_steps=8)
  assert f'Resumed from {tmp_path}/ckpt/ckpt-4 at step 4.' in logs
  logs = []
  _Trainer(tmp_path, logs, save_interval_steps=2).Train(max_steps=10)
  assert f'Resumed from {tmp_path}/ckpt/ckpt-8 at step 8.' in logs
  assert all(_NonFinite(p) == [] for p in
             checkpoints.Candidates(str(tmp_path / 'ckpt')))


def testModelThatDoesNotMatchTheCheckpointIsNamed(tmp_path):
  _Trainer(tmp_path).Train(max_steps=2)
  before = _Files(tmp_path / 'ckpt')
  params_txt = (tmp_path / 'params.txt').read_text()
  p = _Params()
  cells = p.task.network.cells
  cells[4].output_dim = 64  # fc1 128 -> 64
  cells[6].input_dim = 64
  with pytest.raises(checkpoints.ModelMismatchError) as e:
    trainer_lib.Trainer(p, str(tmp_path), print_fn=lambda _: None).Train(
        max_steps=4)
  msg = str(e.value)
  assert msg.startswith('The model does not match checkpoint ')
  assert ('task/network/fc1/b is float32[64] in the model but float32[128] '
          'in the checkpoint') in msg
  assert _Files(tmp_path / 'ckpt') == before
  assert (tmp_path / 'params.txt').read_text() == params_txt


def testBatchNotDivisibleByMicroBatchesFailsBeforeAnyWrite(tmp_path):
  p = _Params('digits.ConvNetPipelined')
  p.task.network.num_micro_batches = 5
  logdir = tmp_path / 'log'
  with pytest.raises(errors.ParamsError, match=(
      r'task.network.num_micro_batches=5 does not divide the training batch '
      r'size 64')):
    trainer_lib.Trainer(p, str(logdir)).Train(max_steps=2)
  assert not logdir.exists()


@pytest.mark.parametrize('field,value,accepts', [
    ('num_stages', -1, 'an int >= 1'),
    ('num_micro_batches', True, 'an int >= 1'),
    ('parallel_iterations', 0, 'an int >= 1'),
    ('partition', [True, 6], "'uniform' or a list of ints >= 1"),
    ('partition', '[2, x]', 'a list of ints'),
    ('topology.devices_per_stage', 0, 'an int >= 1'),
    ('topology.num_logical_devices', -1, 'an int >= 0'),
    ('topology.intra_op_threads', 1.5, 'an int >= 0'),
    ('schedule', 3, 'a schedule name'),
    ('cells', 'x', 'a list of layer params'),
])
def testEngineFieldsAreCheckedAtInstantiate(field, value, accepts):
  p = pipelined_network.PipelinedNetwork.Params().Set(
      name='network', cells=digits_params.ConvNetCells(), num_stages=2)
  p.Set(**{field: value})
  with pytest.raises(errors.ParamsError) as e:
    p.Instantiate()
  assert f'network.{field}' in str(e.value) and accepts in str(e.value)


def testRunChecksNameTheFieldAndTheFix():
  p = _Params('digits.ConvNetPipelined')
  validation.CheckRun(p, 10)
  validation.CheckRun(p, 0)
  with pytest.raises(errors.ParamsError,
                     match=r'max_steps must be an int >= 0, got -5 \(0 '):
    validation.CheckRun(p, -5)
  p.task.train.save_interval_steps = 0
  with pytest.raises(errors.ParamsError, match='save_interval_steps must be '
                     'an int >= 1, got 0'):
    validation.CheckRun(p, 10)
  # Data-parallel replicas: each replica's batch must divide into M.
  assert params_check.CheckBatchSplits(64, 4, num_replicas=2) == 8
  with pytest.raises(errors.ParamsError, match='per-replica batch size 32'):
    params_check.CheckBatchSplits(64, 5, num_replicas=2)


def testEvaluatingAnUnknownSplitIsAClearError(tmp_path):
  with pytest.raises(trainer_lib.TrainerError, match="split 'bogus'"):
    _Trainer(tmp_path).Evaluate('bogus')
  assert not tmp_path.joinpath('trainer.lock').exists()
