"""trainer.py's answer to each user error: one line on stderr, exit status 1,
no traceback, nothing written; --debug shows the traceback.

trainer.py is loaded from its file and its Run() called in this process (a
subprocess per case would cost a TensorFlow import each); the process-level
behaviour (signals, locks, exit codes) is in test_trainer_faults.py.
"""
import importlib.util
import os
import shutil

from absl import flags
import pytest

from gpipe_lingvo import errors
from gpipe_lingvo import trainer_lib
from gpipe_lingvo import model_registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _LoadTrainer():
  spec = importlib.util.spec_from_file_location(
      'trainer_under_test', os.path.join(ROOT, 'trainer.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TRAINER = _LoadTrainer()


def _Cli(capsys, *args):
  """(exit status, stdout, stderr) of `trainer.py ARGS`."""
  fl = TRAINER.FLAGS
  fl.unparse_flags()
  fl(['trainer.py', *args])
  try:
    rc = TRAINER.Run([])
  finally:
    fl.unparse_flags()
  out, err = capsys.readouterr()
  return rc, out, err


def _OneErrorLine(err, *words):
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('ERROR: '), err
  assert 'Traceback' not in err
  for w in words:
    assert w in lines[0], (w, lines[0])
  return lines[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A digits logdir with ckpt-2 and ckpt-4."""
  logdir = tmp_path_factory.mktemp('trained')
  p = model_registry.GetParams('digits.ConvNet')
  p.task.train.Set(save_interval_steps=2, log_interval_steps=100)
  trainer_lib.Trainer(p, str(logdir), print_fn=lambda _: None).Train(
      max_steps=4)
  return logdir


@pytest.mark.parametrize('override,words', [
    ('task.network.num_micro_batches = 5',
     ['num_micro_batches=5 does not divide the training batch size 64']),
    ('task.network.num_stages = -1', ['num_stages must be an int >= 1']),
    ('task.network.topology.devices_per_stage = 0',
     ['devices_per_stage must be an int >= 1']),
    ('task.network.parallel_iterations = 0',
     ['parallel_iterations must be an int >= 1']),
    ('task.network.partition = [True, 6]', ["partition must be 'uniform'"]),
    ('task.network.execution = "fast"', ["unknown execution 'fast'",
                                         "'dataflow', 'ticks'"]),
    ('task.train.save_interval_steps = 0',
     ['save_interval_steps must be an int >= 1, got 0']),
])
def testBadEngineAndLoopParamsFailAtStart(tmp_path, capsys, override,
                                                  words):
  rc, _, err = _Cli(capsys, '--model=digits.ConvNetPipelined',
                    f'--logdir={tmp_path / "log"}', '--mode=train',
                    f'--model_params_override={override}')
  assert rc == 1
  _OneErrorLine(err, *words)
  assert not (tmp_path / 'log').exists()


def testMaxStepsZeroSavesTheInitialVariablesNegativeIsRefused(
    tmp_path, capsys):
  rc, _, err = _Cli(capsys, f'--logdir={tmp_path}', '--mode=train_and_eval',
                    '--max_steps=-5')
  assert rc == 1
  _OneErrorLine(err, 'max_steps must be an int >= 0, got -5', '--mode=eval')
  assert not os.listdir(tmp_path)
  rc, out, _ = _Cli(capsys, f'--logdir={tmp_path}', '--mode=train_and_eval',
                    '--max_steps=0')
  assert rc == 0
  # The world lines come first; then the run's own lines.
  lines = out.splitlines()
  assert lines[0].startswith('world: 1 worker(s)')
  lines = lines[3:]
  assert lines[0] == ('max_steps=0: nothing to train; saving the initial '
                      'variables as ckpt-0.')
  assert lines[1] == f'Saved checkpoint {tmp_path}/ckpt/ckpt-0'
  assert lines[2].startswith('eval test @ step 0: ')
  rc, out, _ = _Cli(capsys, f'--logdir={tmp_path}', '--mode=train',
                    '--max_steps=0')
  assert rc == 0 and out.splitlines()[-1] == (
      'Already at step 0 >= max_steps=0: nothing to train.')


def testCheckpointFlagErrors(trained, capsys):
  ckpt = trained / 'ckpt'
  newest = str(ckpt / 'ckpt-4')
  cases = [
      ((f'--checkpoint={ckpt}/ckpt-3',), ['does not exist', newest]),
      ((f'--checkpoint={ckpt}',), ['is a directory', newest]),
      ((f'--checkpoint={trained}',), ['is a directory', newest]),
      ((f'--checkpoint={newest}.index',), ['pass its prefix', newest]),
      ((f'--checkpoint={newest}', '--mode=train'),
       ['--checkpoint is for --mode=eval', 'init_from_checkpoint']),
  ]
  for args, words in cases:
    rc, _, err = _Cli(capsys, f'--logdir={trained}', '--mode=eval', *args)
    assert rc == 1, args
    _OneErrorLine(err, *words)
  rc, out, _ = _Cli(capsys, f'--logdir={trained}', '--mode=eval',
                    f'--checkpoint={newest}')
  assert rc == 0 and 'eval test @ step 4' in out
  with pytest.raises(flags.IllegalFlagValueError, match='dev|test'):
    TRAINER.FLAGS(['trainer.py', '--eval_split=bogus'])
  TRAINER.FLAGS.unparse_flags()


def testTruncatedAndAllCorruptCheckpoints(trained, tmp_path, capsys):
  logdir = tmp_path / 'log'
  shutil.copytree(trained, logdir)
  for n in (2, 4):
    data = logdir / 'ckpt' / f'ckpt-{n}.data-00000-of-00001'
    data.write_bytes(data.read_bytes()[:100])
  rc, _, err = _Cli(capsys, f'--logdir={logdir}', '--mode=eval',
                    f'--checkpoint={logdir}/ckpt/ckpt-4')
  assert rc == 1
  _OneErrorLine(err, 'Cannot use checkpoint', 'truncated or corrupt',
                'ckpt-2 (the newest there)')
  before = sorted(os.listdir(logdir / 'ckpt'))
  rc, out, err = _Cli(capsys, f'--logdir={logdir}', '--mode=train',
                      '--max_steps=6')
  assert rc == 1
  assert out.count('is unreadable') == 2
  _OneErrorLine(err, 'None of the 2 checkpoints', 'They are left as they are')
  assert sorted(os.listdir(logdir / 'ckpt')) == before


def testDebugShowsTheTraceback(tmp_path, capsys):
  with pytest.raises(errors.ParamsError):
    _Cli(capsys, f'--logdir={tmp_path}', '--mode=train', '--max_steps=-5',
         '--debug')
  rc, _, err = _Cli(capsys, '--model=digits.ConvNetz', f'--logdir={tmp_path}')
  assert rc == 1
  _OneErrorLine(err, 'Did you mean')
