"""The tf.distribute strategy of a run, from its world (TF_CONFIG) and flags.

TPU: tpu.Start. One process with logical-core placement on a CPU or GPU
(topology.placement = 'logical_cores'): a OneDeviceStrategy and the TPU
path's hooks (replicated_step), the step compiled with XLA.

CPU/GPU workers: a MultiWorkerMirroredStrategy with exactly one local
replica per worker (the pipeline spans the worker's devices; the strategy
only sums). Its collectives run on the worker's host CPU over gRPC (ring
all-reduce) and time out after `timeout_s`; a worker that dies is noticed
sooner, by TensorFlow's coordination service heartbeats (measured on this
machine: about 9 s).

Create the strategy after the logical devices are configured and before any
variable exists: it restarts TensorFlow's runtime as a cluster member.
"""
import tensorflow as tf

from gpipe_lingvo.distribute import replicas as replicas_lib
from gpipe_lingvo.distribute import replicated_step
from gpipe_lingvo.distribute import world as world_lib


def _Resolver(cluster):
  """A resolver that declares no accelerators, so the strategy makes one
  local replica on the host CPU even if the worker has GPUs (with
  TFConfigClusterResolver it would make one replica per visible GPU)."""
  return tf.distribute.cluster_resolver.SimpleClusterResolver(
      tf.train.ClusterSpec(cluster.jobs), task_type=cluster.task_type,
      task_id=cluster.task_index, rpc_layer='grpc', num_accelerators={})


def MultiWorkerStrategy(world: world_lib.World, timeout_s: float
                        ) -> tf.distribute.MultiWorkerMirroredStrategy:
  """MultiWorkerMirroredStrategy for world.cluster; collectives time out."""
  options = tf.distribute.experimental.CommunicationOptions(
      timeout_seconds=float(timeout_s) if timeout_s else None)
  strategy = tf.distribute.MultiWorkerMirroredStrategy(
      cluster_resolver=_Resolver(world.cluster),
      communication_options=options)
  if strategy.num_replicas_in_sync != world.num_replicas:
    raise ValueError(
        f'The strategy has {strategy.num_replicas_in_sync} replicas, the '
        f'world {world.num_replicas}; one replica per worker is expected.')
  return strategy


def Start(world: world_lib.World, timeout_s: float = 600
          ) -> replicas_lib.SingleProcess:
  """The replica hooks of this process: multi-worker if TF_CONFIG names
  several workers; with logical-core placement on a CPU or GPU, the TPU
  path's step (replicated_step) on one device, compiled with XLA; else a
  single process (no strategy, nothing changes). TPU: tpu.Start."""
  if world.is_multi_worker:
    return replicas_lib.MultiWorker(world,
                                    MultiWorkerStrategy(world, timeout_s))
  if world.placement == 'logical_cores':
    device = f'/{world.device_type or "cpu"}:0'
    return replicated_step.ReplicatedStep(
        world, tf.distribute.OneDeviceStrategy(device), jit_compile=True)
  return replicas_lib.SingleProcess(world)
