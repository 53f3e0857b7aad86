"""The generic trainer: train, eval, train_and_eval, summary and check modes.

Used by trainer.py (flags) and by tests directly. Writes to the logdir:
  params.txt          the exact params of the run (Params.ToText)
  ckpt/ckpt-N.*       checkpoints (checkpoints.Checkpointer), with the
                      training input's position (input_position)
  train/, eval_*/     TensorBoard scalars
  metrics.jsonl       one JSON line per evaluation: step, split, metrics
  trainer.lock        who holds the logdir (logdir_lock)

Checkpoint, input-position, lock and signal logic live in checkpoints,
input_position, logdir_lock and stop_signals; this module orchestrates and
prints. Every error a user can fix is an errors.UserError, raised before
anything is written where the cause is known at start.
"""
import json
import os
import tempfile
import time

import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import checkpoints
from gpipe_lingvo import context
from gpipe_lingvo import errors
from gpipe_lingvo import init_from_checkpoint
from gpipe_lingvo import input_position
from gpipe_lingvo import logdir_lock
from gpipe_lingvo import metrics as metrics_lib
from gpipe_lingvo import stop_signals
from gpipe_lingvo import validation
from gpipe_lingvo.distribute import replicas as replicas_lib
from gpipe_lingvo.pipeline import check as check_lib
from gpipe_lingvo.planning import model_plan
from gpipe_lingvo.planning import resolve

MODES = ('train', 'eval', 'train_and_eval', 'summary', 'plan',
         'check')
SPLITS = ('train', 'dev', 'test')
EVAL_SPLITS = ('dev', 'test')  # The train split repeats forever.


class TrainerError(errors.UserError, RuntimeError):
  """A user-facing error: printed without a traceback by trainer.py."""


def CheckLogdirWritable(logdir):
  """Fails early, naming the directory, if the logdir cannot be written."""
  try:
    tf.io.gfile.makedirs(logdir)
    fd, probe = tempfile.mkstemp(prefix='.write_probe_', dir=logdir)
    os.close(fd)
    os.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    raise TrainerError(
        f'Cannot write to logdir {logdir!r} ({type(e).__name__}: {e}). '
        'Pass a writable --logdir.') from e


def _FormatDuration(seconds):
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class StepPeak:
  """The allocator's peak bytes of one training step above the bytes in
  use just before it (tf.config.experimental.get_memory_info): what a
  memory budget must hold, as the plan predicts it. Read wherever the
  allocator keeps statistics (GPU: BFC; CPU: BFC, which trainer.py turns
  on, or oneDNN's allocator where oneDNN is on); None elsewhere. Logical
  CPU devices share the host's allocator: one number for the host. GPUs:
  the largest of theirs."""

  def __init__(self):
    gpus = tf.config.list_logical_devices('GPU')
    self._devices = [f'GPU:{i}' for i in range(len(gpus))] or ['CPU:0']
    try:
      for d in self._devices:
        tf.config.experimental.get_memory_info(d)
    except (ValueError, RuntimeError):  # no statistics on this allocator
      self._devices = []
    self._before = []

  @property
  def available(self) -> bool:
    return bool(self._devices)

  def Start(self):
    """Call right before the step."""
    for d in self._devices:
      tf.config.experimental.reset_memory_stats(d)
    self._before = [tf.config.experimental.get_memory_info(d)['current']
                    for d in self._devices]

  def End(self):
    """Bytes: call once the step's results are read (the step is done)."""
    if not self._devices:
      return None
    return max(tf.config.experimental.get_memory_info(d)['peak'] - b
               for d, b in zip(self._devices, self._before))


class _Progress:
  """Console and TensorBoard lines every log interval: loss, accuracy,
  learning rate, examples/s over the window, ETA from the run's rate."""

  def __init__(self, writer, print_fn, batch_size, max_steps):
    self._writer, self._print = writer, print_fn
    self._batch_size, self._max_steps = batch_size, max_steps
    self._acc = metrics_lib.MetricAccumulator()
    self._t_start = self._t_window = time.time()
    self._steps, self._examples = 0, 0
    self._peak = None
    self.last = {}

  def Add(self, step, sums, lr, norm, log, peak_bytes=None):
    """peak_bytes: the step's allocator peak (StepPeak), or None; the line
    shows the largest of the window's."""
    self._acc.Add(sums)
    self._steps += 1
    self._examples += self._batch_size
    if peak_bytes is not None:
      self._peak = max(self._peak or 0, peak_bytes)
    if not log:
      return
    res = self._acc.Result()
    now = time.time()
    eps = self._examples / max(now - self._t_window, 1e-9)
    eta = (now - self._t_start) / self._steps * (self._max_steps - step)
    self._print(f'step {step:6d}  loss {res["loss"]:.4f}  '
                f'accuracy {res.get("accuracy", float("nan")):.4f}  '
                f'lr {float(lr):.4g}  {eps:8.1f} examples/s  '
                f'ETA {_FormatDuration(eta)}' + (
                    '' if self._peak is None else
                    f'  step peak {self._peak / 2**20:.1f} MiB'))
    with self._writer.as_default(step=step):
      for k, v in res.items():
        if k != 'num_examples':
          tf.summary.scalar(k, v)
      tf.summary.scalar('learning_rate', float(lr))
      tf.summary.scalar('grad_norm', float(norm))
      tf.summary.scalar('examples_per_second', eps)
      if self._peak is not None:
        tf.summary.scalar('step_peak_mib', self._peak / 2**20)
    self._writer.flush()
    self.last = res
    self._peak = None
    self._acc = metrics_lib.MetricAccumulator()
    self._t_window, self._examples = now, 0


class Trainer:
  """Builds a model from its params and runs it."""

  def __init__(self, model_params, logdir, print_fn=print, replicas=None,
               timeline_at_step=0):
    self.params = model_params
    # Data-parallel hooks (gpipe_lingvo.distribute); workers other than the
    # chief get a temporary logdir of their own.
    self.replicas = replicas or replicas_lib.SingleProcess()
    self.logdir = self.replicas.Logdir(logdir)
    self._print = print_fn
    # Step whose measured schedule timeline is drawn (0: none).
    self.timeline_at_step = timeline_at_step
    counts = resolve.PrepareNetworkParams(model_params, logdir)
    if counts is not None:
      print_fn(f'partition: cells per chunk {counts} (the cut --mode=plan '
               'prints)')
    self._task = None
    self._writers = {}

  # -- construction ------------------------------------------------------------

  @property
  def task(self):
    if self._task is None:
      with errors.ParamsErrors(), self.replicas.Scope():
        self._task = self.params.task.Instantiate()
    return self._task

  def _Input(self, split):
    if split not in SPLITS:
      raise TrainerError(f'Unknown split {split!r}; use one of {SPLITS}.')
    with errors.ParamsErrors():
      p = self.params.Get(split).Copy()
      return self.replicas.InputParams(p, split).Instantiate()

  def _CheckInputs(self, splits):
    """Builds the task and the train input, and checks that the data of
    every split is there (cheap: no example is read); returns the input."""
    _ = self.task  # Built now: bad params fail before anything is written.
    train_input = self._Input('train')
    with errors.ParamsErrors():
      for gen in [train_input] + [self._Input(s) for s in splits]:
        gen.CheckData()
        if hasattr(self.task, 'CheckInput'):  # e.g. vocabulary sizes
          self.task.CheckInput(gen)
    return train_input

  def _Writer(self, name):
    if name not in self._writers:
      self._writers[name] = tf.summary.create_file_writer(
          os.path.join(self.logdir, name))
    return self._writers[name]

  def _Checkpointer(self):
    with self.replicas.Scope():
      self.task.BuildOptimizer()
      if not hasattr(self, '_global_step'):
        self._global_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                                        name='global_step')
    return checkpoints.Checkpointer(
        os.path.join(self.logdir, 'ckpt'),
        max_to_keep=self.params.task.train.keep_checkpoint_max,
        task=self.task, global_step=self._global_step)

  def WriteParams(self):
    with tf.io.gfile.GFile(os.path.join(self.logdir, 'params.txt'), 'w') as f:
      f.write(self.params.ToText())

  # -- training ----------------------------------------------------------------

  def Train(self, max_steps=None, evaluate_splits=()):
    """Trains to max_steps (resuming from the logdir); returns last metrics.

    Bad params, missing data and an unusable or foreign checkpoint fail
    before anything is written; the logdir is locked against a second
    trainer; SIGTERM or Ctrl-C saves at the current step and raises
    stop_signals.Stopped; a non-finite step is not applied and raises
    checkpoints.NonFiniteError. A resumed run continues the same training:
    the checkpoint holds the input position too.
    """
    tp = self.params.task.train
    max_steps = tp.max_steps if max_steps is None else max_steps
    validation.CheckRun(self.params, max_steps)
    train_input = self._CheckInputs(evaluate_splits)
    CheckLogdirWritable(self.logdir)
    with logdir_lock.LogdirLock(self.logdir):
      ckpt = self._Checkpointer()
      restored = ckpt.RestoreLatest()
      step = int(self._global_step.numpy())
      if restored:
        self._print(f'Resumed from {restored} at step {step}.')
      position = input_position.TrainInput(train_input, self.replicas,
                                           self._print)
      position.Restore(restored)
      ckpt.Attach('input', position.state)
      init = dict(self.params.task.IterParams()).get('init_from_checkpoint')
      if (not restored and self.replicas.is_chief and init is not None and
          init.checkpoint_path):
        # Fresh run only: a resumed run continues from its own checkpoint.
        init_from_checkpoint.Apply(self.task, init, self._print)
      # Every worker starts from the chief's state (restored or initial).
      self.replicas.SyncState(
          self.params.ToText(),
          replicas_lib.StateVariables(self.task, self._global_step,
                                      position.state_variables),
          self._print)
      step = int(self._global_step.numpy())
      self.WriteParams()
      with stop_signals.StopSignals() as stop:
        self._print(_StartLine(restored, step, max_steps,
                               tp.save_interval_steps, ckpt.directory))
        step, last, stopped = self._TrainLoop(ckpt, position, step, max_steps,
                                              evaluate_splits, stop)
        if checkpoints.CheckpointNumber(ckpt.latest_finite or '') != step:
          self._Save(ckpt, position, step)
      if stopped:
        raise stop.Stopped(step, ckpt.latest_finite)
      results = {'train': last}
      for split in evaluate_splits:
        results[split] = self._EvaluateNow(split, step)
    return results

  def _CompiledTrainStep(self):
    task = self.task

    # No autograph: the task, layers and pipeline write their control flow
    # with tf.cond / tf.while_loop, and converting their code took about
    # 2 s of every start.
    @tf.function(autograph=False)
    def TrainStep(batch):
      sums, lr, norm, finite = self.replicas.TrainStep(task, batch,
                                                       self._global_step)
      applied = tf.reduce_all(tf.stack(list(finite.values())))
      self._global_step.assign_add(tf.cast(applied, tf.int64))
      return sums, lr, norm, finite

    return TrainStep

  def _TrainLoop(self, ckpt, position, step, max_steps, evaluate_splits,
                 stop):
    """Steps until max_steps or a stop signal; returns (step, metrics of
    the last logged window, whether a signal stopped it). Saves and
    evaluates at their intervals. Workers of a multi-worker run stop after
    the same step, once any of them received a signal."""
    tp = self.params.task.train
    train_step = self._CompiledTrainStep()
    it = position.Iterator(step)
    progress = _Progress(self._Writer('train'), self._print,
                         position.generator.params.batch_size, max_steps)
    stopped = False
    peak = StepPeak()
    while step < max_steps and not stopped:
      self.replicas.VoteStop(stop.signum is not None)
      batch = next(it)
      peak.Start()
      if step + 1 == self.timeline_at_step:
        sums, lr, norm, finite = model_plan.ProfiledStep(
            self.params, self.logdir, lambda: train_step(batch), self._print)
      else:
        sums, lr, norm, finite = train_step(batch)
      sums = {k: v.numpy() for k, v in sums.items()}
      step_peak = peak.End()
      stopped = self.replicas.StopAgreed(sums, stop.signum is not None)
      finite = {k: bool(v) for k, v in finite.items()}
      if not all(finite.values()):
        raise ckpt.NonFiniteStep(step + 1, finite, float(sums['total_loss']),
                                 float(norm))
      step += 1
      progress.Add(step, sums, lr, norm,
                   log=step % tp.log_interval_steps == 0 or step == max_steps,
                   peak_bytes=step_peak)
      if step % tp.save_interval_steps == 0 and step < max_steps:
        self._Save(ckpt, position, step)
      if (evaluate_splits and tp.eval_interval_steps and
          step % tp.eval_interval_steps == 0 and step < max_steps):
        for split in evaluate_splits:
          self._EvaluateNow(split, step)
    return step, progress.last, stopped

  def _Save(self, ckpt, position, step):
    """The chief saves; other workers hold the same state and save none."""
    position.Mark(step)
    if self.replicas.is_chief:
      self._print(f'Saved checkpoint {ckpt.Save(step)}')

  # -- evaluation --------------------------------------------------------------

  def Evaluate(self, split='test', step=None, checkpoint_path=None):
    """Evaluates over the whole split; appends a line to metrics.jsonl.

    With step=None, restores checkpoint_path or the newest usable
    checkpoint of the logdir first; with a step, evaluates the current
    variables under that step number.
    """
    if split not in EVAL_SPLITS:
      raise TrainerError(f'Cannot evaluate split {split!r}; use one of '
                         f'{EVAL_SPLITS}.')
    self._CheckInputs((split,))
    CheckLogdirWritable(self.logdir)
    with logdir_lock.LogdirLock(self.logdir, hint=(
        'To evaluate while it trains, pass another --logdir and '
        '--checkpoint=PREFIX.')):
      if step is None:
        ckpt = self._Checkpointer()
        path = (ckpt.Restore(checkpoint_path) if checkpoint_path
                else ckpt.RestoreLatest(for_training=False))
        if path is None:
          raise TrainerError(f'No checkpoint in {ckpt.directory} to '
                             'evaluate; train first or pass --checkpoint.')
        step = int(self._global_step.numpy())
        self._print(f'Evaluating {path} (step {step}) on {split}.')
      return self._EvaluateNow(split, step)

  def _EvaluateNow(self, split, step):
    task = self.task
    gen = self._Input(split)

    @tf.function(autograph=False)
    def EvalStep(batch):
      return task.EvalStep(batch)

    acc = metrics_lib.MetricAccumulator()
    for batch in gen.GetDataset():
      acc.Add({k: v.numpy() for k, v in EvalStep(batch).items()})
    res = acc.Result()
    if hasattr(task, 'DecodeMetrics'):  # e.g. BLEU of decodes
      res.update(task.DecodeMetrics(gen))
    with self._Writer(f'eval_{split}').as_default(step=step):
      for k, v in res.items():
        tf.summary.scalar(k, v)
    self._Writer(f'eval_{split}').flush()
    line = {'step': int(step), 'split': split}
    line.update(res)
    with tf.io.gfile.GFile(os.path.join(self.logdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(line) + '\n')
    shown = '  '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                      for k, v in res.items())
    self._print(f'eval {split} @ step {step}: {shown}')
    return res

  # -- summary -----------------------------------------------------------------

  def Summary(self):
    """Per-cell table (cell, output shape, parameters) and the total.

    Unless the task was already built, a throw-away copy is built with
    zero-initialised variables (base_layer.ZeroInitForCounting): nothing is
    trained, and random initialisation of a 1.8B-parameter model would take
    minutes. It is not kept, so a later Train() starts from real weights.
    """
    task = self._task
    if task is None:
      with base_layer.ZeroInitForCounting(), errors.ParamsErrors():
        task = self.params.task.Instantiate()
    net = task.network
    structure = _NetworkInputSpecs(task, self._Input('train'))
    rows = []
    cells = getattr(net, 'cells', None)
    if cells:
      for cell in cells:
        structure = _TraceShape(cell, structure)
        rows.append((cell.path, _ShapeText(structure), cell.NumParams()))
    else:
      rows.append((net.path, _ShapeText(_TraceShape(net, structure)),
                   net.NumParams()))
    total = task.NumParams()
    width = max(len(r[0]) for r in rows)
    self._print(f'{"cell":<{width}}  {"output shape":<40}  parameters')
    for name, shp, n in rows:
      self._print(f'{name:<{width}}  {shp:<40}  {n:,}')
    self._print(f'total trainable parameters: {total}')
    return total

  # -- check -------------------------------------------------------------------

  def Check(self):
    """Compares the pipelined network with its cells un-pipelined on one
    training batch (pipeline/check.py) and prints the loss and the largest
    relative gradient difference per variable. Returns True if within
    tolerance. Writes nothing."""
    train_input = self._CheckInputs(())
    batch = next(iter(train_input.GetDataset()))
    try:
      result = check_lib.CompareWithUnpipelined(
          self.task.network, *self.task.NetworkInputs(batch))
    except ValueError as e:
      raise TrainerError(f'--mode=check: {e}') from e
    for line in result.Lines():
      self._print(line)
    return result.ok


def _StartLine(restored, step, max_steps, save_interval, directory):
  if restored and step >= max_steps:
    return (f'Already at step {step} >= max_steps={max_steps}: nothing to '
            'train.')
  if step >= max_steps:
    return ('max_steps=0: nothing to train; saving the initial variables as '
            'ckpt-0.')
  return (f'Training from step {step} to {max_steps} (a checkpoint every '
          f'{save_interval} steps in {directory}).')


def _NetworkInputSpecs(task, input_generator):
  """TensorSpec nest of what the network takes from a training batch
  (task.NetworkInputs on the input's BatchSpecs), batch axis unknown."""
  specs = tf.nest.map_structure(
      lambda s: tf.TensorSpec([None] + s.shape[1:].as_list(), s.dtype),
      input_generator.BatchSpecs())
  fn = tf.function(lambda batch: task.NetworkInputs(batch)[0],
                   autograph=False)
  out = fn.get_concrete_function(specs).structured_outputs
  return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), out)


def _TraceShape(layer, spec_structure):
  """Output TensorSpec nest of layer.FProp for an input spec nest (no data)."""
  with context.Scope(training=False):
    fn = tf.function(layer.FProp, autograph=False)
    out = fn.get_concrete_function(spec_structure).structured_outputs
  return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), out)


def _ShapeText(structure):
  shapes = [str(s.shape.as_list()) for s in tf.nest.flatten(structure)]
  return shapes[0] if len(shapes) == 1 else '(' + ', '.join(shapes) + ')'
