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


def test_restore_reads_the_files_when_the_state_file_is_missing_or_stale(
    tmp_path, capsys):
  ckpt_dir = tmp_path / 'ckpt'
  t1 = _Trainer(tmp_path, save_interval_steps=2)
  t1.Train(max_steps=6)
  # The keys the model expects are exactly the ones a checkpoint holds.
  reader = tf.train.load_checkpoint(str(ckpt_dir / 'ckpt-6'))
  saved = {k[:-len('/.ATTRIBUTES/VARIABLE_VALUE')]
           for k in reader.get_variable_to_shape_map()
           if k.endswith('/.ATTRIBUTES/VARIABLE_VALUE')} - {'save_counter'}
  ckpt = t1._Checkpointer()  # pylint: disable=protected-access
  inputs = {k for k in saved if k.startswith('input/')}
  assert set(ckpt.variables) == saved - inputs
  assert inputs == {'input/examples', 'input/num_shards', 'input/params_hash'}
  assert input_position.ITERATOR_KEY in reader.get_variable_to_shape_map()
  before = _Files(ckpt_dir)
  (ckpt_dir / 'checkpoint').unlink()

  logs = []
  _Trainer(tmp_path, logs, save_interval_steps=2).Train(max_steps=8)
  assert any('Resumed from' in l and l.endswith('ckpt-6 at step 6.')
             for l in logs), logs
  assert 'Rebuilt' in capsys.readouterr().out
  after = _Files(ckpt_dir)
  assert {f: after[f] for f in before} == before  # Nothing overwritten.
  state = tf.train.get_checkpoint_state(str(ckpt_dir))
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
      'ckpt-2', 'ckpt-4', 'ckpt-6', 'ckpt-8']

  # A stale state file (a kill between writing ckpt-8 and the state file):
  # eval and training both find ckpt-8; eval leaves the state file alone.
  tf.compat.v1.train.update_checkpoint_state(
      str(ckpt_dir), 'ckpt-6', all_model_checkpoint_paths=['ckpt-6'])
  stale = (ckpt_dir / 'checkpoint').read_text()
  logs = []
  _Trainer(tmp_path, logs).Evaluate('test')
  assert any(l.startswith('Evaluating') and 'ckpt-8 (step 8)' in l
             for l in logs), logs
  assert (ckpt_dir / 'checkpoint').read_text() == stale


def test_non_finite_step_is_neither_applied_nor_saved(tmp_path):
  t = _Trainer(tmp_path, save_interval_steps=1)
  t.params.task.train.lr_schedule.learning_rate = 1e6
  with pytest.raises(checkpoints.NonFiniteError) as e:
    t.Train(max_steps=20)
  msg = str(e.value)
  step = int(msg.split()[1])
  assert msg.startswith(f'Step {step} was not applied: not finite: ')
  assert step >= 2, msg
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


def test_checkpoint_with_non_finite_values_is_never_written_nor_resumed(
    tmp_path, capsys):
  t = _Trainer(tmp_path, save_interval_steps=2)
  t.Train(max_steps=4)
  ckpt = t._Checkpointer()  # pylint: disable=protected-access
  ckpt.RestoreLatest()
  bn = t.task.network.block2.bn.vars.moving_variance
  bn.assign(tf.fill(bn.shape, float('nan')))
  with pytest.raises(checkpoints.NonFiniteError,
                     match='Not saving step 5: .*block2/bn/moving_variance'):
    ckpt.Save(5)
  assert not list((tmp_path / 'ckpt').glob('ckpt-5*'))
  # A checkpoint written with NaN by other means (an older version) is
  # skipped at restore and moved aside, never overwritten.
  ckpt.checkpoint.write(str(tmp_path / 'ckpt' / 'ckpt-4'))
  logs = []
  _Trainer(tmp_path, logs, save_interval_steps=2).Train(max_steps=6)
  out = capsys.readouterr().out
  assert 'ckpt-4 holds non-finite values; falling back to' in out
  assert (tmp_path / 'ckpt' / 'unusable' / 'ckpt-4.index').exists()
  assert any(l.endswith('ckpt-2 at step 2.') for l in logs), logs
  assert _NonFinite(str(tmp_path / 'ckpt' / 'ckpt-4')) == []
  assert _NonFinite(str(tmp_path / 'ckpt' / 'unusable' / 'ckpt-4')) != []


def test_model_that_does_not_match_the_checkpoint_is_named(tmp_path):
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


def test_batch_not_divisible_by_micro_batches_fails_before_any_write(tmp_path):
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
def test_engine_fields_are_checked_at_instantiate(field, value, accepts):
  p = pipelined_network.PipelinedNetwork.Params().Set(
      name='network', cells=digits_params.ConvNetCells(), num_stages=2)
  p.Set(**{field: value})
  with pytest.raises(errors.ParamsError) as e:
    p.Instantiate()
  assert f'network.{field}' in str(e.value) and accepts in str(e.value)


def test_run_checks_name_the_field_and_the_fix():
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


def test_evaluating_an_unknown_split_is_a_clear_error(tmp_path):
  with pytest.raises(trainer_lib.TrainerError, match="split 'bogus'"):
    _Trainer(tmp_path).Evaluate('bogus')
  assert not tmp_path.joinpath('trainer.lock').exists()
