"""Checks of a run's params that need no devices and write nothing.

trainer.py calls CheckRun before it configures devices (a negative stage
count would otherwise reach TensorFlow as a request for zero devices), and
Trainer.Train calls it again before it writes anything, so that a bad value
is one line at start rather than a traceback at the first step.
"""
from gpipe_lingvo import errors
from gpipe_lingvo import hyperparams
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.pipeline import pipelined_network

# task.train fields -> (predicate, what they accept, why)
TRAIN_FIELDS = {
    'save_interval_steps': (
        params_check.PositiveInt, 'an int >= 1',
        'a checkpoint every N steps; the last step is always saved, so for '
        'checkpoints only at the end set it to max_steps'),
    'log_interval_steps': (params_check.PositiveInt, 'an int >= 1', ''),
    'eval_interval_steps': (params_check.NonNegativeInt, 'an int >= 0',
                            '0 evaluates only at the end'),
    'keep_checkpoint_max': (params_check.PositiveInt, 'an int >= 1', ''),
}


def FindPipelines(params, where='task'):
  """[(dotted path, params)] of every PipelinedNetwork in a params tree."""
  found = []
  if (isinstance(params, hyperparams.InstantiableParams) and
      issubclass(params.cls, pipelined_network.PipelinedNetwork)):
    found.append((where, params))
  for key, value in params.IterParams():
    values = value if isinstance(value, (list, tuple)) else [value]
    for i, v in enumerate(values):
      if isinstance(v, hyperparams.Params):
        sub = f'{where}.{key}' + (f'[{i}]' if v is not value else '')
        found += FindPipelines(v, sub)
  return found


def CheckTrainLoop(train_params, max_steps):
  """task.train's intervals, and the number of steps to train to."""
  if not params_check.NonNegativeInt(max_steps):
    raise errors.ParamsError(
        f'max_steps must be an int >= 0, got {max_steps!r} (0 trains '
        'nothing and saves the initial variables as ckpt-0). To evaluate a '
        'checkpoint use --mode=eval.')
  values = dict(train_params.IterParams())
  for name, (ok, accepts, why) in TRAIN_FIELDS.items():
    if name in values and not ok(values[name]):
      raise errors.ParamsError(
          f'task.train.{name} must be {accepts}, got {values[name]!r}'
          + (f' ({why}).' if why else '.'))


def CheckRun(model_params, max_steps=None, num_replicas=1):
  """Raises ParamsError for the first invalid value a run would hit.

  max_steps: the steps to train to (None: not a training run, the loop's
  fields are not checked). num_replicas: data-parallel copies the global
  batch is split over before micro-batching.
  """
  task = model_params.task
  pipelines = FindPipelines(task)
  for where, p in pipelines:
    params_check.CheckPipelineParams(p, where)
  if max_steps is None:
    return
  CheckTrainLoop(task.train, max_steps)
  batch_size = model_params.train.batch_size
  for where, p in pipelines:
    params_check.CheckBatchSplits(batch_size, p.num_micro_batches,
                                  num_replicas, where)
