"""The whole training step inside `strategy.run`: the TPU path.

On a TPU slice every replica's step is one XLA program: TPUStrategy
compiles the function given to `strategy.run` for the replica's logical
cores, and the pipeline's stages are pinned to their cores by the
`LogicalCores` placement (sharding annotations). So, unlike the CPU/GPU
workers (replicas.MultiWorker, where the strategy only sums), here:

- the task and every variable are created under `strategy.scope()` (the
  pipeline's variables, gradient accumulators and optimizer slots on the
  logical core of their stage);
- each replica's training input comes from
  `strategy.distribute_datasets_from_function`: one input pipeline per host
  reads its shard of the files in batches of global batch / R;
- the whole step (pipeline, cross-replica sum, finite check, update) runs
  inside `strategy.run`; the sum goes through the replica context's
  all_reduce (the `cross_replica` hook of ClassificationTask.CheckedTrainStep).

Without a TPU the same hooks run under a OneDeviceStrategy with the replica
function compiled by XLA (`jit_compile`): that is how they are tested, and
what `topology.placement = 'logical_cores'` on a CPU or GPU runs. No run on
a TPU has been made.
"""
from typing import ContextManager

import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo.distribute import replicas as replicas_lib
from gpipe_lingvo.pipeline import xla_annotations

SUM = tf.distribute.ReduceOp.SUM

UNTESTED_ON_TPU = (
    'NOTE: the TPU training path has never run on a TPU in this project\'s '
    'tests; its parts were tested on CPU (the step under XLA with '
    'logical-core annotations, inside a one-device strategy). Check the '
    'first steps against a CPU or GPU run of the same model.')


def ReplicaInputParams(params, input_context: tf.distribute.InputContext):
  """Input params of one host's pipeline: shard `input_pipeline_id` of
  `num_input_pipelines`, in batches of one replica (global batch / R)."""
  per_replica = input_context.get_per_replica_batch_size(params.batch_size)
  p = params.Copy()
  p.num_shards = input_context.num_input_pipelines
  p.shard_index = input_context.input_pipeline_id
  p.batch_size = per_replica * p.num_shards
  return p


class ReplicatedStep(replicas_lib.SingleProcess):
  """Trainer hooks that run every replica's whole step inside
  strategy.run (one process drives all replicas).

  jit_compile: compile the replica function with XLA; by default only
  where the strategy does not already (not a TPUStrategy).
  """

  def __init__(self, world, strategy: tf.distribute.Strategy,
               jit_compile: bool = None):
    super().__init__(world)
    self.strategy = strategy
    self.jit_compile = (not xla_annotations.IsTpuStrategy(strategy)
                        if jit_compile is None else jit_compile)

  def Scope(self) -> ContextManager:
    return self.strategy.scope()

  # One iterator per host, inside the strategy: resumed runs skip.
  saves_input_iterator = False

  def Dataset(self, input_generator, start=0):
    params = input_generator.params

    def HostDataset(ctx):
      gen = ReplicaInputParams(params, ctx).Instantiate()
      return gen.GetDatasetFrom(start) if start else gen.GetDataset()

    return self.strategy.distribute_datasets_from_function(HostDataset)

  def TrainStep(self, task, batch, global_step):
    """strategy.run of the replica's CheckedTrainStep; returns replica 0's
    results (every replica holds the same after the sum)."""
    m = self.world.num_micro_batches

    def Replica(replica_batch):
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      # Replica r numbers its micro-batches from r * M, as the workers do.
      offset = tf.cast(replica, tf.int64) * m
      with context.Scope(micro_batch_offset=offset):
        return task.CheckedTrainStep(replica_batch, global_step,
                                     cross_replica=self.CrossReplica)

    if self.jit_compile:
      Replica = tf.function(Replica, jit_compile=True, autograph=False)
    out = self.strategy.run(Replica, args=(batch,))
    return tf.nest.map_structure(
        lambda v: self.strategy.experimental_local_results(v)[0], out)

  def CrossReplica(self, loss, sums, grads, stats):
    """Inside the replica function: sums over the replicas through the
    replica context; not packed into one vector, which would gather every
    stage's gradients on one core (TPUStrategy makes one cross-replica sum
    per tensor)."""
    ctx = tf.distribute.get_replica_context()
    return replicas_lib.SumStepResults(
        lambda flat: ctx.all_reduce(SUM, flat), self.world.num_replicas,
        loss, sums, grads, stats)
