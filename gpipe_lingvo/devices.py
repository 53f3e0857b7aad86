"""Device topology: where the pipeline's stages and replicas run.

The topology params are the one place a model declares its hardware, as
Lingvo's cluster params do: the device type, the K stages' devices, the
data-parallel replicas and, for TPU, the slice and the block of cores one
replica spans. CheckTopology validates them (PipelinedNetwork calls it when
it is instantiated, the trainer before TensorFlow starts).

On a CPU-only machine, K stages need K logical CPU devices; TensorFlow can
only create them before it initialises its devices, so the trainer calls
ConfigureFromParams() first thing. On GPUs each stage takes
`devices_per_stage` physical (or logical, memory-limited) GPUs. TPU cores
come from the TPU system (gpipe_lingvo.distribute.tpu), not from here.
"""
import math
from typing import List

import tensorflow as tf

from gpipe_lingvo import errors
from gpipe_lingvo import hyperparams

DEVICE_TYPES = ('cpu', 'gpu', 'tpu')
# How stages are pinned to their devices (pipeline/placement.py).
PLACEMENTS = ('device_scopes', 'logical_cores')


class DeviceError(errors.UserError, ValueError):
  """The topology asks for devices that do not exist or cannot be made."""


def TopologyParams() -> hyperparams.Params:
  """Where a pipelined network runs; one field per line, as in Lingvo."""
  p = hyperparams.Params()
  p.Define('device_type', 'cpu', f'One of {DEVICE_TYPES}.')
  p.Define('devices_per_stage', 1, 'Devices (TPU: logical cores) each '
           'stage uses.')
  p.Define('num_replicas', 0,
           'Data-parallel replicas R, each running the whole K-stage '
           'pipeline on its own devices; gradients are summed over them once '
           'per step. 0: one per worker process (CPU/GPU: the workers '
           'TF_CONFIG names, 1 without it) or, on TPU, as many as the slice '
           'holds. If set, it must match.')
  p.Define('num_logical_devices', 0,
           'CPU: logical devices to create (0: as many as the stages need).')
  p.Define('gpu_memory_limit_mb', 0,
           'GPU: if > 0, split each physical GPU into logical GPUs of this '
           'size (emulates several small devices on one card).')
  p.Define('memory_budget_bytes', 0,
           'Bytes each stage may use on its device (0: no limit), or a '
           'list with one budget per stage; cost partitions respect it and '
           '--mode=plan reports the fit.')
  p.Define('intra_op_threads', 0,
           'Threads per op (0: TensorFlow default). 1 lets stages overlap on '
           'a small CPU.')
  p.Define('inter_op_threads', 1,
           'Ops the host runs at once (0: TensorFlow default, one per '
           'core). 1 runs one op at a time, each on all intra-op threads: '
           "the peak --mode=plan predicts holds (independent ops running "
           'together add their tensors), and on a 2-core CPU it measured '
           'as fast (docs/planner.md).')
  p.Define('placement', '',
           "How each stage is pinned to its devices: 'device_scopes' "
           '(tf.device per stage; cpu, gpu), \'logical_cores\' (XLA sharding '
           'annotations on logical cores; tpu, or on cpu/gpu a test mode '
           'in which the whole step compiles with XLA for one device), or '
           "'' for the device type's own (tpu: logical_cores, else "
           'device_scopes).')
  p.Define('tpu_slice_shape', [],
           'TPU: the mesh shape of the slice as TensorFlow reports it, '
           '[x, y, z, cores per chip] (e.g. [2, 2, 1, 2] for a v3-8). [] '
           'accepts any slice; if set, a different slice is an error at '
           'start.')
  p.Define('tpu_computation_shape', [],
           'TPU: the block of the mesh one replica spans, of the slice\'s '
           'rank, e.g. [1, 1, 1, 2]; its product (the replica\'s logical '
           'cores) must equal num_stages x devices_per_stage. [] means '
           '[1, 1, 1, 1] and fits only a one-core replica.')
  return p


def _Fail(where, field, msg):
  raise DeviceError(f'{where}.{field}: {msg}')


def _IntField(topo, where, field, minimum):
  v = topo.Get(field)
  if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
    _Fail(where, field, f'must be an int >= {minimum}, got {v!r}.')
  return v


def _Shape(topo, where, field):
  v = topo.Get(field)
  if not isinstance(v, (list, tuple)) or not all(
      isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v):
    _Fail(where, field, f'must be a list of positive ints, got {v!r}.')
  return list(v)


def CheckTopology(topo: hyperparams.Params, num_stages: int,
                  where: str = 'topology') -> None:
  """Raises DeviceError naming the field and the numbers if `topo` is bad.

  Pure Python (no device is touched): the counts of devices that exist are
  checked where the devices are made or used.
  """
  if topo.device_type not in DEVICE_TYPES:
    _Fail(where, 'device_type', f'must be one of {DEVICE_TYPES}, got '
          f'{topo.device_type!r}.')
  if not isinstance(num_stages, int) or num_stages < 1:
    raise DeviceError(f'num_stages must be an int >= 1, got {num_stages!r}.')
  dps = _IntField(topo, where, 'devices_per_stage', 1)
  replicas = _IntField(topo, where, 'num_replicas', 0)
  for field in ('num_logical_devices', 'gpu_memory_limit_mb',
                'intra_op_threads', 'inter_op_threads'):
    _IntField(topo, where, field, 0)
  kind = topo.device_type
  if topo.placement not in ('',) + PLACEMENTS:
    _Fail(where, 'placement', f"must be one of {PLACEMENTS} or '' (the "
          f'device type\'s own), got {topo.placement!r}.')
  if kind == 'tpu' and topo.placement == 'device_scopes':
    _Fail(where, 'placement', "'device_scopes' cannot place stages on a "
          'TPU: the TPU step is one XLA program, placed by sharding '
          "annotations; use 'logical_cores' or ''.")
  for field, only in (('num_logical_devices', 'cpu'),
                      ('gpu_memory_limit_mb', 'gpu'),
                      ('tpu_slice_shape', 'tpu'),
                      ('tpu_computation_shape', 'tpu')):
    if topo.Get(field) and kind != only:
      _Fail(where, field, f'applies to device_type {only!r} only, but '
            f'device_type is {kind!r}; unset it.')
  if kind == 'tpu':
    CheckTpuShapes(_Shape(topo, where, 'tpu_slice_shape'),
                   _Shape(topo, where, 'tpu_computation_shape'),
                   num_stages * dps, replicas, where,
                   f'num_stages={num_stages} x devices_per_stage={dps}')


def CheckTpuShapes(slice_shape: List[int], computation_shape: List[int],
                   cores_per_replica: int, num_replicas: int,
                   where: str = 'topology', cores_text: str = None) -> None:
  """Checks a replica's block of cores against the stages and the slice."""
  comp = list(computation_shape) or [1, 1, 1, 1]
  cores_text = cores_text or f'{cores_per_replica} cores per replica'
  if math.prod(comp) != cores_per_replica:
    _Fail(where, 'tpu_computation_shape',
          f'{comp} spans {math.prod(comp)} cores but {cores_text} needs '
          f'{cores_per_replica}; use a shape whose product is '
          f'{cores_per_replica}, e.g. [1, 1, 1, {cores_per_replica}] if a '
          'chip has that many cores.')
  if not slice_shape:
    return
  if len(slice_shape) != len(comp):
    _Fail(where, 'tpu_computation_shape',
          f'{comp} has rank {len(comp)} but tpu_slice_shape={slice_shape} '
          f'has rank {len(slice_shape)}; give both the same rank.')
  too_big = [i for i, (c, s) in enumerate(zip(comp, slice_shape)) if c > s]
  if too_big:
    _Fail(where, 'tpu_computation_shape',
          f'{comp} exceeds tpu_slice_shape={slice_shape} in dimension '
          f'{too_big[0]}.')
  fit = math.prod(s // c for s, c in zip(slice_shape, comp))
  if num_replicas > fit:
    _Fail(where, 'num_replicas',
          f'{num_replicas} replicas of tpu_computation_shape={comp} do not '
          f'fit in tpu_slice_shape={slice_shape}, which holds {fit}.')


def EnsureDevices(device_type, count, gpu_memory_limit_mb=0,
                  intra_op_threads=0, verify=True, inter_op_threads=0):
  """Makes at least `count` logical devices of `device_type` available.

  Raises DeviceError naming the numbers if it cannot (e.g. TensorFlow was
  already initialised with fewer, or there are fewer physical GPUs).
  verify=False configures without counting, which would initialise
  TensorFlow: a multi-worker strategy must be created first (its runtime
  starts as a cluster member), and the pipeline counts its devices when it
  is built.
  """
  if device_type not in ('cpu', 'gpu'):
    raise DeviceError(f'EnsureDevices makes cpu or gpu devices, not '
                      f'{device_type!r} (TPU cores come from the TPU system: '
                      'trainer.py --tpu).')
  if intra_op_threads:
    try:
      tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    except RuntimeError:
      if tf.config.threading.get_intra_op_parallelism_threads() != intra_op_threads:
        raise DeviceError(
            f'intra_op_threads={intra_op_threads} must be set before '
            'TensorFlow initialises; set it first in the process.') from None
  if inter_op_threads:
    try:
      tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
      pass  # Already initialised (a test process): speed and peak only.
  physical = tf.config.list_physical_devices(device_type.upper())
  if not physical:
    raise DeviceError(f'No {device_type.upper()} devices on this machine; '
                      "use topology.device_type = 'cpu'.")
  # list_logical_devices() would initialise TensorFlow's devices, after
  # which they can no longer be split: configure first, count afterwards.
  try:
    if device_type == 'cpu':
      current = tf.config.get_logical_device_configuration(physical[0])
      if not current or len(current) < count:
        tf.config.set_logical_device_configuration(
            physical[0], [tf.config.LogicalDeviceConfiguration()] * count)
    else:
      # With a memory limit every device the pipeline uses has that size,
      # also when there are enough cards (a fixed per-device budget).
      per = LogicalGpusPerCard(len(physical), count, gpu_memory_limit_mb)
      for dev in physical if per else ():
        tf.config.set_logical_device_configuration(
            dev, [tf.config.LogicalDeviceConfiguration(
                memory_limit=gpu_memory_limit_mb)] * per)
  except RuntimeError:
    pass  # Already initialised: fine if there are enough devices (below).
  if not verify:
    return
  have = len(tf.config.list_logical_devices(device_type.upper()))
  if have < count:
    raise DeviceError(
        f'The pipeline needs {count} logical {device_type.upper()} devices '
        f'but TensorFlow is already initialised with {have}. Configure '
        'devices before any TensorFlow op runs (trainer.py does this; in '
        'your own script call gpipe_lingvo.devices.EnsureDevices first).')


def Placement(topology) -> str:
  """The placement of a topology: its own, or its device type's."""
  if topology.placement:
    return topology.placement
  return 'logical_cores' if topology.device_type == 'tpu' else 'device_scopes'


def StageIndices(num_stages: int, devices_per_stage: int
                 ) -> List[List[int]]:
  """[[indices of stage k's devices (or TPU logical cores)] for each k]:
  stage k holds [k * devices_per_stage, (k + 1) * devices_per_stage)."""
  n = devices_per_stage
  return [list(range(k * n, (k + 1) * n)) for k in range(num_stages)]


def StageDeviceGroups(topology, num_stages) -> List[List[str]]:
  """Names of the devices of each stage (StageIndices): local devices of
  the topology's type, logical ones where a CPU split or a GPU memory limit
  made them (TensorFlow numbers the logical GPUs of physical GPU 0 first,
  then those of GPU 1, ...)."""
  kind = topology.device_type.upper()
  return [[f'/device:{kind}:{i}' for i in group] for group in
          StageIndices(num_stages, topology.devices_per_stage)]


def StageDevices(topology, num_stages) -> List[str]:
  """Device name of each stage's first device, where its ops run (the
  engine runs a stage on one device; the rest of its group is reserved)."""
  return [group[0] for group in StageDeviceGroups(topology, num_stages)]


def LogicalGpusPerCard(num_physical: int, count: int,
                       memory_limit_mb: int) -> int:
  """Logical GPUs to make on each physical GPU so that `count` exist: 0
  (use the cards as they are) without a memory limit, else enough cards'
  worth of limit-sized devices. Raises DeviceError if it cannot be done."""
  if not memory_limit_mb:
    if num_physical < count:
      raise DeviceError(
          f'The pipeline needs {count} GPUs but {num_physical} exist; add '
          'GPUs, lower num_stages, or set topology.gpu_memory_limit_mb to '
          'split each GPU into logical ones.')
    return 0
  return -(-count // num_physical)


def FindTopologies(params, out=None):
  """[(owner params, topology params)] of every pipelined layer in params."""
  out = [] if out is None else out
  for key, value in params.IterParams():
    if isinstance(value, hyperparams.Params):
      if key == 'topology' and 'device_type' in dict(value.IterParams()):
        out.append((params, value))
      else:
        FindTopologies(value, out)
    elif isinstance(value, (list, tuple)):
      for v in value:
        if isinstance(v, hyperparams.Params):
          FindTopologies(v, out)
  return out


def NumStages(owner):
  """K of the layer that owns a topology (1 if it declares none)."""
  return dict(owner.IterParams()).get('num_stages', 1) or 1


def ConfigureFromParams(task_params, verify=True):
  """Validates every topology in task_params and creates the CPU/GPU
  devices its pipelined layers need (TPU cores are not created here).
  verify: as in EnsureDevices."""
  for owner, topo in FindTopologies(task_params):
    stages = NumStages(owner)
    name = dict(owner.IterParams()).get('name') or 'network'
    CheckTopology(topo, stages, f'{name}.topology')
    if topo.device_type == 'tpu':
      continue
    # Logical-core placement runs the step as one XLA program on one
    # device; device scopes need a device per stage.
    need = (1 if Placement(topo) == 'logical_cores'
            else stages * topo.devices_per_stage)
    if topo.device_type == 'cpu' and topo.num_logical_devices:
      need = max(need, topo.num_logical_devices)
    EnsureDevices(topo.device_type, need, topo.gpu_memory_limit_mb,
                  topo.intra_op_threads, verify,
                  dict(topo.IterParams()).get('inter_op_threads', 0))
