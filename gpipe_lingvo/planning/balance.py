"""Resolves a PipelinedNetwork's `partition` param to cell ranges.

'uniform' and explicit lists go to partition.Partition. Cost modes
('params', 'flops', 'memory', 'time') trace the cells once at micro-batch
shapes (costs.TraceNetwork; 'time' also runs them on the default device)
and cut them exactly (plan.BalancedPartition), within
topology.memory_budget_bytes if set. The trace needs the input shape:
the network's `input_shape` param, which the trainer fills from the
training input generator (planning.PrepareNetworkParams).
"""
import hashlib

import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo.layers import sequential
from gpipe_lingvo.pipeline import cell_remat
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.pipeline import executor as executor_lib
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.planning import partition as partition_lib
from gpipe_lingvo.planning import plan as plan_lib


def Budgets(topology, num_stages):
  """Per-stage byte budgets from topology.memory_budget_bytes (one number
  for every device, or a list per stage); None when unset."""
  b = topology.memory_budget_bytes
  if not b:
    return None
  if isinstance(b, (list, tuple)):
    if len(b) != num_stages:
      raise partition_lib.PartitionError(
          f'topology.memory_budget_bytes has {len(b)} entries but '
          f'num_stages={num_stages}; give one budget per stage or one number.')
    return [float(x) for x in b]
  return [float(b)] * num_stages


def NetworkCosts(p, batch, measure=False):
  """Costs of the cells of PipelinedNetwork params p at micro-batch
  `batch`, cached in p.cell_costs_path when set."""
  shape = list(p.input_shape)

  def Build():
    net = sequential.Sequential.Params().Set(
        name=p.name, cells=list(p.cells), fprop_dtype=p.fprop_dtype,
        random_seed=p.random_seed)
    with base_layer.ZeroInitForCounting():
      return net.Instantiate().cells, None

  def Make():
    return costs_lib.TraceNetwork(
        Build, tf.TensorSpec([batch] + shape[1:], tf.float32),
        measure=measure)

  if not p.cell_costs_path:
    return Make()
  key = hashlib.sha1(
      f'{[c.ToText() for c in p.cells]}|{batch}|{shape}|{measure}'.encode()
  ).hexdigest()
  return costs_lib.CachedCosts(p.cell_costs_path, key, Make)


def Resolve(p, num_cells, num_chunks, effective_micro_batches,
            opt=plan_lib.Optimizer()):
  """[(start, end)] cell ranges per chunk (per stage when virtual_stages
  is 1) for PipelinedNetwork params p."""
  spec = p.partition
  if not (isinstance(spec, str) and spec in partition_lib.COST_MODES):
    return partition_lib.Partition(num_cells, num_chunks, spec)
  if not p.input_shape:
    raise partition_lib.PartitionError(
        f"partition {spec!r} traces the cells and needs the network's "
        'input_shape ([batch, ...]); the trainer fills it from the '
        'training input, otherwise set it in the network params.')
  m = effective_micro_batches
  batch = int(p.input_shape[0])
  if batch % p.num_micro_batches:
    raise partition_lib.PartitionError(
        f'input_shape batch {batch} is not divisible by num_micro_batches='
        f'{p.num_micro_batches}.')
  costs = NetworkCosts(p, batch // m, measure=(spec == 'time'))
  # Per-cell recompute changes what each cell stashes and its backward.
  costs = cell_remat.Apply(costs, params_check.CellRemat(p.remat, num_cells))
  v = num_chunks // p.num_stages
  execution = executor_lib.ChooseExecution(
      p.execution, executor_lib.NumActions(p.schedule, p.num_stages, m, v))
  pipe = plan_lib.Pipeline(p.schedule, p.num_stages, m,
                           tuple(executor_lib.RematFlags(p.remat, m)), v,
                           execution)
  try:
    return plan_lib.BalancedPartition(
        costs, spec, pipe, opt,
        Budgets(p.topology, p.num_stages))
  except plan_lib.PlanError as e:
    raise partition_lib.PartitionError(f'{p.name}: {e}') from None
