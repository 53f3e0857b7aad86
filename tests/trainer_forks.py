"""trainer.py processes that start in a second instead of five.

A server process imports trainer.py (TensorFlow with it: about 4 s of the
5 s a `python trainer.py` start takes here) once, then forks one child per
run. Each child runs trainer.py's main() with its own arguments, writes its
output to its own file and ends with its own exit status, as `python
trainer.py ARGS` would: importing TensorFlow starts no runtime and no
thread pool, so the children are as fresh as new processes. Signals are
sent to the child's pid: real processes, real signals.

Pause points, for kills during a save: a child started with
pause=(point, N) stops at `point` of its first save of a step >= N, creates
the file `paused` in its run directory and waits until the file is removed
(send it a signal meanwhile). The server wraps three TensorFlow functions
before it forks; the trainer's code is unchanged:
  'merge' - the checkpoint's data and index are written in ckpt-N_temp/,
            not yet moved to ckpt-N.* (MergeV2Checkpoints);
  'state' - ckpt-N.* are complete, the state file does not name ckpt-N;
  'sweep' - the state file names ckpt-N, the checkpoints beyond
            max_to_keep are not yet deleted.
"""
import io
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(ROOT, 'trainer.py')
POINTS = ('merge', 'state', 'sweep')
_PAUSE_ENV = 'GPIPE_LINGVO_TEST_PAUSE'  # "point:step:file"


# -- in the server and its children ---------------------------------------------

def _Pause(point, path):
  """Waits at `point` if this process was asked to and `path` (a checkpoint
  prefix) is of the step asked for or later."""
  spec = os.environ.get(_PAUSE_ENV)
  if not spec:
    return
  want, step, flag = spec.split(':', 2)
  m = re.search(r'ckpt-(\d+)', str(path))
  if want != point or not m or int(m.group(1)) < int(step):
    return
  del os.environ[_PAUSE_ENV]  # Once per process.
  with open(flag, 'w') as f:
    f.write(f'{point} {m.group(0)}\n')
  while os.path.exists(flag):
    time.sleep(0.01)


def _InstallPausePoints():
  # pylint: disable=import-outside-toplevel,protected-access
  from tensorflow.python.checkpoint import checkpoint_management as cm
  from tensorflow.python.ops import gen_io_ops
  merge = gen_io_ops.merge_v2_checkpoints

  def Merge(checkpoint_prefixes, destination_prefix, *args, **kw):
    _Pause('merge', destination_prefix.numpy().decode()
           if hasattr(destination_prefix, 'numpy') else destination_prefix)
    return merge(checkpoint_prefixes, destination_prefix, *args, **kw)

  update = cm.update_checkpoint_state_internal

  def Update(save_dir, model_checkpoint_path, *args, **kw):
    _Pause('state', model_checkpoint_path)
    return update(save_dir, model_checkpoint_path, *args, **kw)

  sweep = cm.CheckpointManager._sweep

  def Sweep(self):
    _Pause('sweep', self.latest_checkpoint)
    return sweep(self)

  gen_io_ops.merge_v2_checkpoints = Merge
  cm.update_checkpoint_state_internal = Update
  cm.CheckpointManager._sweep = Sweep


def _RunChild(trainer, cmd):
  """In the forked child: trainer.py's main with cmd's args; never returns."""
  code = 1
  try:
    os.setpgid(0, 0)
    fd = os.open(cmd['log'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, 'wb', 0), line_buffering=True)
    sys.stderr = sys.stdout
    os.environ.update(cmd.get('env', {}))
    sys.argv = [TRAINER] + cmd['args']
    try:
      trainer.main()
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
  finally:
    try:
      sys.stdout.flush()
    finally:
      os._exit(code)  # pylint: disable=protected-access


def _Serve():
  """The server: forks a child per JSON command line on stdin; reports
  {"pid": P} for each and {"exited": P, "status": S} when one ends (S as
  subprocess reports it: the exit code, or -signal)."""
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.argv = [TRAINER]
  import trainer  # pylint: disable=import-outside-toplevel
  _InstallPausePoints()
  print(json.dumps({'ready': os.getpid()}), flush=True)
  children = set()
  open_stdin = True
  while open_stdin or children:
    if open_stdin and select.select([sys.stdin], [], [], 0.02)[0]:
      line = sys.stdin.readline()
      if not line:
        open_stdin = False
      else:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
          _RunChild(trainer, cmd)
        children.add(pid)
        print(json.dumps({'pid': pid}), flush=True)
    elif not open_stdin:
      time.sleep(0.02)
    while children:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if not pid:
        break
      children.discard(pid)
      print(json.dumps({'exited': pid, 'status': os.waitstatus_to_exitcode(
          status)}), flush=True)


# -- in the test process ---------------------------------------------------------

class Child:
  """One trainer run: its output lines, signals, exit status, pauses."""

  def __init__(self, server, pid, log, run_dir):
    self.server = server
    self.pid = pid
    self.log = log
    self.flag = os.path.join(run_dir, 'paused')
    self.lines = []
    self._partial = ''
    self._offset = 0
    self._cursor = 0  # Lines before it were seen by an earlier WaitFor.

  def _Read(self):
    with open(self.log, 'rb') as f:
      f.seek(self._offset)
      data = f.read()
    self._offset += len(data)
    parts = (self._partial + data.decode('utf-8', 'replace')).split('\n')
    self._partial = parts.pop()
    self.lines.extend(parts)
    return parts

  def Text(self):
    self._Read()
    return '\n'.join(self.lines + [self._partial])

  def WaitFor(self, predicate, timeout=180):
    """The first output line after those earlier calls returned or passed
    for which predicate(line) holds."""
    deadline = time.time() + timeout
    while True:
      ended = self.Status() is not None  # Before the read: nothing is missed.
      self._Read()
      while self._cursor < len(self.lines):
        line = self.lines[self._cursor]
        self._cursor += 1
        if predicate(line):
          return line
      if ended:
        raise AssertionError(f'trainer {self.pid} ended (status '
                             f'{self.Status()}) without the line:\n'
                             + self.Text()[-3000:])
      if time.time() > deadline:
        raise AssertionError(f'trainer {self.pid}: no such line in '
                             f'{timeout} s:\n' + self.Text()[-3000:])
      time.sleep(0.02)

  def WaitPaused(self, timeout=180):
    """Waits until the child stopped at its pause point; returns what it
    wrote (`point ckpt-N`)."""
    deadline = time.time() + timeout
    while not os.path.exists(self.flag):
      if self.Status() is not None or time.time() > deadline:
        raise AssertionError(f'trainer {self.pid} did not pause (status '
                             f'{self.Status()}):\n' + self.Text()[-3000:])
      time.sleep(0.01)
    while True:
      with open(self.flag) as f:
        text = f.read()
      if text.endswith('\n'):
        return text.strip()
      time.sleep(0.01)

  def Release(self):
    os.remove(self.flag)

  def Signal(self, signum):
    os.kill(self.pid, signum)

  def Status(self):
    return self.server.statuses.get(self.pid)

  def Wait(self, timeout=300):
    """The exit status (-signal if a signal ended it)."""
    deadline = time.time() + timeout
    while self.Status() is None:
      if time.time() > deadline:
        os.kill(self.pid, 9)
        raise AssertionError(f'trainer {self.pid} did not end in {timeout} '
                             's:\n' + self.Text()[-3000:])
      time.sleep(0.02)
    self._Read()
    return self.Status()


class TrainerForks:
  """The server process and the runs it forked."""

  def __init__(self, timeout=180):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop(_PAUSE_ENV, None)
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.statuses = {}
    self._pids = queue.Queue()
    self._ready = threading.Event()
    threading.Thread(target=self._Listen, daemon=True).start()
    if not self._ready.wait(timeout):
      self.Close()
      raise AssertionError('the trainer fork server did not start')
    self._count = 0
    self._started = []

  def _Listen(self):
    for line in self.proc.stdout:
      msg = json.loads(line)
      if 'ready' in msg:
        self._ready.set()
      elif 'pid' in msg:
        self._pids.put(msg['pid'])
      elif 'exited' in msg:
        self.statuses[msg['exited']] = msg['status']

  def Start(self, run_dir, *args, pause=None) -> Child:
    """Forks `trainer.py ARGS` with output in run_dir/trainer-K.log."""
    os.makedirs(run_dir, exist_ok=True)
    if os.path.exists(os.path.join(run_dir, 'paused')):
      os.remove(os.path.join(run_dir, 'paused'))  # Left by a killed run.
    self._count += 1
    log = os.path.join(run_dir, f'trainer-{self._count}.log')
    cmd = {'args': list(args), 'log': log, 'env': {}}
    if pause is not None:
      point, step = pause
      assert point in POINTS, point
      cmd['env'][_PAUSE_ENV] = (
          f'{point}:{step}:{os.path.join(run_dir, "paused")}')
    self.proc.stdin.write(json.dumps(cmd) + '\n')
    self.proc.stdin.flush()
    pid = self._pids.get(timeout=60)
    self._started.append(pid)
    while not os.path.exists(log):
      time.sleep(0.01)
    return Child(self, pid, log, run_dir)

  def Close(self):
    """Ends the server, after killing any run still going."""
    for pid in self._started:
      if pid not in self.statuses:
        try:
          os.kill(pid, 9)
        except ProcessLookupError:
          pass
    try:
      self.proc.stdin.close()
    except OSError:
      pass
    try:
      self.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.proc.kill()


if __name__ == '__main__':
  _Serve()
