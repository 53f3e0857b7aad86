"""Type and range checks of the engine's params, before anything is built.

A wrong type or range would otherwise surface far from its cause: a
negative num_stages asks TensorFlow for zero devices, parallel_iterations=0
fails inside tf.while_loop at the first step, and booleans pass as ints in
Python (`num_micro_batches = True` is M=1). Each check names the field and
the accepted values. Pure Python: no TensorFlow, no devices.

Fields are looked up by name and skipped when absent, so params that gain
or lose a field (topology variants) need only an entry in the tables.
"""
import ast

from gpipe_lingvo import errors


def _IsInt(v):
  return isinstance(v, int) and not isinstance(v, bool)


def PositiveInt(v):
  return _IsInt(v) and v >= 1


def NonNegativeInt(v):
  return _IsInt(v) and v >= 0


def NonNegativeNumber(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def Budget(v):
  """memory_budget_bytes: one number >= 0 (0: no limit) or a list of
  positive numbers, one per stage."""
  if isinstance(v, (list, tuple)):
    return bool(v) and all(NonNegativeNumber(x) and x > 0 for x in v)
  return NonNegativeNumber(v)


def Text(v):
  return isinstance(v, str)


# field -> (predicate, what the field accepts)
PIPELINE_FIELDS = {
    'num_stages': (PositiveInt, 'an int >= 1'),
    'num_micro_batches': (PositiveInt, 'an int >= 1'),
    'virtual_stages': (PositiveInt, 'an int >= 1'),
    'parallel_iterations': (PositiveInt, 'an int >= 1'),
    'schedule': (Text, 'a schedule name (str)'),
    'execution': (Text, "'dataflow', 'ticks' or 'auto' (str)"),
    'remat': (lambda v: isinstance(v, (str, list, tuple)),
              'a remat policy name (str) or a list of booleans, one per '
              'cell'),
    'batch_norm_mode': (Text, "a batch-norm mode name or '' (str)"),
}
TOPOLOGY_FIELDS = {
    'device_type': (Text, 'a device type name (str)'),
    'devices_per_stage': (PositiveInt, 'an int >= 1'),
    'num_logical_devices': (NonNegativeInt, 'an int >= 0'),
    'gpu_memory_limit_mb': (NonNegativeNumber, 'a number >= 0'),
    'intra_op_threads': (NonNegativeInt, 'an int >= 0'),
    'inter_op_threads': (NonNegativeInt, 'an int >= 0'),
    'memory_budget_bytes': (Budget, 'bytes per device: a number >= 0 (0: no '
                            'limit) or a list of numbers > 0, one per stage'),
    'placement': (Text, "a placement name or '' (str)"),
}


def _CheckTable(params, table, where):
  values = dict(params.IterParams())
  for name, (ok, accepts) in table.items():
    if name in values and not ok(values[name]):
      raise errors.ParamsError(
          f'{where}.{name} must be {accepts}, got {values[name]!r}.')


# Fields the trainer resolves when they are 'auto' (planning/auto.py).
AUTO = 'auto'
AUTO_FIELDS = ('num_stages', 'num_micro_batches', 'schedule', 'virtual_stages',
               'remat', 'partition', 'execution')


def _CheckNotAuto(params, where):
  values = dict(params.IterParams())
  # execution 'auto' the runtime resolves itself (executor.ChooseExecution).
  for name in [f for f in AUTO_FIELDS if f != 'execution']:
    if values.get(name) == AUTO:
      raise errors.ParamsError(
          f"{where}.{name} is 'auto', which the trainer resolves at start "
          '(trainer.py, or planning.auto.Resolve(model_params, ...) before '
          'Instantiate()); set a value to build the network directly.')


def ParseList(value):
  """A list written as text (overrides set str fields as text), else the
  value as it is."""
  if isinstance(value, str) and value.strip().startswith(('[', '(')):
    try:
      return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      return value
  return value


def CellRemat(remat, num_cells, where='network'):
  """Per cell, whether it is recomputed in the backward: the flags of a
  per-cell `remat` list, or None for a policy name (whole micro-batches).
  Raises ParamsError naming the field if the list is not one boolean per
  cell."""
  value = ParseList(remat)
  if isinstance(value, str):
    return None
  if (not isinstance(value, (list, tuple)) or
      not all(isinstance(b, bool) for b in value)):
    raise errors.ParamsError(
        f'{where}.remat must be a policy name or a list of booleans (True: '
        f'recompute that cell in the backward), got {remat!r}.')
  if len(value) != num_cells:
    raise errors.ParamsError(
        f'{where}.remat lists {len(value)} flags but the network has '
        f'{num_cells} cells; give one boolean per cell.')
  return [bool(b) for b in value]


def _CheckPartition(spec, where):
  """'uniform', or a list (or its text) of positive int cell counts."""
  if isinstance(spec, str) and spec.strip().startswith(('[', '(')):
    try:
      spec = ast.literal_eval(spec)
    except (ValueError, SyntaxError):
      raise errors.ParamsError(
          f'{where}.partition {spec!r} is not a list of ints.') from None
  if isinstance(spec, str):
    return  # The name is checked where partitions are cut.
  if (not isinstance(spec, (list, tuple)) or
      not all(PositiveInt(c) for c in spec)):
    raise errors.ParamsError(
        f"{where}.partition must be 'uniform' or a list of ints >= 1 (cells "
        f'per stage), got {spec!r}.')


def CheckPipelineParams(p, where='network'):
  """Raises ParamsError naming the first engine field of `p` (the params of
  a PipelinedNetwork) whose type or range is wrong."""
  cells = p.cells
  if not isinstance(cells, (list, tuple)) or not all(
      hasattr(c, 'Instantiate') for c in cells):
    raise errors.ParamsError(
        f'{where}.cells must be a list of layer params, got {cells!r}.')
  _CheckNotAuto(p, where)
  _CheckTable(p, PIPELINE_FIELDS, where)
  _CheckPartition(p.partition, where)
  CellRemat(p.remat, len(cells), where)
  shape = dict(p.IterParams()).get('input_shape')
  if shape and PositiveInt(p.num_micro_batches):
    MicroBatchSize(int(shape[0]), p.num_micro_batches, where,
                   f'the input_shape batch {int(shape[0])}')
  topology = dict(p.IterParams()).get('topology')
  if topology is not None:
    _CheckTable(topology, TOPOLOGY_FIELDS, f'{where}.topology')


def CheckBatchSplits(batch_size, num_micro_batches, num_replicas=1,
                     where='network'):
  """The global batch must split into replicas, and each replica's batch
  into num_micro_batches micro-batches. Returns the micro-batch size."""
  if not PositiveInt(batch_size):
    raise errors.ParamsError(
        f'The training batch size must be an int >= 1, got {batch_size!r}.')
  if batch_size % num_replicas:
    raise errors.ParamsError(
        f'The training batch size {batch_size} does not split into '
        f'{num_replicas} replicas; use a multiple of {num_replicas}.')
  per_replica = batch_size // num_replicas
  of = (f'the per-replica batch size {per_replica}' if num_replicas > 1
        else f'the training batch size {batch_size}')
  return MicroBatchSize(
      per_replica, num_micro_batches, where, of,
      f'a batch size that is a multiple of '
      f'{num_micro_batches * num_replicas} (train.batch_size)')


def MicroBatchSize(batch_size: int, num_micro_batches: int,
                   where: str = 'network', of: str = '', fix: str = '') -> int:
  """The one rule of micro-batches: a batch splits into num_micro_batches
  equal ones (the trainer's batch at start, a network's input_shape at
  Instantiate(), a step's input when it is built). Returns their size."""
  if batch_size % num_micro_batches:
    raise errors.ParamsError(
        f'{where}.num_micro_batches={num_micro_batches} does not divide '
        f'{of or f"the batch size {batch_size}"}; use a num_micro_batches '
        f'that divides {batch_size}, or '
        f'{fix or f"a batch size that is a multiple of {num_micro_batches}"}.')
  return batch_size // num_micro_batches
