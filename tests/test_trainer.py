"""The generic trainer: outputs in the logdir, resume, errors, robustness."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from tasks import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _Params(**train):
  p = model_registry.GetParams('digits.ConvNet')
  p.task.train.Set(log_interval_steps=5, **train)
  return p


def _RunTrainer(*args, timeout=240, unset=()):
  """trainer.py with `args`, in this environment without the `unset`
  variables."""
  env = {k: v for k, v in os.environ.items() if k not in unset}
  env['PYTHONUNBUFFERED'] = '1'
  return subprocess.run([sys.executable, os.path.join(ROOT, 'trainer.py'), *args],
                        capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, env=env)


def testTrainAndEvalWritesParamsCheckpointsAndMetrics(tmp_path):
  logs = []
  t = trainer_lib.Trainer(_Params(save_interval_steps=10), str(tmp_path),
                          print_fn=logs.append)
  res = t.Train(max_steps=20, evaluate_splits=('test',))
  assert res['test']['num_examples'] == 360  # The whole split, once.
  # 20 steps train it far above chance (0.1; 0.88 measured).
  assert res['test']['accuracy'] >= 0.7, res
  # The metrics are those of the saved ckpt-20, computed directly: restored
  # into a new model, logits of every test image, argmax and cross-entropy.
  fresh = trainer_lib.Trainer(_Params(), str(tmp_path / 'fresh'))
  fresh._Checkpointer().Restore(str(tmp_path / 'ckpt' / 'ckpt-20'))  # pylint: disable=protected-access
  gen = fresh.params.test.Instantiate()
  images, labels = digits.LoadSplit('test')
  with context.Scope(training=False):
    logits = fresh.task.network.FProp(
        tf.constant((images - gen._mean) / gen._std)).numpy()  # pylint: disable=protected-access
  assert res['test']['accuracy'] == pytest.approx(
      np.mean(logits.argmax(1) == labels), abs=1e-9)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  assert res['test']['loss'] == pytest.approx(
      -log_p[np.arange(len(labels)), labels].mean(), rel=1e-4)
  assert any('examples/s' in l and 'ETA' in l for l in logs)
  # Each logged line reports the allocator's step peak (the BFC allocator,
  # as trainer.py sets it), at least one training batch's images.
  peaks = [float(l.split('step peak ')[1].split()[0]) for l in logs
           if 'step peak' in l]
  assert len(peaks) == 4 and min(peaks) * 2**20 >= 32 * 64 * 4, logs
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


def testStepPeakIsTheAllocatorPeakOfOneStep():
  peak = trainer_lib.StepPeak()
  assert peak.available
  # A 4 MiB temporary (an input-dependent product, not folded at trace).
  f = tf.function(lambda x, n: tf.reduce_sum(tf.fill([n, 1024], x) * x))
  big, small = (tf.constant(1024), tf.constant(4))
  x = tf.constant(2.0)
  for n in (big, small):
    f(x, n)
  peak.Start()
  f(x, big).numpy()
  big_peak = peak.End()
  peak.Start()
  f(x, small).numpy()
  assert big_peak >= 4 * 2**20 > 100 * peak.End()


def testTrainerCliReportsTheStepPeakOnAnyCpu(tmp_path):
  # Without oneDNN (an x86 CPU without AVX-512) TensorFlow's default CPU
  # allocator keeps no statistics: trainer.py turns on the BFC allocator
  # itself, so a user's environment need not.
  r = _RunTrainer('--model=digits.ConvNet', f'--logdir={tmp_path}',
                  '--max_steps=2',
                  '--model_params_override=task.train.log_interval_steps = 1',
                  unset=('TF_CPU_ALLOCATOR_USE_BFC',))
  assert r.returncode == 0, r.stderr[-2000:]
  steps = [l for l in r.stdout.splitlines() if l.startswith('step ')]
  assert len(steps) == 2 and all('step peak' in l for l in steps), r.stdout


def testUnwritableLogdirIsAClearError(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(trainer_lib.TrainerError, match='Cannot write to logdir'):
    trainer_lib.Trainer(_Params(), str(blocker / 'sub')).Train(max_steps=1)


def testCliUnknownModelExitsNonzeroWithoutTraceback(tmp_path):
  r = _RunTrainer('--model=digits.ConvNetz', f'--logdir={tmp_path}')
  assert r.returncode != 0
  assert 'digits.ConvNet' in r.stderr and 'Did you mean' in r.stderr
  assert 'Traceback' not in r.stderr


def testCliBadOverrideNamesKey(tmp_path):
  r = _RunTrainer('--model=digits.ConvNet', f'--logdir={tmp_path}',
                  '--model_params_override=task.train.max_stepz = 2')
  assert r.returncode != 0
  assert 'max_stepz' in r.stderr and 'max_steps' in r.stderr
  assert 'Traceback' not in r.stderr


def testCliListModels():
  r = _RunTrainer('--list_models')
  assert r.returncode == 0
  assert 'digits.ConvNet' in r.stdout.split()


def testProfiledStepSaysWhatWasLiveAtTheAllocatorPeak(tmp_path):
  """--timeline_at_step: the timeline picture, and what the tensors live at
  the allocator's peak asked for against the blocks they hold."""
  logs = []
  p = model_registry.GetParams('digits.ConvNetPipelined')
  p.task.train.Set(log_interval_steps=1)
  t = trainer_lib.Trainer(p, str(tmp_path), print_fn=logs.append,
                          timeline_at_step=2)
  t.Train(max_steps=2)
  assert (tmp_path / 'step_timeline.png').stat().st_size > 10_000
  line = [l for l in logs if l.startswith('allocator peak of the profiled')]
  assert len(line) == 1, logs
  in_use, asked, held = [float(x) for x in re.findall(r'([\d.]+) MiB',
                                                      line[0])]
  assert 0 < asked <= held <= in_use, line[0]
  # The plan's replay of the same step beside it (dataflow, logical CPU
  # devices sharing the host's allocator).
  line = [l for l in logs if l.startswith("the plan's replay of the step")]
  assert len(line) == 1, logs
  asked, held, planned = [float(x) for x in re.findall(r'([\d.]+) MiB',
                                                       line[0])]
  assert 0 < asked <= held <= planned, line[0]
