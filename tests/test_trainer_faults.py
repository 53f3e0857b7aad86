"""Faults that belong to the trainer process, through the real trainer.py:
a second Ctrl-C exits at once, a second trainer on a logdir refuses, a full
disk keeps earlier checkpoints and leaves no partial one. (SIGTERM and
Ctrl-C saving the current step, with exit status 143 and 130, are checked
with every resume in test_resume.py.)"""
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from gpipe_lingvo import logdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(ROOT, 'trainer.py')
# Saves only when stopped (or at the end of a run that never ends here).
LONG_RUN = ['--model=digits.ConvNet', '--mode=train', '--max_steps=100000',
            '--model_params_override=task.train.save_interval_steps = 100000;'
            ' task.train.log_interval_steps = 5']


class _Trainer:
  """trainer.py in a subprocess whose output (stdout and stderr) is read
  line by line with a deadline."""

  def __init__(self, *args, prefix=()):
    self.proc = subprocess.Popen(
        [*prefix, sys.executable, TRAINER, *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED='1'))
    self.lines = []
    self._queue = queue.Queue()
    threading.Thread(target=self._Read, daemon=True).start()

  def _Read(self):
    for line in self.proc.stdout:
      self._queue.put(line.rstrip('\n'))
    self._queue.put(None)

  def WaitFor(self, predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        line = self._queue.get(timeout=max(0.0, deadline - time.time()))
      except queue.Empty:
        break
      if line is None:
        break
      self.lines.append(line)
      if predicate(line):
        return line
    self.proc.kill()
    raise AssertionError('trainer did not print the expected line:\n'
                         + '\n'.join(self.lines[-20:]))

  def Finish(self, timeout=120):
    rc = self.proc.wait(timeout=timeout)
    while True:
      line = self._queue.get(timeout=timeout)
      if line is None:
        return rc
      self.lines.append(line)


def _Steps(logdir):
  """Steps of the checkpoints on disk."""
  return sorted(int(p[:-len('.index')].rsplit('-', 1)[1]) for p in
                tf.io.gfile.glob(os.path.join(logdir, 'ckpt', 'ckpt-*.index')))


def testSecondCtrlCExitsAtOnceWithoutSaving(tmp_path):
  t = _Trainer(f'--logdir={tmp_path}', *LONG_RUN)
  # The first step is being traced (Python) when the signal arrives, so the
  # handler runs at once; the second signal meets the default action.
  t.WaitFor(lambda l: l.startswith('Training from step 0'))
  t.proc.send_signal(signal.SIGINT)
  t.WaitFor(lambda l: l.startswith('Ctrl-C: stopping after this step'))
  t.proc.send_signal(signal.SIGINT)
  assert t.Finish() == -signal.SIGINT
  assert _Steps(tmp_path) == []


def testSecondTrainerOnALogdirRefuses(tmp_path):
  with logdir_lock.LogdirLock(str(tmp_path)):
    t = _Trainer(f'--logdir={tmp_path}', '--mode=train', '--max_steps=2')
    assert t.Finish() == 1
  assert t.lines[-1].startswith(
      f'ERROR: Another trainer is using logdir {tmp_path} (pid {os.getpid()} '
      'on ')
  assert sorted(os.listdir(tmp_path)) == ['trainer.lock']


def _CanMountTmpfs(where):
  try:
    return subprocess.run(
        ['unshare', '-Urm', 'mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs',
         str(where)], capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


def testFullDiskKeepsEarlierCheckpointsAndNoPartialOne(tmp_path):
  """A real ENOSPC: a 13.7 MB tmpfs (mounted in a user and mount namespace,
  no root needed) with a 4 MB file on it holds two checkpoints of 4.3 MB
  (1.2 MB of variables, the rest the input iterator's state) and not a
  third. With the file removed, the rerun restores, trains and saves one
  more, which restores in turn."""
  mnt = tmp_path / 'mnt'
  mnt.mkdir()
  if not shutil.which('unshare') or not _CanMountTmpfs(mnt):
    pytest.skip('cannot mount a tmpfs in a user namespace here')
  logdir = mnt / 'log'
  left, after = tmp_path / 'left', tmp_path / 'after'
  # Train until the disk is full and copy out what is left; free 4 MB and
  # rerun until it is full again; copy out (the tmpfs goes with the
  # namespace).
  script = (f'mount -t tmpfs -o size=14000k tmpfs {mnt} && '
            f'head -c 4194304 /dev/zero > {mnt}/other && "$@"; rc=$?; '
            f'cp -r {logdir}/ckpt {left}; rm {mnt}/other; echo RERUN; "$@"; '
            f'echo $rc $? > {tmp_path}/codes; cp -r {logdir}/ckpt {after}')
  t = _Trainer(f'--logdir={logdir}', '--model=digits.ConvNet', '--mode=train',
               '--max_steps=100', '--model_params_override='
               'task.train.save_interval_steps = 5',
               prefix=('unshare', '-Urm', 'sh', '-c', script, 'sh'))
  t.Finish()
  assert (tmp_path / 'codes').read_text().split() == ['1', '1'], t.lines
  cut = t.lines.index('RERUN')
  first, rerun = t.lines[:cut], t.lines[cut + 1:]
  error = [l for l in first if l.startswith('ERROR: ')]
  assert len(error) == 1 and error[0].startswith(
      'ERROR: Disk full: checkpoint ckpt-'), t.lines
  assert 'No space left on device' in error[0]
  assert ' MB is free' in error[0] and 'needs about ' in error[0]
  assert not any('Traceback' in l for l in t.lines)
  saved = [l.rsplit('/', 1)[1] for l in first
           if l.startswith('Saved checkpoint')]
  assert saved and f'checkpoint is {logdir}/ckpt/{saved[-1]} ' in error[0]
  failed = error[0].split()[4]
  assert not list(left.glob(failed + '*'))  # Neither ckpt-N_temp nor files.
  # The earlier checkpoints are whole: every tensor reads back.
  assert tf.train.get_checkpoint_state(str(left)).model_checkpoint_path == (
      f'{left}/{saved[-1]}')
  # The size it names is that of a whole checkpoint, the input's state
  # included (the checkpoints differ by a few per cent).
  needs = float(error[0].split('needs about ')[1].split()[0])
  written = sum(f.stat().st_size for f in left.glob(saved[-1] + '.*')) / 2**20
  assert abs(needs - written) < 0.1 * written, (needs, written)
  for name in saved[-2:]:
    reader = tf.train.load_checkpoint(str(left / name))
    for key, dtype in reader.get_variable_to_dtype_map().items():
      if dtype != tf.variant:  # The input iterator: restored, not read.
        reader.get_tensor(key)
  # The rerun resumed from the newest, trained and saved the checkpoint
  # that did not fit before, and stopped at the next full disk.
  last = int(saved[-1].split('-')[1])
  assert f'Resumed from {logdir}/ckpt/{saved[-1]} at step {last}.' in rerun
  assert f'Saved checkpoint {logdir}/ckpt/{failed}' in rerun
  assert [l for l in rerun if l.startswith('ERROR: Disk full: checkpoint '
                                           f'ckpt-{last + 10} ')], rerun
  # Which restores, input position included.
  model = tf.Module()
  step = tf.Variable(0, dtype=tf.int64)
  examples = tf.Variable(0, dtype=tf.int64)
  model.examples = examples
  tf.train.Checkpoint(global_step=step, input=model).read(
      str(after / failed)).expect_partial()
  assert (int(step.numpy()), int(examples.numpy())) == (
      last + 5, (last + 5) * 64)
