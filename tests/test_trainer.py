"""The generic trainer: outputs in the logdir, resume, errors, robustness."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _Params(**train):
  p = model_registry.GetParams('digits.ConvNet')
  p.task.train.Set(log_interval_steps=5, **train)
  return p


def _RunTrainer(*args, timeout=240):
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  return subprocess.run([sys.executable, os.path.join(ROOT, 'trainer.py'), *args],
                        capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, env=env)


def test_train_and_eval_writes_params_checkpoints_and_metrics(tmp_path):
  logs = []
  t = trainer_lib.Trainer(_Params(save_interval_steps=10), str(tmp_path),
                          print_fn=logs.append)
  res = t.Train(max_steps=20, evaluate_splits=('test',))
  assert 0.0 <= res['test']['accuracy'] <= 1.0
  assert res['test']['num_examples'] == 360  # The whole split, once.
  assert any('examples/s' in l and 'ETA' in l for l in logs)
  params_text = (tmp_path / 'params.txt').read_text()
  assert "model : 'digits.ConvNet'" in params_text
  assert 'task.train.max_steps' in params_text
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines == [dict(step=20, split='test', **res['test'])]
  assert set(lines[0]) >= {'step', 'split', 'loss', 'accuracy', 'top5'}
  state = tf.train.get_checkpoint_state(str(tmp_path / 'ckpt'))
  assert state.model_checkpoint_path.endswith('ckpt-20')
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
      'ckpt-10', 'ckpt-20']
  assert os.listdir(tmp_path / 'train')  # TensorBoard event file.


def test_resume_continues_step_counter_and_weights(tmp_path):
  t1 = trainer_lib.Trainer(_Params(), str(tmp_path), print_fn=lambda _: None)
  t1.Train(max_steps=6)
  w1 = t1.task.network.TrainableVariables()[0].numpy()
  logs = []
  t2 = trainer_lib.Trainer(_Params(), str(tmp_path), print_fn=logs.append)
  assert int(tf.train.load_variable(str(tmp_path / 'ckpt/ckpt-6'),
                                    'global_step/.ATTRIBUTES/VARIABLE_VALUE')) == 6
  t2.Train(max_steps=9)
  assert any('Resumed from' in l and 'at step 6' in l for l in logs)
  assert int(t2._global_step.numpy()) == 9  # pylint: disable=protected-access
  # Same weights were restored before training continued.
  t3 = trainer_lib.Trainer(_Params(), str(tmp_path), print_fn=lambda _: None)
  t3._Checkpointer().Restore(str(tmp_path / 'ckpt/ckpt-6'))  # pylint: disable=protected-access
  assert (t3.task.network.TrainableVariables()[0].numpy() == w1).all()


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  t = trainer_lib.Trainer(_Params(save_interval_steps=4), str(tmp_path),
                          print_fn=lambda _: None)
  t.Train(max_steps=8)
  data = tmp_path / 'ckpt' / 'ckpt-8.data-00000-of-00001'
  data.write_bytes(data.read_bytes()[:100])  # Truncate: a partial write.
  logs = []
  t2 = trainer_lib.Trainer(_Params(save_interval_steps=4), str(tmp_path),
                           print_fn=logs.append)
  t2.Train(max_steps=10)
  assert 'ckpt-8 is unreadable; falling back to' in capsys.readouterr().out
  assert any('at step 4' in l for l in logs)


def test_unwritable_logdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(trainer_lib.TrainerError, match='Cannot write to logdir'):
    trainer_lib.Trainer(_Params(), str(blocker / 'sub')).Train(max_steps=1)


def test_cli_unknown_model_exits_nonzero_without_traceback(tmp_path):
  r = _RunTrainer('--model=digits.ConvNetz', f'--logdir={tmp_path}')
  assert r.returncode != 0
  assert 'digits.ConvNet' in r.stderr and 'Did you mean' in r.stderr
  assert 'Traceback' not in r.stderr


def test_cli_bad_override_names_key(tmp_path):
  r = _RunTrainer('--model=digits.ConvNet', f'--logdir={tmp_path}',
                  '--model_params_override=task.train.max_stepz = 2')
  assert r.returncode != 0
  assert 'max_stepz' in r.stderr and 'max_steps' in r.stderr
  assert 'Traceback' not in r.stderr


def test_cli_list_models():
  r = _RunTrainer('--list_models')
  assert r.returncode == 0
  assert 'digits.ConvNet' in r.stdout.split()


def test_sigkill_during_training_resumes_from_last_checkpoint(tmp_path):
  args = [sys.executable, os.path.join(ROOT, 'trainer.py'),
          '--model=digits.ConvNet', f'--logdir={tmp_path}', '--mode=train',
          '--max_steps=100000',
          '--model_params_override=task.train.save_interval_steps = 25; '
          'task.train.log_interval_steps = 25']
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONUNBUFFERED='1'))
  saved = []
  deadline = time.time() + 180
  try:
    for line in proc.stdout:
      if line.startswith('Saved checkpoint'):
        saved.append(line.split()[-1])
      if len(saved) >= 3 or time.time() > deadline:
        break
    time.sleep(0.3)  # Let it get into the middle of further steps.
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert len(saved) >= 3, 'trainer did not save checkpoints in time'
  latest = tf.train.latest_checkpoint(str(tmp_path / 'ckpt'))
  last_step = int(latest.rsplit('-', 1)[1])
  # The killed trainer's lock file names it; its lock died with it.
  assert (tmp_path / 'trainer.lock').read_text().startswith(f'pid {proc.pid} ')
  assert last_step >= int(saved[-1].rsplit('-', 1)[1])
  r = _RunTrainer('--model=digits.ConvNet', f'--logdir={tmp_path}',
                  '--mode=train', f'--max_steps={last_step + 5}')
  assert r.returncode == 0, r.stderr[-2000:]
  assert f'at step {last_step}.' in r.stdout
  assert f'ckpt-{last_step + 5}' in r.stdout
