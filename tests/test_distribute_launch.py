"""The local launcher ends every worker, also on failure; the trainer
rejects a TF_CONFIG that does not fit the params before the first step."""
import json
import os
import subprocess
import sys
import time

import pytest

from gpipe_lingvo.distribute import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in worker without TensorFlow: prints its TF_CONFIG task, then
# worker 1 fails while worker 0 would run on for ten minutes.
_WORKER = '''
import json, os, signal, sys, time
config = json.loads(os.environ['TF_CONFIG'])
i = config['task']['index']
print('task', i, 'of', len(config['cluster']['worker']), flush=True)
if 'ignore_term' in sys.argv:
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
if i == 1 and 'fail' in sys.argv:
  sys.exit(3)
if i == 0 and 'fail' in sys.argv:
  time.sleep(600)
'''


def _Launch(tmp_path, *worker_args, workers=2, grace_s=1):
  program = tmp_path / 'worker.py'
  program.write_text(_WORKER)
  t0 = time.time()
  r = subprocess.run(
      [sys.executable, '-m', 'gpipe_lingvo.distribute.launch',
       f'--workers={workers}', f'--grace_s={grace_s}', '--kill_after_s=1',
       f'--program={program}', '--', *worker_args],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  pids = [int(l.split()[4]) for l in r.stdout.splitlines()
          if l.startswith('launch: worker') and ' pid ' in l]
  return r, time.time() - t0, pids


def _AssertEnded(pids):
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def testFreePortsAndTfConfig():
  ports = launch.FreePorts(3)
  assert len(set(ports)) == 3
  config = json.loads(launch.TfConfig(ports, 2))
  assert config == {'cluster': {'worker': [f'127.0.0.1:{p}' for p in ports]},
                    'task': {'type': 'worker', 'index': 2}}


def testAllWorkersSucceed(tmp_path):
  r, _, pids = _Launch(tmp_path, workers=3)
  assert r.returncode == 0, r.stdout
  for i in range(3):
    assert f'[w{i}] task {i} of 3' in r.stdout
  assert 'no authentication' in r.stdout and 'all interfaces' in r.stdout
  _AssertEnded(pids)


@pytest.mark.parametrize('extra', [(), ('ignore_term',)])
def testFailingWorkerEndsAllWorkers(tmp_path, extra):
  r, seconds, pids = _Launch(tmp_path, 'fail', *extra)
  assert r.returncode == 3, r.stdout
  assert 'launch: worker 1 ended with status 3' in r.stdout
  assert 'launch: stopping the remaining workers' in r.stdout
  # Worker 0 is stopped after the 1 s grace: by SIGTERM, or by SIGKILL 1 s
  # later if it ignores SIGTERM.
  assert seconds < 15
  signal_number = 9 if extra else 15
  assert f'launch: worker 0 ended with status -{signal_number}' in r.stdout
  _AssertEnded(pids)


def testTrainerRejectsTfConfigThatDoesNotFitBeforeAnyStep(
    tmp_path):
  config = json.dumps({'cluster': {'worker': ['127.0.0.1:1', '127.0.0.1:2',
                                              '127.0.0.1:3']},
                       'task': {'type': 'worker', 'index': 0}})
  logdir = tmp_path / 'run'
  r = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'trainer.py'),
       '--model=digits.ConvNetPipelined', f'--logdir={logdir}',
       '--mode=train'], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CONFIG=config))
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == (
      'ERROR: train.batch_size=64 does not divide into num_replicas=3 equal '
      'replica batches; use a multiple of 3.')
  assert 'Traceback' not in r.stderr
  assert not logdir.exists()
