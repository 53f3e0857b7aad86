"""Multi-worker training with real worker processes on loopback ports.

Two workers (python -m gpipe_lingvo.distribute.launch), each running the
K=2 digits pipeline on two logical CPU devices, train R=2 data-parallel
replicas; the chief's checkpoint must equal one process training the same
global batch. A worker killed mid-run makes the other fail within a bound,
naming the lost task; a restart resumes from the chief's checkpoint, a
SIGTERM stops both workers after the same step with a checkpoint there, and
one process (M=8 instead of 2 x M=4) resumes that: every segment continues
the same training as the one process of the reference, input included.
"""
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import hyperparams
from gpipe_lingvo import model_registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = 'digits.ConvNetPipelined'  # K=2, M=4, batch 64, batch norm, dropout


def _LaunchArgs(logdir, *overrides, max_steps, workers=2, extra=()):
  text = '; '.join(('task.train.log_interval_steps = 1',) + overrides)
  return [sys.executable, '-m', 'gpipe_lingvo.distribute.launch',
          f'--workers={workers}', '--grace_s=60', '--',
          f'--model={MODEL}', f'--logdir={logdir}', '--mode=train',
          f'--max_steps={max_steps}', f'--model_params_override={text}',
          *extra]


def _Env(tmp_path):
  # Temporary dirs of the workers other than the chief go under tmp_path.
  return dict(os.environ, PYTHONUNBUFFERED='1', TMPDIR=str(tmp_path))


class _Run:
  """A launcher subprocess whose output lines are collected with times."""

  def __init__(self, args, env):
    self.t0 = time.time()
    self.proc = subprocess.Popen(args, cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
    self.lines = []  # (seconds since start, line)
    self._reader = threading.Thread(target=self._Read, daemon=True)
    self._reader.start()

  def _Read(self):
    for line in iter(self.proc.stdout.readline, ''):
      self.lines.append((time.time() - self.t0, line.rstrip('\n')))

  def WaitFor(self, pattern, timeout):
    deadline = time.time() + timeout
    while True:
      for t, line in list(self.lines):
        if re.search(pattern, line):
          return t, line
      if time.time() > deadline or (self.proc.poll() is not None and
                                    not self._reader.is_alive()):
        break
      time.sleep(0.1)
    raise AssertionError(f'no line matching {pattern!r}:\n' + self.Text())

  def Finish(self, timeout):
    rc = self.proc.wait(timeout=timeout)
    self._reader.join(timeout=10)
    return rc

  def Text(self):
    return '\n'.join(line for _, line in self.lines)

  def Pids(self):
    return {int(m.group(1)): int(m.group(2)) for m in (
        re.match(r'launch: worker (\d+) pid (\d+)', l) for l in
        self.Text().splitlines()) if m}

  def Ports(self):
    return [int(m.group(1)) for m in re.finditer(
        r'launch: worker \d+ pid \d+ port (\d+)', self.Text())]


def _AssertAllEnded(run):
  for pid in run.Pids().values():
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
  for port in run.Ports():
    with socket.socket() as s:
      assert s.connect_ex(('127.0.0.1', port)) != 0, f'port {port} is open'


def _Reference(segments):
  """One process training the same global batches without interruption:
  the two shards' batches concatenated (worker 0's rows first: the global
  batch), run as R x M = 8 micro-batches of the same size, so batch norm
  and dropout see what the replicas saw. Yields (params, task, step) after
  each segment."""
  p = model_registry.GetParams(MODEL)
  hyperparams.ApplyOverrides(p, 'task.network.num_micro_batches = 8')
  task = p.task.Instantiate()
  task.BuildOptimizer()
  step = tf.Variable(0, dtype=tf.int64)

  @tf.function
  def Step(batch):
    out = task.TrainStep(batch, step)
    step.assign_add(1)
    return out

  shards = [iter(p.train.Copy().Set(shard_index=i, num_shards=2)
                 .Instantiate().GetDataset()) for i in range(2)]
  for steps in segments:
    for _ in range(steps):
      parts = [next(s) for s in shards]
      Step({k: tf.concat([b[k] for b in parts], 0) for k in parts[0]})
    yield p, task, step


def _AssertCheckpointEquals(path, params, ref, ref_step):
  """The chief's checkpoint, restored in one process (a world of another
  size), holds the reference's weights, statistics and optimizer slots."""
  got = params.task.Instantiate()
  got.BuildOptimizer()
  got_step = tf.Variable(0, dtype=tf.int64)
  tf.train.Checkpoint(task=got, global_step=got_step).read(
      path).assert_existing_objects_matched()
  assert int(got_step.numpy()) == int(ref_step.numpy())
  assert [v.name for v in ref.variables] == [v.name for v in got.variables]
  # Two replicas' gradients are summed in another order than one process
  # sums its micro-batches; the rounding differences grow through momentum
  # and batch norm over the steps (measured up to 7e-5 on a conv weight of
  # magnitude 0.14 after 10 steps on a loaded machine), most visibly on
  # elements near zero: each element within 2e-4 of itself or 1e-3 of the
  # tensor's largest magnitude.
  for r, g in zip(ref.variables, got.variables):
    scale = float(np.max(np.abs(r.numpy()))) if r.shape.num_elements() else 0
    np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=2e-4,
                               atol=max(2e-5, 1e-3 * scale), err_msg=r.name)


def _Scenario(tmp):
  """Trains with 2 workers until the chief saved ckpt-4 and kills worker 1;
  restarts both and stops them with a SIGTERM to the launcher a few steps
  later; resumes in one process with M=8 for 3 steps. Three launches,
  checked by the _Check functions below (in one test: under pytest-xdist,
  tests sharing a module fixture can each run it)."""
  logdir = tmp / 'run'
  save = 'task.train.save_interval_steps = 4'
  first = _Run(_LaunchArgs(logdir, save, max_steps=100000,
                           extra=('--collective_timeout_s=60',)), _Env(tmp))
  try:
    first.WaitFor(r'^\[w0\] Saved checkpoint .*ckpt-4$', timeout=240)
    t_kill = time.time() - first.t0
    os.kill(first.Pids()[1], signal.SIGKILL)
    first.Finish(timeout=180)
  finally:
    if first.proc.poll() is None:
      first.proc.kill()
  saved = [int(n) for n in re.findall(r'\[w0\] Saved checkpoint .*ckpt-(\d+)',
                                      first.Text())]
  last = max(saved)
  target = last + random.Random(last).randint(1, 3)
  second = _Run(_LaunchArgs(logdir, save, max_steps=100000), _Env(tmp))
  try:
    second.WaitFor(rf'^\[w0\] step +{target} ', timeout=240)
    second.proc.send_signal(signal.SIGTERM)
    second.Finish(timeout=180)
  finally:
    if second.proc.poll() is None:
      second.proc.kill()
  stopped = int(re.search(r'\[w0\] Stopped by SIGTERM at step (\d+);',
                          second.Text()).group(1))
  third = _Run(_LaunchArgs(logdir, save, 'task.network.num_micro_batches = 8',
                           max_steps=stopped + 3, workers=1), _Env(tmp))
  third.Finish(timeout=300)
  return dict(tmp=tmp, logdir=logdir, first=first, second=second,
              third=third, t_kill=t_kill, last=last, target=target,
              stopped=stopped)


def _CheckTwoWorkersEqualOneProcessOnTheGlobalBatch(scenario):
  logdir, last = scenario['logdir'], scenario['last']
  stopped = scenario['stopped']
  out = scenario['first'].Text()
  assert '[w0] world: 2 worker(s), this is /job:worker/task:0 (chief' in out
  assert ('[w1]   batch: global 64 = 2 x per-replica 32 = 2 x 4 '
          'micro-batches of 8') in out
  # Both replicas report the same (global) metrics.
  lines = [re.sub(r'^\[w\d\] ', '', l).split('lr')[0]
           for l in out.splitlines() if re.match(r'\[w\d\] step +3 ', l)]
  assert len(lines) == 2 and lines[0] == lines[1], lines
  ref = _Reference([last, stopped - last, 3])
  params, task, step = next(ref)
  _AssertCheckpointEquals(str(logdir / 'ckpt' / f'ckpt-{last}'), params,
                          task, step)
  # Weights and batch-norm statistics moved: the comparison is not between
  # untrained values.
  init = {v.name: v.numpy() for v in params.task.Instantiate().variables}
  moved = [v.name for v in task.variables if v.name in init and
           not np.allclose(v.numpy(), init[v.name], atol=1e-4)]
  assert len(moved) == len(init), sorted(set(init) - set(moved))
  # After the kill and the restart, and after the SIGTERM and the restart in
  # one process: still the same training as one process without them.
  params, task, step = next(ref)
  _AssertCheckpointEquals(str(logdir / 'ckpt' / f'ckpt-{stopped}'), params,
                          task, step)
  params, task, step = next(ref)
  _AssertCheckpointEquals(str(logdir / 'ckpt' / f'ckpt-{stopped + 3}'),
                          params, task, step)


def _CheckLostWorkerFailsTheOtherWithinBound(scenario):
  run = scenario['first']
  assert run.proc.returncode != 0
  out = run.Text()
  assert 'no authentication' in out and 'all interfaces' in out
  t_err, line = run.WaitFor(r'^\[w0\] ERROR: multi-worker training stopped',
                            timeout=0)
  assert '/job:worker/replica:0/task:1' in line or '/job:worker/task:1' in line
  # Well before the 60 s collective timeout: TensorFlow notices the lost
  # peer by its closed connection or missing heartbeats.
  assert t_err - scenario['t_kill'] < 30, (t_err - scenario['t_kill'], out)
  # And it exits (TensorFlow's shutdown takes a few seconds more).
  t_end, _ = run.WaitFor(r'^launch: worker 0 ended with status 1$', timeout=0)
  assert t_end - scenario['t_kill'] < 60, (t_end - scenario['t_kill'], out)
  _AssertAllEnded(run)


def _CheckRestartedWorkersResumeAndStopTogether(scenario):
  run, last, logdir = scenario['second'], scenario['last'], scenario['logdir']
  stopped = scenario['stopped']
  out = run.Text()
  assert run.proc.returncode == 143, out
  assert re.search(rf'\[w0\] Resumed from .*ckpt-{last} at step {last}\.', out)
  assert (f'[w0] Input: skipping to example {64 * last} of the training '
          f'stream (the position of ckpt-{last}).') in out
  assert f'[w1] Worker 1: state of the chief received (step {last}).' in out
  # The SIGTERM reached both workers; they stopped after the same step
  # (agreed through the step's sum), the chief saved it, both exited 143.
  assert stopped >= scenario['target']
  assert (f'[w0] Stopped by SIGTERM at step {stopped}; saved '
          f'{logdir}/ckpt/ckpt-{stopped}. Rerun the same command to '
          'resume.') in out
  assert re.search(rf'\[w1\] Stopped (by SIGTERM )?at step {stopped}', out)
  assert 'launch: worker 0 ended with status 143' in out
  assert 'launch: worker 1 ended with status 143' in out
  # Only the chief writes into the logdir.
  assert '[w1] Saved checkpoint' not in out
  assert sorted(os.listdir(logdir)) == ['ckpt', 'params.txt', 'train',
                                      'trainer.lock']
  # The other worker's temporary logdir is deleted at its end; only the one
  # of the worker killed with SIGKILL in the first run remains.
  left = [d for d in os.listdir(scenario['tmp']) if d.startswith('gpipe_')]
  assert len(left) == 1, left
  _AssertAllEnded(run)


def _CheckOneProcessResumesWhatTwoWorkersTrained(scenario):
  run, logdir, stopped = (scenario['third'], scenario['logdir'],
                          scenario['stopped'])
  out = run.Text()
  assert run.proc.returncode == 0, out
  assert ('[w0]   batch: global 64 = 1 x per-replica 64 = 1 x 8 '
          'micro-batches of 8') in out
  assert (f'[w0] Input: skipping to example {64 * stopped} of the training '
          f'stream (the position of ckpt-{stopped}).') in out
  assert f'[w0] Saved checkpoint {logdir}/ckpt/ckpt-{stopped + 3}' in out


@pytest.mark.slow
def testTwoWorkersLoseOneStopTogetherAndResumeInOneProcess(tmp_path):
  scenario = _Scenario(tmp_path)
  _CheckLostWorkerFailsTheOtherWithinBound(scenario)
  _CheckRestartedWorkersResumeAndStopTogether(scenario)
  _CheckOneProcessResumesWhatTwoWorkersTrained(scenario)
  _CheckTwoWorkersEqualOneProcessOnTheGlobalBatch(scenario)
