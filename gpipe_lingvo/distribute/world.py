"""The world a training run lives in: workers, replicas, stages, batches.

Built from the model params and the standard `TF_CONFIG` (or a TPU
address) before TensorFlow connects to anything, so that a cluster that does
not match the params fails with one line before the first step. Pure Python.

Each CPU/GPU worker process runs one data-parallel replica: the whole
K-stage pipeline on its own local devices. The global batch
(`train.batch_size`) is split evenly over the R replicas, and each replica
splits its share into M micro-batches.
"""
import dataclasses
import json
import math
from typing import List, Optional

from gpipe_lingvo import devices
from gpipe_lingvo import errors

# Jobs of TF_CONFIG a training run can be part of; the chief (if any) is
# worker 0, as in tf.distribute.
_TRAINING_JOBS = ('chief', 'worker')


class WorldError(errors.UserError, ValueError):
  """The cluster, the flags and the params do not fit together."""


@dataclasses.dataclass(frozen=True)
class Cluster:
  """The parsed TF_CONFIG: job name -> addresses, and this task."""
  jobs: dict
  task_type: str
  task_index: int

  @property
  def workers(self):
    """Addresses in replica order: the chief first, then the workers."""
    return [a for job in _TRAINING_JOBS for a in self.jobs.get(job, [])]

  @property
  def worker_index(self):
    offset = len(self.jobs.get('chief', [])) if self.task_type == 'worker' else 0
    return offset + self.task_index


def ParseTfConfig(text: str) -> Optional[Cluster]:
  """Parses TF_CONFIG text; None if empty. Raises WorldError if invalid."""
  if not text or not text.strip():
    return None
  try:
    config = json.loads(text)
  except json.JSONDecodeError as e:
    raise WorldError(f'TF_CONFIG is not valid JSON ({e}).') from None
  if not isinstance(config, dict):
    raise WorldError('TF_CONFIG must be a JSON object with "cluster" and '
                     '"task".')
  cluster, task = config.get('cluster'), config.get('task')
  if not isinstance(cluster, dict) or not cluster:
    raise WorldError('TF_CONFIG has no "cluster" (job name -> list of '
                     'host:port).')
  if not isinstance(task, dict) or 'type' not in task or 'index' not in task:
    raise WorldError('TF_CONFIG has no "task" {"type": ..., "index": ...}.')
  unknown = sorted(set(cluster) - set(_TRAINING_JOBS))
  if unknown:
    raise WorldError(
        f'TF_CONFIG cluster has job(s) {unknown}; training runs only as '
        f'{list(_TRAINING_JOBS)} (evaluate with --mode=eval in a process '
        'of its own, without TF_CONFIG).')
  for job, addresses in cluster.items():
    if (not isinstance(addresses, list) or not addresses or
        not all(isinstance(a, str) and ':' in a for a in addresses)):
      raise WorldError(f'TF_CONFIG cluster["{job}"] must be a non-empty '
                       f'list of "host:port", got {addresses!r}.')
  if len(cluster.get('chief', [])) > 1:
    raise WorldError(f'TF_CONFIG names {len(cluster["chief"])} chiefs; at '
                     'most one.')
  task_type, index = task['type'], task['index']
  if task_type not in cluster:
    raise WorldError(f'TF_CONFIG task type {task_type!r} is not a job of '
                     f'its cluster {sorted(cluster)}.')
  if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
    raise WorldError(
        f'TF_CONFIG task index {index!r} is out of range: job {task_type!r} '
        f'has {len(cluster[task_type])} task(s), indices 0..'
        f'{len(cluster[task_type]) - 1}.')
  return Cluster(jobs={k: list(v) for k, v in cluster.items()},
                 task_type=task_type, task_index=index)


@dataclasses.dataclass(frozen=True)
class World:
  """What this process runs and with whom (printed by the trainer)."""
  num_workers: int = 1
  worker_index: int = 0
  num_replicas: int = 1
  num_stages: int = 1
  devices_per_stage: int = 1
  device_type: str = ''
  global_batch: int = 0
  num_micro_batches: int = 1
  cluster: Optional[Cluster] = None
  tpu: str = ''
  placement: str = 'device_scopes'

  @property
  def is_chief(self):
    return self.worker_index == 0

  @property
  def is_multi_worker(self):
    return self.cluster is not None and self.num_workers > 1

  @property
  def per_replica_batch(self):
    return self.global_batch // self.num_replicas

  @property
  def micro_batch_size(self):
    return self.per_replica_batch // self.num_micro_batches

  @property
  def task_name(self):
    if self.cluster is None:
      return 'local'
    return f'/job:{self.cluster.task_type}/task:{self.cluster.task_index}'

  def Describe(self) -> List[str]:
    """The lines the trainer prints at start."""
    where = self.device_type or 'default device'
    role = 'chief' if self.is_chief else 'worker'
    head = (f'world: {self.num_workers} worker(s), this is {self.task_name} '
            f'({role}, replica {self.worker_index})')
    if self.tpu:
      head = f'world: TPU {self.tpu}, {self.num_workers} host(s)'
    lines = [
        head,
        f'  replicas R={self.num_replicas}, stages K={self.num_stages} x '
        f'{self.devices_per_stage} {where} device(s) per stage',
        f'  batch: global {self.global_batch} = {self.num_replicas} x '
        f'per-replica {self.per_replica_batch} = {self.num_replicas} x '
        f'{self.num_micro_batches} micro-batches of {self.micro_batch_size}',
    ]
    if self.placement == 'logical_cores':
      lines.append(
          '  placement: stages on logical cores (XLA sharding annotations), '
          'one XLA program per replica step' +
          ('' if self.tpu else f' on one {where} device'))
    return lines


def _Pipeline(task_params):
  """(owner, topology) of the task's pipelined network, or (None, None)."""
  found = devices.FindTopologies(task_params)
  if not found:
    return None, None
  for owner, topo in found:
    name = dict(owner.IterParams()).get('name') or 'network'
    devices.CheckTopology(topo, devices.NumStages(owner), f'{name}.topology')
  replicas = {t.num_replicas for _, t in found}
  if len(replicas) > 1:
    raise WorldError(f'The pipelined layers declare different '
                     f'topology.num_replicas {sorted(replicas)}; give them '
                     'one value.')
  return found[0]


def _Replicas(topo, num_workers, tpu):
  """R: declared, or one per worker (CPU/GPU) / from the slice (TPU)."""
  declared = topo.num_replicas if topo is not None else 0
  if tpu:
    if declared:
      return declared
    if topo is not None and topo.tpu_slice_shape:
      comp = list(topo.tpu_computation_shape) or [1, 1, 1, 1]
      return math.prod(s // c for s, c in zip(topo.tpu_slice_shape, comp))
    return 0  # Known once the slice is (tpu.BuildDeviceAssignment).
  if declared and declared != num_workers:
    raise WorldError(
        f'topology.num_replicas={declared} but {num_workers} worker '
        f'process(es) run ({"TF_CONFIG" if num_workers > 1 else "no TF_CONFIG"}'
        f'); each worker runs one replica: start {declared} workers or set '
        'topology.num_replicas = 0.')
  return num_workers


def CheckBatch(world: 'World') -> None:
  """The global batch must split into R replicas of M micro-batches."""
  if world.global_batch % world.num_replicas:
    raise WorldError(
        f'train.batch_size={world.global_batch} does not divide into '
        f'num_replicas={world.num_replicas} equal replica batches; use a '
        f'multiple of {world.num_replicas}.')
  if world.per_replica_batch % world.num_micro_batches:
    raise WorldError(
        f'The per-replica batch {world.per_replica_batch} (train.batch_size='
        f'{world.global_batch} / {world.num_replicas} replicas) does not '
        f'divide into num_micro_batches={world.num_micro_batches}; use a '
        f'global batch that is a multiple of '
        f'{world.num_replicas * world.num_micro_batches}.')


def FromParams(model_params, tf_config: str = '', tpu: str = '') -> World:
  """The world of a run of model_params; raises WorldError if they clash."""
  cluster = ParseTfConfig(tf_config)
  if cluster is not None and tpu:
    raise WorldError('Both TF_CONFIG and --tpu are set; a TPU slice is '
                     'addressed by --tpu alone: unset TF_CONFIG.')
  owner, topo = _Pipeline(model_params.task)
  device_type = topo.device_type if topo is not None else ''
  if tpu and device_type != 'tpu':
    raise WorldError(f'--tpu={tpu} is set but topology.device_type is '
                     f'{device_type or "unset (no pipelined network)"!r}; set '
                     "task.network.topology.device_type = 'tpu'.")
  if device_type == 'tpu' and not tpu:
    raise WorldError("topology.device_type is 'tpu' but --tpu is not set; "
                     'pass --tpu=<TPU name or grpc://address>.')
  num_workers = len(cluster.workers) if cluster is not None else 1
  placement = devices.Placement(topo) if topo is not None else 'device_scopes'
  if placement == 'logical_cores' and not tpu and num_workers > 1:
    raise WorldError(
        "topology.placement = 'logical_cores' runs the step as one XLA "
        'program on one device (a rehearsal of the TPU path); it does not '
        "join CPU/GPU workers: use 'device_scopes' (or '') with TF_CONFIG.")
  world = World(
      num_workers=num_workers,
      worker_index=cluster.worker_index if cluster is not None else 0,
      num_replicas=_Replicas(topo, num_workers, tpu),
      num_stages=devices.NumStages(owner) if owner is not None else 1,
      devices_per_stage=topo.devices_per_stage if topo is not None else 1,
      device_type=device_type,
      global_batch=int(model_params.train.batch_size),
      num_micro_batches=(dict(owner.IterParams()).get('num_micro_batches', 1)
                         if owner is not None else 1),
      cluster=cluster, tpu=tpu, placement=placement)
  if world.num_replicas:
    CheckBatch(world)
  return world
