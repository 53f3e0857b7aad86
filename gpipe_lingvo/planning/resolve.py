"""The one resolver of a PipelinedNetwork's `partition`, and its one trace.

'uniform' and explicit lists go to partition.Partition. Cost modes
('params', 'flops', 'memory', 'time') trace the cells once at micro-batch
shapes (`TraceCosts`; 'time' also runs them on the default device) and cut
them exactly (plan.BalancedPartition), within topology.memory_budget_bytes
if set. Training (pipelined_network, with the cut the trainer resolved in
`PrepareNetworkParams`), `--mode=plan` (model_plan) and the search
(auto.py) all cut through `Cut` on costs from `TraceCosts`, so the plan
prints the cut training runs.

The trace of a model (its params given) runs the task's loss after the last
cell on the input generator's batch specs (the input's real dtypes); a
network on its own traces its cells alone on `input_shape` (float32).
Both are cached by a hash of the cells' params and the input shapes.
"""
import hashlib
from typing import Callable, List, Optional, Tuple

import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo.layers import sequential
from gpipe_lingvo.pipeline import cell_remat
from gpipe_lingvo.pipeline import executor as executor_lib
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.planning import partition as partition_lib
from gpipe_lingvo.planning import plan as plan_lib

COSTS_FILE = 'cell_costs.json'
Ranges = List[Tuple[int, int]]


def Budgets(topology, num_stages):
  """Per-stage byte budgets from topology.memory_budget_bytes (one number
  for every device, or a list per stage); None when unset."""
  b = topology.memory_budget_bytes if topology is not None else None
  if not b:
    return None
  if isinstance(b, (list, tuple)):
    if len(b) != num_stages:
      raise partition_lib.PartitionError(
          f'topology.memory_budget_bytes has {len(b)} entries but '
          f'num_stages={num_stages}; give one budget per stage or one number.')
    return [float(x) for x in b]
  return [float(b)] * num_stages


class CutError(partition_lib.PartitionError, plan_lib.PlanError):
  """A cost partition that cannot be cut (no cut fits the budget); the
  message names the network and the least budget that fits."""


def IsPipelined(net) -> bool:
  return 'num_stages' in dict(net.IterParams())


def IsCostPartition(spec) -> bool:
  return isinstance(spec, str) and spec in partition_lib.COST_MODES


def NetworkPipeline(net) -> plan_lib.Pipeline:
  """The pipeline a network's step runs (K, effective M, schedule, remat,
  v, execution); a plain network is one stage and one micro-batch."""
  if not IsPipelined(net):
    return plan_lib.Pipeline('gpipe', 1, 1, (False,))
  m = 1 if net.batch_norm_mode == 'full_batch' else net.num_micro_batches
  execution = executor_lib.ChooseExecution(
      net.execution, executor_lib.NumActions(net.schedule, net.num_stages, m,
                                             net.virtual_stages))
  host_order = execution == 'dataflow' and executor_lib.HostOrder(
      dict(net.IterParams()).get('action_order', 'device'), net.topology)
  return plan_lib.Pipeline(net.schedule, net.num_stages, m,
                           tuple(executor_lib.RematFlags(net.remat, m)),
                           net.virtual_stages, execution, host_order)


def WithCellRemat(net, costs):
  """Costs as the step runs them: per-cell recompute applied."""
  if not IsPipelined(net):
    return costs
  return cell_remat.Apply(
      costs, params_check.CellRemat(net.remat, len(costs.cells)))


def Cut(net, costs, opt: plan_lib.Optimizer = plan_lib.Optimizer()
        ) -> Ranges:
  """[(start, end)] cell ranges per chunk of network params `net`; `costs`
  (from TraceCosts, cell remat applied) are read by cost partitions only."""
  pipe = NetworkPipeline(net)
  spec = net.partition if IsPipelined(net) else 'uniform'
  if not IsCostPartition(spec):
    return partition_lib.Partition(len(net.cells), pipe.num_chunks, spec)
  budgets = Budgets(net.topology, pipe.num_stages)
  try:
    return plan_lib.BalancedPartition(costs, spec, pipe, opt, budgets)
  except plan_lib.PlanError as e:
    raise CutError(f'{net.name}: {e}') from None


def Resolve(net, model=None) -> Ranges:
  """The cut of network params `net` (of model params `model` when given:
  the trace then includes the loss and the optimizer's slots count)."""
  spec = net.partition
  if not IsCostPartition(spec):
    return Cut(net, None)
  if model is not None:
    batch = model.train.batch_size
    opt = plan_lib.Optimizer.FromTask(model.task)
  elif net.input_shape:
    batch, opt = int(net.input_shape[0]), plan_lib.Optimizer()
  else:
    raise partition_lib.PartitionError(
        f"partition {spec!r} traces the cells and needs the network's "
        'input_shape ([batch, ...]); the trainer resolves it from the '
        'training input, otherwise set it in the network params.')
  micro = MicroBatch(net, batch)
  costs = TraceCosts(net, micro, measure=spec == 'time', model=model)
  return Cut(net, WithCellRemat(net, costs), opt)


def MicroBatch(net, batch_size: int) -> int:
  """Examples per micro-batch of a step of `batch_size` (the whole batch
  under full_batch batch norm); the batch must split into the declared
  micro-batches (params_check.MicroBatchSize, the one rule)."""
  if IsPipelined(net):
    params_check.MicroBatchSize(batch_size, net.num_micro_batches, net.name)
  return batch_size // NetworkPipeline(net).num_micro_batches


def PrepareNetworkParams(model_params, logdir: str = '') -> Optional[list]:
  """Training: a cost partition is resolved here, with the model's loss,
  input and optimizer (as --mode=plan resolves it), the traced costs
  cached in <logdir>/cell_costs.json; the cut is written into the network
  params as cell counts per chunk. Returns them (None: nothing to do)."""
  net = model_params.task.network
  if not IsPipelined(net) or not IsCostPartition(net.partition):
    return None
  if logdir and not net.cell_costs_path:
    net.cell_costs_path = f'{logdir.rstrip("/")}/{COSTS_FILE}'
  net.partition = partition_lib.Counts(Resolve(net, model_params))
  return net.partition


# -- the trace ---------------------------------------------------------------


def TraceCosts(net, micro_batch: int, measure: bool = False, model=None,
               cache_path: Optional[str] = None,
               print_fn=None) -> costs_lib.NetworkCosts:
  """Costs of the cells of network params `net` at `micro_batch` examples.

  With model params `model` (whose network is `net`): the task's loss on
  the input generator's batch specs; with measure, per-cell times scaled
  to a forward and backward of the network as a tf.function (the runtime
  a step runs in). Without: the cells alone on net.input_shape, float32.
  Cached in cache_path (default net.cell_costs_path) by a hash of the
  cells' params, the input and the micro-batch; print_fn, if given, is
  told when the cells are traced (not found in the cache)."""
  if cache_path is None:
    cache_path = dict(net.IterParams()).get('cell_costs_path') or ''
  cells_text = str([c.ToText() for c in net.cells])
  if model is not None:
    key_in = f'{model.train.ToText()}|{model.task.cls.__name__}|loss'
    make = lambda: _ModelTrace(model, micro_batch, measure)
  else:
    shape = [micro_batch] + list(net.input_shape[1:])
    key_in = f'{shape}|float32'
    make = lambda: costs_lib.TraceNetwork(
        lambda: (_Cells(net), None), tf.TensorSpec(shape, tf.float32),
        measure=measure)
  if print_fn is not None:
    traced = make
    make = lambda: (print_fn(
        f'tracing {"and timing " if measure else ""}the cells at '
        f'micro-batch {micro_batch}'), traced())[1]
  if not cache_path:
    return make()
  key = hashlib.sha1(
      f'{cells_text}|{micro_batch}|{measure}|{key_in}'.encode()).hexdigest()
  return costs_lib.CachedCosts(cache_path, key, make)


def ModelCosts(model_params, micro_batch: int, measure: bool = False,
               cache_path: str = '', print_fn=None) -> costs_lib.NetworkCosts:
  """TraceCosts of a model's network with its loss and input."""
  return TraceCosts(model_params.task.network, micro_batch, measure,
                    model_params, cache_path, print_fn)


def _Cells(net):
  p = sequential.Sequential.Params().Set(
      name=net.name, cells=list(net.cells), fprop_dtype=net.fprop_dtype,
      random_seed=net.random_seed)
  with base_layer.ZeroInitForCounting():
    return p.Instantiate().cells


def _PlainTask(model_params):
  """The task with its network's cells as one layers.Sequential (same
  layer paths), params only."""
  tp = model_params.task.Copy()
  net = tp.network
  tp.network = sequential.Sequential.Params().Set(
      name=net.name, cells=list(net.cells), fprop_dtype=net.fprop_dtype)
  return tp


def _ModelTrace(model_params, micro_batch, measure):
  gen = model_params.train.Instantiate()
  batch_specs = gen.BatchSpecs(micro_batch)
  inputs_and_labels = _InputsAndLabels(model_params)
  input_specs, label_specs = _InputAndLabelSpecs(inputs_and_labels,
                                                 batch_specs)
  # Timed on the input's stand-in batch, as ForwardBackwardStep is (zeros
  # would be padding only in a packed row).
  stand_in = values = None
  loss_feed = {}  # the loss's batch placeholders -> stand-in values
  if measure:
    stand_in = gen.StandInBatch(micro_batch)
    values = tf.nest.map_structure(lambda t: t.numpy(),
                                   inputs_and_labels(stand_in))
    values += (loss_feed,)
    stand_in = tf.nest.map_structure(lambda t: t.numpy(), stand_in)

  def Build(repeats):
    tp = _PlainTask(model_params)
    cells = list(tp.network.cells)
    tp.network.cells = [c for c, r in zip(cells, repeats) if r is None]
    with base_layer.ZeroInitForCounting():
      task = tp.Instantiate()
    it, out = iter(task.network.cells), []
    for c, r in zip(cells, repeats):
      out.append(next(it) if r is None else costs_lib.RepeatedCell(
          out[r].params.Copy().Set(name=c.name)))

    def Loss(out, labels):
      # The task's loss function of a placeholder batch (it may read more
      # of the batch than the labels, e.g. a token count), fed the
      # stand-in batch when timed.
      batch = tf.nest.map_structure(
          lambda s: tf.compat.v1.placeholder(s.dtype, s.shape), batch_specs)
      if measure:
        loss_feed.update(zip(tf.nest.flatten(batch),
                             tf.nest.flatten(stand_in)))
      return task.NetworkInputs(batch)[2](out, labels)[0]

    return out, Loss

  repeats = _Repeats(model_params.task.network.cells)
  try:
    costs = costs_lib.TraceNetwork(lambda: Build(repeats), input_specs,
                                   label_specs, measure=measure,
                                   values=values)
  except costs_lib.RepeatError:  # A repeat changes shapes: build them all.
    costs = costs_lib.TraceNetwork(lambda: Build([None] * len(repeats)),
                                   input_specs, label_specs, measure=measure,
                                   values=values)
  if measure:
    costs = costs.TimesScaledTo(
        ForwardBackwardSeconds(model_params, micro_batch))
  return costs


def _Repeats(cells):
  """Per cell: the index of an earlier cell with its params (but the name)
  and its two predecessors', else None. TraceNetwork copies such a cell's
  costs, so it need not be built."""
  keys = [c.Copy().Set(name='').ToText() for c in cells]
  first, out = {}, []
  for i, k in enumerate(keys):
    k = (k,) + tuple(keys[max(i - 2, 0):i])
    out.append(first.get(k) if i < len(cells) - 1 else None)
    first.setdefault(k, i)
  return out


def _InputsAndLabels(model_params) -> Callable:
  """batch -> (network input, labels) as the task takes them."""
  task = _PlainTask(model_params)
  # The first and last cells say what the task reads (a Transformer's
  # embedding and softmax); the others need not be built.
  task.network.cells = task.network.cells[:1] + task.network.cells[-1:]
  with base_layer.ZeroInitForCounting():
    task = task.Instantiate()
  return lambda b: task.NetworkInputs(b)[:2]


def _InputAndLabelSpecs(inputs_and_labels, batch_specs):
  """TensorSpec nests of the network's input and the labels
  `inputs_and_labels` (_InputsAndLabels) takes from a batch of
  `batch_specs` (traced, no data read)."""
  fn = tf.function(inputs_and_labels, autograph=False)
  out = fn.get_concrete_function(batch_specs).structured_outputs
  return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                               out)


def ForwardBackwardStep(model_params, micro_batch) -> Callable[[], object]:
  """A traced forward and backward of the task's network and loss at
  `micro_batch` examples, as a tf.function on the default device (allocates
  the weights); calling it runs one step to completion."""
  task = _PlainTask(model_params).Instantiate()
  gen = model_params.train.Instantiate()
  batch = gen.StandInBatch(micro_batch)
  variables = task.network.TrainableVariables()

  @tf.function
  def Step():
    with tf.GradientTape() as tape:
      with context.Scope(training=True, step=tf.constant(0, tf.int64),
                         micro_batch=tf.constant(0), stats={}):
        x, labels, loss_fn = task.NetworkInputs(batch)
        loss = loss_fn(task.network.FProp(x), labels)[0]
    grads = tape.gradient(loss, variables)
    return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])

  return lambda: Step().numpy()


def OneStage(model_params, batch_size, num_stages=1):
  """A copy of the params with the network as one stage (or `num_stages`,
  cut evenly by cell count) of one micro-batch of `batch_size` examples,
  keeping its activations (TrainStepAt)."""
  p = model_params.Copy()
  net = p.task.network
  n = len(net.cells)
  net.Set(num_stages=num_stages, num_micro_batches=1, schedule='gpipe',
          virtual_stages=1, remat='never',
          partition=[n // num_stages + (k < n % num_stages)
                     for k in range(num_stages)],
          execution='dataflow')
  net.topology.num_replicas = 1
  net.topology.memory_budget_bytes = 0
  p.train.batch_size = batch_size
  return p


def TrainStepAt(model_params, batch_size,
                num_stages=1) -> Callable[[], object]:
  """The trainer's step (task.TrainStep in a tf.function, on the input's
  stand-in batch) with the network as one stage (or `num_stages`, on as
  many devices) of one micro-batch of `batch_size` examples that keeps
  its activations; calling it runs one step to completion. Timed beside
  ForwardBackwardStep it gives what the trainer's step adds to the cells'
  work (auto.StepFit); at two stages beside one, what splitting the same
  work over two devices does on this host (auto.SplitRatio)."""
  p = OneStage(model_params, batch_size, num_stages)
  task = p.task.Instantiate()
  task.BuildOptimizer()
  batch = p.train.Instantiate().StandInBatch(batch_size)
  step = tf.Variable(0, dtype=tf.int64, trainable=False)

  @tf.function
  def Step():
    return task.TrainStep(batch, step)[0]['total_loss']

  return lambda: Step().numpy()


def ForwardBackwardSeconds(model_params, micro_batch, reps=5):
  """Median seconds of one forward and backward of the task's network and
  loss at `micro_batch` examples (ForwardBackwardStep)."""
  return costs_lib.MedianSeconds(
      ForwardBackwardStep(model_params, micro_batch), reps)
