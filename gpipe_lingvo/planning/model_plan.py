"""The plan of a registered model's training step, before launch.

`PlanModel` traces the model's cells once at micro-batch shapes inside a
fresh tf.Graph (no weights are allocated and no devices are needed, so a
K=8 plan runs on a laptop and a model larger than the machine still
plans), cuts them as the network's `partition` says, and returns the plan
(planning/plan.py) with the step's fit verdict. `trainer.py --mode=plan`
prints it and writes plan.json and the pictures to the logdir.
"""
import json
import os

import numpy as np
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo.layers import sequential
from gpipe_lingvo.planning import balance
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.pipeline import executor as executor_lib
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.planning import partition as partition_lib
from gpipe_lingvo.planning import plan as plan_lib
from gpipe_lingvo.planning import schedule_view
from gpipe_lingvo.planning import measure as measure_lib
from gpipe_lingvo.planning import recompute

COSTS_FILE = 'cell_costs.json'
# Training batches the input pipeline fills while a step runs (the next
# one prefetched, one being assembled): measured against trainer.py's step
# peak (bench/planner_bench.py, docs/planner.md).
PREFETCHED_BATCHES = 2


def PrepareNetworkParams(model_params, logdir=''):
  """Fills the network's input_shape (from the training input) and its
  cost cache path (in the logdir) when a cost partition needs them."""
  net = model_params.task.network
  keys = dict(net.IterParams())
  if 'input_shape' not in keys or net.partition not in \
      partition_lib.COST_MODES:
    return
  if not net.input_shape:
    gen = model_params.train.Instantiate()
    net.input_shape = [gen.params.batch_size] + list(gen.ImageShape())
  if logdir and not net.cell_costs_path:
    net.cell_costs_path = os.path.join(logdir, COSTS_FILE)


def Pipeline(model_params) -> plan_lib.Pipeline:
  """The pipeline configuration of a model's training step."""
  return _Pipeline(model_params.task.network)[0]


def _Pipeline(net):
  """(plan.Pipeline, remat policy, partition, topology) of network params;
  a plain network is one stage and one micro-batch without remat."""
  keys = dict(net.IterParams())
  if 'num_stages' not in keys:
    return plan_lib.Pipeline('gpipe', 1, 1, (False,)), 'never', 'uniform', None
  m = 1 if net.batch_norm_mode == 'full_batch' else net.num_micro_batches
  execution = executor_lib.ChooseExecution(
      net.execution, executor_lib.NumActions(net.schedule, net.num_stages, m,
                                             net.virtual_stages))
  pipe = plan_lib.Pipeline(net.schedule, net.num_stages, m,
                           tuple(executor_lib.RematFlags(net.remat, m)),
                           net.virtual_stages, execution)
  return pipe, net.remat, net.partition, net.topology


def _PlainTask(model_params):
  """The task with its network's cells as one layers.Sequential (same
  layer paths), params only."""
  tp = model_params.task.Copy()
  net = tp.network
  tp.network = sequential.Sequential.Params().Set(
      name=net.name, cells=list(net.cells), fprop_dtype=net.fprop_dtype)
  return tp


def ModelCosts(model_params, micro_batch, measure=False):
  """Traces the task's network and loss at `micro_batch` examples. With
  measure, per-cell times come from the trace's step statistics, scaled
  to the forward and backward of the network as a tf.function (the
  runtime a training step runs in; it can be a fifth slower than the
  trace's graph session for networks of many small ops)."""
  gen = model_params.train.Instantiate()
  batch_specs = gen.BatchSpecs(micro_batch)
  input_specs, label_specs = _InputAndLabelSpecs(model_params, batch_specs)

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
      # of the batch than the labels, e.g. a token count).
      batch = tf.nest.map_structure(
          lambda s: tf.compat.v1.placeholder(s.dtype, s.shape), batch_specs)
      return task.NetworkInputs(batch)[2](out, labels)[0]

    return out, Loss

  repeats = _Repeats(model_params.task.network.cells)
  try:
    costs = costs_lib.TraceNetwork(lambda: Build(repeats), input_specs,
                                   label_specs, measure=measure)
  except costs_lib.RepeatError:  # A repeat changes shapes: build them all.
    costs = costs_lib.TraceNetwork(lambda: Build([None] * len(repeats)),
                                   input_specs, label_specs, measure=measure)
  if measure:
    costs = costs.TimesScaledTo(
        ForwardBackwardSeconds(model_params, micro_batch))
  return costs


def InputBatchBytes(model_params) -> int:
  """Bytes of one training batch as the input generator yields it (every
  tensor of its BatchSpecs: images or token ids, labels, weights)."""
  gen = model_params.train.Instantiate()
  specs = tf.nest.flatten(gen.BatchSpecs(model_params.train.batch_size))
  return sum(int(np.prod(s.shape)) * s.dtype.size for s in specs)


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


def _InputAndLabelSpecs(model_params, batch_specs):
  """TensorSpec nests of the network's input and the labels the task
  takes from a batch of `batch_specs` (traced, no data read)."""
  task = _PlainTask(model_params)
  # The first and last cells say what the task reads (a Transformer's
  # embedding and softmax); the others need not be built.
  task.network.cells = task.network.cells[:1] + task.network.cells[-1:]
  with base_layer.ZeroInitForCounting():
    task = task.Instantiate()
  fn = tf.function(lambda b: task.NetworkInputs(b)[:2], autograph=False)
  out = fn.get_concrete_function(batch_specs).structured_outputs
  return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                               out)


def ForwardBackwardSeconds(model_params, micro_batch, reps=5):
  """Median seconds of one forward and backward of the task's network and
  loss at `micro_batch` examples, as a tf.function on the default device
  (allocates the weights)."""
  task = _PlainTask(model_params).Instantiate()
  gen = model_params.train.Instantiate()
  x = tf.random.stateless_normal([micro_batch] + list(gen.ImageShape()),
                                 [1, 2], dtype=gen.params.dtype)
  labels = tf.zeros([micro_batch], tf.int32)
  weights = tf.ones([micro_batch])
  variables = task.network.TrainableVariables()

  @tf.function
  def Step():
    with tf.GradientTape() as tape:
      with context.Scope(training=True, step=tf.constant(0, tf.int64),
                         micro_batch=tf.constant(0), stats={}):
        loss = task.LossSums(task.network.FProp(x), labels, weights,
                             micro_batch)[0]
    grads = tape.gradient(loss, variables)
    return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])

  return measure_lib.MedianSeconds(lambda: Step().numpy(), reps)


def MatmulFlopsPerSecond(size=512, reps=5):
  """Rough FLOP rate of the default device (a square matmul); used for time
  estimates when cell times were not measured."""
  a = tf.random.stateless_normal([size, size], [1, 2])
  f = tf.function(lambda x: tf.matmul(x, x))
  return 2 * size ** 3 / measure_lib.MedianSeconds(lambda: f(a).numpy(),
                                                    reps)


def PlanModel(model_params, measure=False, costs=None,
              overheads=plan_lib.Overheads()):
  """The plan dict of a model's training step (see planning/plan.py)."""
  net = model_params.task.network
  pipe, remat_policy, spec, topo = _Pipeline(net)
  k, m = pipe.num_stages, pipe.num_micro_batches
  batch = model_params.train.batch_size
  if batch % m:
    raise plan_lib.PlanError(f'batch size {batch} is not divisible by '
                             f'num_micro_batches={m}.')
  opt = plan_lib.Optimizer.FromParams(model_params.task.train.optimizer)
  budgets = balance.Budgets(topo, k) if topo is not None else None
  if costs is None:
    costs = ModelCosts(model_params, batch // m,
                       measure=measure or spec == 'time')
  cells = len(costs.cells)
  if 'remat' in dict(net.IterParams()):  # per-cell recompute
    costs = recompute.Apply(costs, params_check.CellRemat(net.remat, cells))
  if isinstance(spec, str) and spec in partition_lib.COST_MODES:
    ranges = plan_lib.BalancedPartition(costs, spec, pipe, opt, budgets)
  else:
    ranges = partition_lib.Partition(cells, pipe.num_chunks, spec)
  cpu = topo is None or topo.device_type == 'cpu'
  threads = topo.intra_op_threads if topo is not None else 0
  host_parallelism = min(k, os.cpu_count() or 1) if threads == 1 else 1
  rate = None if costs.cells[0].fwd_s is not None else MatmulFlopsPerSecond()
  plan = plan_lib.MakePlan(costs, ranges, pipe, opt, budgets,
                           shared_host=cpu,
                           host_parallelism=host_parallelism if cpu else None,
                           flops_per_s=rate, overheads=overheads,
                           prefetch_bytes=PREFETCHED_BATCHES *
                           InputBatchBytes(model_params) if cpu else 0)
  plan['model'] = model_params.model
  plan['partition_spec'] = spec if isinstance(spec, str) else list(spec)
  plan['time_source'] = ('measured cell times' if rate is None else
                         f'FLOPs at a measured matmul rate of '
                         f'{rate / 1e9:.1f} GFLOP/s')
  if plan['step_s']:
    plan['examples_per_s'] = batch / plan['step_s']
  if budgets is not None:
    plan.update(_Largest(costs, ranges, pipe, remat_policy, opt, budgets,
                         batch))
  return plan


def _Largest(costs, ranges, pipe, remat_policy, opt, budgets, batch):
  """Largest batch that fits at this M, and smallest M that fits at this
  batch (activation bytes scale with the micro-batch)."""

  def Fits(micro, p):
    return plan_lib.MakePlan(costs.Scaled(micro), ranges, p, opt,
                             budgets)['fits']

  lo, hi = 0, 1
  while Fits(hi, pipe) and hi < 2 ** 20:
    lo, hi = hi, hi * 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if Fits(mid, pipe) else (lo, mid)
  smallest_m = None
  for mm in range(1, batch + 1):
    if batch % mm or not _Runs(pipe, mm):
      continue
    flags = tuple(executor_lib.RematFlags(remat_policy, mm))
    if Fits(batch // mm, pipe.Replace(num_micro_batches=mm, remat=flags)):
      smallest_m = mm
      break
  return {'largest_batch_that_fits': lo * pipe.num_micro_batches,
          'smallest_micro_batches_that_fit': smallest_m}


def _Runs(pipe, m):
  try:
    schedule_view.CheckConfig(pipe.schedule, pipe.num_stages, m,
                             pipe.virtual_stages)
    return True
  except schedule_view.ScheduleError:
    return False


def Summary(plan):
  """The step lines printed under the stage table."""
  mib = lambda n: f'{n / 2**20:.1f} MiB'
  v = plan['virtual_stages']
  out = [f"{plan['model']}: K={plan['num_stages']}, "
         f"{f'v={v}, ' if v > 1 else ''}M="
         f"{plan['num_micro_batches']} ({plan['schedule']}, micro-batch "
         f"{plan['micro_batch_size']}, execution {plan['execution']}), "
         f"partition {plan['partition']} ({plan['partition_spec']})"]
  if plan['step_s'] is not None:
    shared = plan['host_parallelism']
    host = ('' if shared is None else
            f", the devices sharing the host's cores ({shared:g} action"
            f"{'s' if shared != 1 else ''} at a time)")
    out.append(f"bubble {plan['bubble']:.3f} (the schedule's); estimated "
               f"step {plan['step_s'] * 1e3:.1f} ms{host}, "
               f"{plan['examples_per_s']:.1f} examples/s "
               f"({plan['time_source']})")
  if plan['host_peak_bytes'] is not None:
    out.append(f"host peak (stages sharing one allocator): "
               f"{mib(plan['host_peak_bytes'])}, of which step activations "
               f"{mib(plan['step_activation_peak_bytes'])}")
  if 'largest_batch_that_fits' in plan:
    verdict = 'fits' if plan['fits'] else 'DOES NOT FIT'
    out.append(f"budget: {verdict}; largest batch that fits at M="
               f"{plan['num_micro_batches']}: "
               f"{plan['largest_batch_that_fits']}; smallest M that fits at "
               f"batch {plan['batch_size']}: "
               f"{plan['smallest_micro_batches_that_fit']}")
  return '\n'.join(out)


def WritePlan(plan, logdir):
  tf.io.gfile.makedirs(logdir)
  path = os.path.join(logdir, 'plan.json')
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(plan, f, indent=1)
  return path


def MeasuredOverheads(model_params):
  """The executor's per-tick cost on this host for the model's table
  (planning/measure.py); creates the pipeline's logical devices, so call
  it before TensorFlow starts otherwise."""
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  net = model_params.task.network
  if 'num_stages' not in dict(net.IterParams()):
    return plan_lib.Overheads()
  devices.ConfigureFromParams(model_params.task)
  return measure_lib.ExecutorOverhead(Pipeline(model_params),
                                      net.topology.device_type)


def RunPlanMode(model_params, logdir, print_fn=print, measure=False):
  """--mode=plan: prints the plan, writes plan.json and the pictures."""
  from gpipe_lingvo.planning import plot  # pylint: disable=import-outside-toplevel
  overheads = plan_lib.Overheads()
  if measure:
    overheads = MeasuredOverheads(model_params)
  plan = PlanModel(model_params, measure=measure, overheads=overheads)
  print_fn(plan_lib.FormatTable(plan))
  print_fn(Summary(plan))
  topo = dict(model_params.task.network.IterParams()).get('topology')
  if topo is not None and topo.inter_op_threads != 1 and (
      topo.device_type == 'cpu'):
    print_fn(f'note: topology.inter_op_threads={topo.inter_op_threads} runs '
             'independent ops together; their tensors add to the peak, '
             'which the plan counts for one op at a time (inter_op_threads '
             '= 1, the default; docs/planner.md).')
  if logdir:
    print_fn(f'wrote {WritePlan(plan, logdir)}')
    if plan['timeline']:
      print_fn('wrote ' + plot.Timeline(
          plan, os.path.join(logdir, 'plan_timeline.png')))
    print_fn('wrote ' + plot.MemoryAndTime(
        plan, os.path.join(logdir, 'plan_memory.png')))
  return plan


def ProfiledStep(model_params, logdir, step_fn, print_fn=print):
  """Runs one training step under the profiler and draws its measured
  timeline beside the plan's (training with --timeline_at_step)."""
  from gpipe_lingvo.planning import plot  # pylint: disable=import-outside-toplevel
  result, boxes = measure_lib.ProfileStep(step_fn,
                                          Pipeline(model_params).Table())
  plan = PlanModel(model_params)
  path = plot.Timeline(plan, os.path.join(logdir, 'step_timeline.png'),
                       boxes or None)
  print_fn(f'wrote {path}')
  return result
