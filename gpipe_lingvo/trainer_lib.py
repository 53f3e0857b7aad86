"""The generic trainer: train, eval, train_and_eval, summary and check modes.

Used by trainer.py (flags) and by tests directly. Writes to the logdir:
  params.txt          the exact params of the run (Params.ToText)
  ckpt/ckpt-N.*       checkpoints (tf.train.CheckpointManager)
  train/, eval_*/     TensorBoard scalars
  metrics.jsonl       one JSON line per evaluation: step, split, metrics
"""
import json
import os
import tempfile
import time

from absl import logging
import numpy as np
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import checkpoints
from gpipe_lingvo import context
from gpipe_lingvo import init_from_checkpoint
from gpipe_lingvo import metrics as metrics_lib
from gpipe_lingvo.pipeline import check as check_lib

MODES = ('train', 'eval', 'train_and_eval', 'summary', 'check')


class TrainerError(RuntimeError):
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


class Trainer:
  """Builds a model from its params and runs it."""

  def __init__(self, model_params, logdir, print_fn=print):
    self.params = model_params
    self.logdir = logdir
    self._print = print_fn
    self._task = None
    self._writers = {}

  # -- construction ------------------------------------------------------------

  @property
  def task(self):
    if self._task is None:
      self._task = self.params.task.Instantiate()
    return self._task

  def _Input(self, split):
    p = self.params.Get(split).Copy()
    return p.Instantiate()

  def _Writer(self, name):
    if name not in self._writers:
      self._writers[name] = tf.summary.create_file_writer(
          os.path.join(self.logdir, name))
    return self._writers[name]

  def _Checkpointer(self):
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
    """Trains to max_steps (resuming from the logdir); returns last metrics."""
    CheckLogdirWritable(self.logdir)
    tp = self.params.task.train
    max_steps = int(max_steps if max_steps is not None else tp.max_steps)
    ckpt = self._Checkpointer()
    restored = ckpt.RestoreLatest()
    step = int(self._global_step.numpy())
    if restored:
      self._print(f'Resumed from {restored} at step {step}.')
    self.WriteParams()
    task = self.task
    train_input = self._Input('train')
    # Missing data fails here, before any step, for the evaluated splits too.
    train_input.CheckData()
    for split in evaluate_splits:
      self._Input(split).CheckData()
    init = dict(self.params.task.IterParams()).get('init_from_checkpoint')
    if not restored and init is not None and init.checkpoint_path:
      # Fresh run only: a resumed run continues from its own checkpoint.
      init_from_checkpoint.Apply(task, init, self._print)
    batch_size = train_input.params.batch_size
    it = iter(train_input.GetDataset())

    @tf.function
    def TrainStep(batch):
      sums, lr, norm = task.TrainStep(batch, self._global_step)
      self._global_step.assign_add(1)
      return sums, lr, norm

    writer = self._Writer('train')
    acc = metrics_lib.MetricAccumulator()
    last = {}
    t_start, steps_done = time.time(), 0
    t_window, ex_window = time.time(), 0
    while step < max_steps:
      batch = next(it)
      sums, lr, norm = TrainStep(batch)
      step += 1
      steps_done += 1
      ex_window += batch_size
      sums = {k: v.numpy() for k, v in sums.items()}
      if not np.isfinite(sums['total_loss']):
        raise TrainerError(
            f'Loss became {sums["total_loss"]} at step {step}; lower the '
            'learning rate (task.train.lr_schedule.learning_rate). The last '
            f'good checkpoint is in {ckpt.directory}.')
      acc.Add(sums)
      if step % max(1, tp.log_interval_steps) == 0 or step == max_steps:
        res = acc.Result()
        now = time.time()
        eps = ex_window / max(now - t_window, 1e-9)
        per_step = (now - t_start) / steps_done
        eta = per_step * (max_steps - step)
        self._print(f'step {step:6d}  loss {res["loss"]:.4f}  '
                    f'accuracy {res.get("accuracy", float("nan")):.4f}  '
                    f'lr {float(lr):.4g}  {eps:8.1f} examples/s  '
                    f'ETA {_FormatDuration(eta)}')
        with writer.as_default(step=step):
          for k, v in res.items():
            if k != 'num_examples':
              tf.summary.scalar(k, v)
          tf.summary.scalar('learning_rate', float(lr))
          tf.summary.scalar('grad_norm', float(norm))
          tf.summary.scalar('examples_per_second', eps)
        writer.flush()
        last = res
        acc = metrics_lib.MetricAccumulator()
        t_window, ex_window = now, 0
      if step % max(1, tp.save_interval_steps) == 0 and step < max_steps:
        self._print(f'Saved checkpoint {ckpt.Save(step)}')
      if (evaluate_splits and tp.eval_interval_steps and
          step % tp.eval_interval_steps == 0 and step < max_steps):
        for split in evaluate_splits:
          self.Evaluate(split, step=step)
    if steps_done or not ckpt.manager.latest_checkpoint:
      self._print(f'Saved checkpoint {ckpt.Save(step)}')
    results = {'train': last}
    for split in evaluate_splits:
      results[split] = self.Evaluate(split, step=step)
    return results

  # -- evaluation --------------------------------------------------------------

  def Evaluate(self, split='test', step=None, checkpoint_path=None):
    """Evaluates over the whole split; appends a line to metrics.jsonl."""
    CheckLogdirWritable(self.logdir)
    task = self.task
    if step is None:
      ckpt = self._Checkpointer()
      path = (ckpt.Restore(checkpoint_path) if checkpoint_path
              else ckpt.RestoreLatest())
      if path is None:
        raise TrainerError(f'No checkpoint in {ckpt.directory} to evaluate; '
                           'train first or pass --checkpoint.')
      step = int(self._global_step.numpy())
      self._print(f'Evaluating {path} (step {step}) on {split}.')
    gen = self._Input(split)

    @tf.function
    def EvalStep(batch):
      return task.EvalStep(batch)

    acc = metrics_lib.MetricAccumulator()
    for batch in gen.GetDataset():
      acc.Add({k: v.numpy() for k, v in EvalStep(batch).items()})
    res = acc.Result()
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
      with base_layer.ZeroInitForCounting():
        task = self.params.task.Instantiate()
    net = task.network
    image_shape = self._Input('train').ImageShape()
    rows = []
    cells = getattr(net, 'cells', None)
    shape = tf.TensorShape([None] + list(image_shape))
    if cells:
      structure = tf.TensorSpec(shape, tf.float32)
      for cell in cells:
        structure = _TraceShape(cell, structure)
        rows.append((cell.path, _ShapeText(structure), cell.NumParams()))
    else:
      rows.append((net.path, _ShapeText(_TraceShape(
          net, tf.TensorSpec(shape, tf.float32))), net.NumParams()))
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
    train_input = self._Input('train')
    train_input.CheckData()
    batch = next(iter(train_input.GetDataset()))
    try:
      result = check_lib.CompareWithUnpipelined(
          self.task.network, *self.task.NetworkInputs(batch))
    except ValueError as e:
      raise TrainerError(f'--mode=check: {e}') from e
    for line in result.Lines():
      self._print(line)
    return result.ok


def _TraceShape(layer, spec_structure):
  """Output TensorSpec nest of layer.FProp for an input spec nest (no data)."""
  with context.Scope(training=False):
    fn = tf.function(layer.FProp, autograph=False)
    out = fn.get_concrete_function(spec_structure).structured_outputs
  return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), out)


def _ShapeText(structure):
  shapes = [str(s.shape.as_list()) for s in tf.nest.flatten(structure)]
  return shapes[0] if len(shapes) == 1 else '(' + ', '.join(shapes) + ')'
