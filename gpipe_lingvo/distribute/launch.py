"""Runs N local worker processes of trainer.py, each with its own TF_CONFIG.

  python -m gpipe_lingvo.distribute.launch --workers=2 -- \\
      --model=digits.ConvNetPipelined --logdir=/tmp/run

Every argument after `--` goes to each trainer. Worker i gets
TF_CONFIG {"cluster": {"worker": [127.0.0.1:P0, ...]}, "task": {"type":
"worker", "index": i}} on free ports; worker 0 is the chief. Output lines are
prefixed with [wI]. When a worker fails, the others are given --grace_s to
fail on their own (TensorFlow notices a lost peer within seconds and names
it), then stopped; the launcher exits with the first failing worker's
status. Whatever happens, no worker outlives the launcher, so no port stays
open.

Security: TensorFlow's worker gRPC server has no authentication and listens
on every interface, whatever address TF_CONFIG gives (measured: a worker
given 127.0.0.1:P listens on *:P). Anyone who can reach a worker's port can
run operations inside that training process. Keep worker ports inside a
trusted network (a firewall, a private network), also for this local mode.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Sequence

_TRAINER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), 'trainer.py')

SECURITY_NOTE = (
    'launch: NOTE: TensorFlow worker gRPC servers have no authentication and '
    'listen on all interfaces (ports {ports}); anyone who can reach them can '
    'run operations in the training processes. Keep them inside a trusted '
    'network.')


def FreePorts(n: int) -> List[int]:
  """n distinct ports that are free on every interface right now."""
  socks, ports = [], []
  try:
    for _ in range(n):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(('', 0))
      socks.append(s)
      ports.append(s.getsockname()[1])
  finally:
    for s in socks:
      s.close()
  return ports


def TfConfig(ports: Sequence[int], index: int, host: str = '127.0.0.1') -> str:
  """TF_CONFIG text of worker `index` of a cluster on host:ports."""
  return json.dumps({
      'cluster': {'worker': [f'{host}:{p}' for p in ports]},
      'task': {'type': 'worker', 'index': index}})


def _Pump(stream, prefix, out, lock):
  for line in iter(stream.readline, ''):
    with lock:
      out.write(f'{prefix}{line}')
      out.flush()
  stream.close()


def _Stop(procs, sig, wait_s):
  """Sends sig to every live worker's process group; waits up to wait_s."""
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
  deadline = time.time() + wait_s
  for p in procs:
    try:
      p.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      pass


class Launcher:
  """Starts the workers, relays their output and ends all of them."""

  def __init__(self, num_workers: int, trainer_args: Sequence[str],
               program: str = _TRAINER, grace_s: float = 60.0,
               kill_after_s: float = 5.0, out=sys.stdout):
    self.num_workers = num_workers
    self.args = list(trainer_args)
    self.program = program
    self.grace_s = grace_s
    self.kill_after_s = kill_after_s
    self.out = out
    self.procs = []
    self._lock = threading.Lock()
    self._pumps = []
    self._reported = set()

  def Say(self, text):
    with self._lock:
      self.out.write(text + '\n')
      self.out.flush()

  def Start(self):
    ports = FreePorts(self.num_workers)
    self.Say(SECURITY_NOTE.format(ports=', '.join(map(str, ports))))
    for i in range(self.num_workers):
      env = dict(os.environ, TF_CONFIG=TfConfig(ports, i),
                 PYTHONUNBUFFERED='1')
      p = subprocess.Popen(
          [sys.executable, self.program] + self.args, env=env,
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
          start_new_session=True)
      self.procs.append(p)
      self.Say(f'launch: worker {i} pid {p.pid} port {ports[i]}')
      t = threading.Thread(target=_Pump, args=(p.stdout, f'[w{i}] ', self.out,
                                               self._lock), daemon=True)
      t.start()
      self._pumps.append(t)

  def Wait(self) -> int:
    """Waits for all workers; returns the first failing status or 0."""
    failed = None
    while True:
      codes = self._Report()
      bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if bad and failed is None:
        failed = bad[0]
        self.Say(f'launch: waiting up to {self.grace_s:g}s for the other '
                 'workers to end')
        deadline = time.time() + self.grace_s
      if all(c is not None for c in codes):
        break
      if failed is not None and time.time() > deadline:
        self.Say('launch: stopping the remaining workers')
        self.Stop()
        self._Report()
        break
      time.sleep(0.1)
    for t in self._pumps:
      t.join(timeout=5)
    if failed is None:
      return 0
    # A worker ended by a signal reports it as a shell does: 128 + signal.
    return failed[1] if failed[1] > 0 else 128 - failed[1]

  def _Report(self):
    """Exit codes (None: running); says once when each worker ended."""
    codes = [p.poll() for p in self.procs]
    for i, c in enumerate(codes):
      if c is not None and i not in self._reported:
        self._reported.add(i)
        self.Say(f'launch: worker {i} ended with status {c}')
    return codes

  def Stop(self):
    """Ends every worker: SIGTERM, then SIGKILL after kill_after_s (a worker
    blocked inside TensorFlow, e.g. waiting for its peers at start, may not
    act on SIGTERM)."""
    _Stop(self.procs, signal.SIGTERM, self.kill_after_s)
    _Stop(self.procs, signal.SIGKILL, 5.0)

  def Forward(self, signum):
    """Passes a SIGTERM or SIGINT on to every worker, which stop after the
    same step, the chief saving it; gives them grace_s to save and exit,
    then Stop()."""
    _Stop(self.procs, signum, self.grace_s)
    self.Stop()
    for t in self._pumps:
      t.join(timeout=5)
    self._Report()


def main(argv: Sequence[str] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if '--' in argv:
    cut = argv.index('--')
    own, rest = argv[:cut], argv[cut + 1:]
  else:
    own, rest = argv, []
  parser = argparse.ArgumentParser(
      prog='python -m gpipe_lingvo.distribute.launch',
      description='Run N local trainer workers on loopback ports; arguments '
      'after -- go to every trainer.py.')
  parser.add_argument('--workers', type=int, required=True,
                      help='Number of worker processes (replicas).')
  parser.add_argument('--grace_s', type=float, default=60.0,
                      help='After a worker fails, how long the others may '
                      'take to fail on their own before they are stopped; '
                      'after a SIGTERM or Ctrl-C passed on to the workers, '
                      'how long they may take to save and exit.')
  parser.add_argument('--kill_after_s', type=float, default=5.0,
                      help='Seconds between SIGTERM and SIGKILL when '
                      'workers are stopped.')
  parser.add_argument('--program', default=_TRAINER,
                      help='Script each worker runs (default: trainer.py).')
  flags = parser.parse_args(own)
  if flags.workers < 1:
    parser.error(f'--workers must be >= 1, got {flags.workers}')
  launcher = Launcher(flags.workers, rest, flags.program, flags.grace_s,
                      flags.kill_after_s)

  def OnSignal(signum, frame):
    del frame
    launcher.Say(f'launch: signal {signum}; passed on to the workers (they '
                 f'save and exit; stopped after {launcher.grace_s:g}s)')
    launcher.Forward(signum)
    sys.exit(128 + signum)

  signal.signal(signal.SIGINT, OnSignal)
  signal.signal(signal.SIGTERM, OnSignal)
  try:
    launcher.Start()
    return launcher.Wait()
  finally:
    launcher.Stop()


if __name__ == '__main__':
  sys.exit(main())
