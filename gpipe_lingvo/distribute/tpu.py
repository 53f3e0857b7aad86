"""TPU slices: device assignment from the topology params, stage -> cores.

A replica spans `tpu_computation_shape`, a block of the slice's mesh holding
K x devices_per_stage logical cores; stage k holds logical cores
[k * devices_per_stage, (k + 1) * devices_per_stage) of every replica and
runs on the first of them.
TensorFlow's DeviceAssignment.build orders a replica's cores so that
consecutive logical cores are neighbours in the mesh, so consecutive stages
land on neighbouring cores.

Everything here but Connect(), MakeStrategy() and Start() is arithmetic on a
tf.tpu.experimental.Topology, which can be built from a mesh shape and
device coordinates without hardware: that is how it is tested. Inside the
step, stage computations are pinned to their logical cores by the
pipeline's placement (pipeline/placement.py, LogicalCores: XLA sharding
annotations), and the step runs through replicated_step.py. No TPU run has
been made.
"""
import dataclasses
from typing import List

import numpy as np
import tensorflow as tf

from gpipe_lingvo import devices
from gpipe_lingvo.distribute import replicated_step
from gpipe_lingvo.distribute import world as world_lib


def StageLogicalCores(num_stages: int, devices_per_stage: int
                      ) -> List[List[int]]:
  """[[logical core ids of stage k] for k in range(K)]; the pipeline's
  LogicalCores placement runs stage k on the first of them."""
  return devices.StageIndices(num_stages, devices_per_stage)


def BuildDeviceAssignment(topology: tf.tpu.experimental.Topology, topo,
                          num_stages: int, num_replicas: int = 0
                          ) -> tf.tpu.experimental.DeviceAssignment:
  """DeviceAssignment of R replicas of K stages on `topology` (a slice).

  num_replicas: 0 = topo.num_replicas, or as many as the slice holds.
  Raises devices.DeviceError naming the field if the params do not fit.
  """
  mesh = [int(d) for d in topology.mesh_shape]
  if topo.tpu_slice_shape and list(topo.tpu_slice_shape) != mesh:
    raise devices.DeviceError(
        f'topology.tpu_slice_shape={list(topo.tpu_slice_shape)} but the TPU '
        f'slice has mesh shape {mesh}; set tpu_slice_shape = {mesh} or '
        'connect to the slice the params were written for.')
  comp = list(topo.tpu_computation_shape) or [1] * len(mesh)
  cores = num_stages * topo.devices_per_stage
  replicas = num_replicas or topo.num_replicas
  devices.CheckTpuShapes(mesh, comp, cores, replicas, cores_text=(
      f'num_stages={num_stages} x devices_per_stage={topo.devices_per_stage}'))
  if not replicas:
    replicas = int(np.prod([m // c for m, c in zip(mesh, comp)]))
  return tf.tpu.experimental.DeviceAssignment.build(
      topology, computation_shape=comp, num_replicas=replicas)


@dataclasses.dataclass(frozen=True)
class CorePlace:
  """Where one logical core of one replica is."""
  replica: int
  stage: int
  logical_core: int
  host: str
  tpu_ordinal: int
  coordinates: tuple


def StagePlacement(device_assignment: tf.tpu.experimental.DeviceAssignment,
                   num_stages: int, devices_per_stage: int
                   ) -> List['CorePlace']:
  """Every (replica, stage, logical core) with its host, ordinal and mesh
  coordinates: the table printed at start and checked by the tests."""
  if device_assignment.num_cores_per_replica != num_stages * devices_per_stage:
    raise devices.DeviceError(
        f'The device assignment has {device_assignment.num_cores_per_replica}'
        f' cores per replica but num_stages={num_stages} x '
        f'devices_per_stage={devices_per_stage} needs '
        f'{num_stages * devices_per_stage}.')
  out = []
  for r in range(device_assignment.num_replicas):
    for k, cores in enumerate(StageLogicalCores(num_stages,
                                                devices_per_stage)):
      for c in cores:
        out.append(CorePlace(
            replica=r, stage=k, logical_core=c,
            host=device_assignment.host_device(r, c),
            tpu_ordinal=int(device_assignment.tpu_ordinal(r, c)),
            coordinates=tuple(int(x) for x in
                              device_assignment.coordinates(r, c))))
  return out


def Connect(address: str):
  """Resolves and initialises the TPU slice; returns (resolver, topology).

  Needs a TPU: not exercised by the tests.
  """
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
  tf.config.experimental_connect_to_cluster(resolver)
  topology = tf.tpu.experimental.initialize_tpu_system(resolver)
  return resolver, topology


def MakeStrategy(resolver, device_assignment):
  """TPUStrategy whose replicas span the K stages' logical cores.

  Needs a TPU: not exercised by the tests.
  """
  # MPMD partitioning: per-core (maximal) shardings pin the stages; SPMD
  # mode refuses them.
  return tf.distribute.TPUStrategy(
      resolver, experimental_device_assignment=device_assignment,
      experimental_spmd_xla_partitioning=False)


def Start(world: world_lib.World, model_params, print_fn=print):
  """Connects to the slice, checks it against the params, prints the world
  and where each stage's cores are, and returns the trainer hooks that run
  the whole step on the slice (replicated_step.ReplicatedStep on a
  TPUStrategy). Says first that this path has never run on a TPU."""
  print_fn(replicated_step.UNTESTED_ON_TPU)
  found = devices.FindTopologies(model_params.task)
  owner, topo = found[0]
  k = devices.NumStages(owner)
  resolver, topology = Connect(world.tpu)
  assignment = BuildDeviceAssignment(topology, topo, k, world.num_replicas)
  world = dataclasses.replace(world, num_replicas=assignment.num_replicas,
                              num_workers=int(topology.num_tasks))
  world_lib.CheckBatch(world)
  for line in world.Describe():
    print_fn(line)
  for place in StagePlacement(assignment, k, topo.devices_per_stage):
    print_fn(f'  replica {place.replica} stage {place.stage} logical core '
             f'{place.logical_core}: {place.host} TPU:{place.tpu_ordinal} '
             f'at {list(place.coordinates)}')
  return replicated_step.ReplicatedStep(world,
                                        MakeStrategy(resolver, assignment))
