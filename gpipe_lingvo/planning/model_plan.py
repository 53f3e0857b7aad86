"""The plan of a registered model's training step, before launch.

`PlanModel` traces the model's cells once at micro-batch shapes inside a
fresh tf.Graph (no weights are allocated and no devices are needed, so a
K=8 plan runs on a laptop and a model larger than the machine still
plans), cuts them as the network's `partition` says, and returns the plan
(planning/plan.py) with the step's fit verdict. `trainer.py --mode=plan`
prints it and writes plan.json and the pictures to the logdir.
"""
import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from gpipe_lingvo.pipeline import executor as executor_lib
from gpipe_lingvo.planning import measure as measure_lib
from gpipe_lingvo.planning import plan as plan_lib
from gpipe_lingvo.planning import resolve
from gpipe_lingvo.planning import schedule_view

# Training batches the input pipeline fills while a step runs (the next
# one prefetched, one being assembled): measured against trainer.py's step
# peak (bench/planner_bench.py, docs/planner.md).
PREFETCHED_BATCHES = 2


def Pipeline(model_params) -> plan_lib.Pipeline:
  """The pipeline configuration of a model's training step."""
  return resolve.NetworkPipeline(model_params.task.network)


def InputBatchBytes(model_params) -> int:
  """Bytes of one training batch as the input generator yields it (every
  tensor of its BatchSpecs: images or token ids, labels, weights)."""
  gen = model_params.train.Instantiate()
  specs = tf.nest.flatten(gen.BatchSpecs(model_params.train.batch_size))
  return sum(int(np.prod(s.shape)) * s.dtype.size for s in specs)


def MatmulFlopsPerSecond(size=512, reps=5):
  """Rough FLOP rate of the default device (a square matmul); used for time
  estimates when cell times were not measured."""
  a = tf.random.stateless_normal([size, size], [1, 2])
  f = tf.function(lambda x: tf.matmul(x, x))
  return 2 * size ** 3 / measure_lib.MedianSeconds(lambda: f(a).numpy(),
                                                    reps)


def PlanModel(model_params, measure=False, costs=None,
              overheads=plan_lib.Overheads(),
              flops_per_s: Optional[float] = None, time_scale: float = 1.0):
  """The plan dict of a model's training step (see planning/plan.py); the
  cut is the one training runs (resolve.Cut on resolve.TraceCosts).
  Unmeasured cell times are FLOPs at `flops_per_s` (None: the host's rate,
  MatmulFlopsPerSecond, measured now; plans to be compared can share one
  rate, as the host's drifts under load); measured ones are multiplied by
  `time_scale` (auto.StepFit's factor)."""
  net = model_params.task.network
  pipe = resolve.NetworkPipeline(net)
  pipelined = resolve.IsPipelined(net)
  spec = net.partition if pipelined else 'uniform'
  topo = net.topology if pipelined else None
  k = pipe.num_stages
  batch = model_params.train.batch_size
  opt = plan_lib.Optimizer.FromTask(model_params.task)
  budgets = resolve.Budgets(topo, k)
  micro = resolve.MicroBatch(net, batch)
  if costs is None:
    costs = resolve.ModelCosts(model_params, micro,
                               measure=measure or spec == 'time')
  if time_scale != 1.0 and costs.cells[0].fwd_s is not None:
    costs = costs.TimesScaledTo(time_scale * sum(
        c.fwd_s + c.bwd_s for c in costs.cells))
  costs = resolve.WithCellRemat(net, costs)
  ranges = resolve.Cut(net, costs, opt)
  cpu = topo is None or topo.device_type == 'cpu'
  threads = topo.intra_op_threads if topo is not None else 0
  host_parallelism = min(k, os.cpu_count() or 1) if threads == 1 else 1
  rate = None
  if costs.cells[0].fwd_s is None:
    rate = flops_per_s or MatmulFlopsPerSecond()
  plan = plan_lib.MakePlan(costs, ranges, pipe, opt, budgets,
                           shared_host=cpu,
                           host_parallelism=host_parallelism if cpu else None,
                           flops_per_s=rate, overheads=overheads,
                           prefetch_bytes=PREFETCHED_BATCHES *
                           InputBatchBytes(model_params) if cpu else 0,
                           allocator=True)
  plan['model'] = model_params.model
  plan['partition_spec'] = spec if isinstance(spec, str) else list(spec)
  plan['time_source'] = ('measured cell times' if rate is None else
                         f'FLOPs at a measured matmul rate of '
                         f'{rate / 1e9:.1f} GFLOP/s')
  if plan['step_s']:
    plan['examples_per_s'] = batch / plan['step_s']
  if budgets is not None:
    plan.update(_Largest(costs, ranges, pipe, net.remat if pipelined
                         else 'never', opt, budgets, batch))
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
    if plan.get('allocator_blocks_bytes') is not None:
      out[-1] += (f" (the step's ops replayed through a simulated BFC "
                  f"allocator: tensors asking "
                  f"{mib(plan['allocator_asked_bytes'])} hold blocks of "
                  f"{mib(plan['allocator_blocks_bytes'])})")
    held = [(name, n) for name, n in (
        ("the weight decay's gradients",
         sum(s['decay_bytes'] for s in plan['stages'])),
        ('prefetched input batches', plan['prefetch_bytes'])) if n]
    if held:
      out[-1] += (f"; the step's {mib(plan['step_activation_peak_bytes'])}"
                  ' include ' + ' and '.join(f'{name} {mib(n)}'
                                             for name, n in held))
  if 'largest_batch_that_fits' in plan:
    verdict = 'fits' if plan['fits'] else 'DOES NOT FIT'
    if not plan.get('host_fits', True):
      verdict += (f" (the replayed host peak {mib(plan['host_peak_bytes'])}"
                  f" is above the devices' budgets summed, "
                  f"{mib(sum(s['budget_bytes'] for s in plan['stages']))})")
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
  overheads, scale = plan_lib.Overheads(), 1.0
  if measure:
    from gpipe_lingvo.planning import auto  # pylint: disable=import-outside-toplevel
    overheads = MeasuredOverheads(model_params)
    scale, step_s = auto.StepOverheads(model_params, logdir)
    overheads = dataclasses.replace(overheads, step_s=step_s)
  plan = PlanModel(model_params, measure=measure, overheads=overheads,
                   time_scale=scale)
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
  """Runs one training step under the profiler, draws its measured
  timeline beside the plan's and prints what was live at the allocator's
  peak (training with --timeline_at_step)."""
  from gpipe_lingvo.planning import plot  # pylint: disable=import-outside-toplevel
  result, boxes, peak = measure_lib.ProfileStepMemory(
      step_fn, Pipeline(model_params).Table())
  plan = PlanModel(model_params)
  path = plot.Timeline(plan, os.path.join(logdir, 'step_timeline.png'),
                       boxes or None)
  print_fn(f'wrote {path}')
  if peak.live:
    # The plan counts what tensors ask for; the allocator counts blocks.
    mib = 2.0**20
    print_fn(f'allocator peak of the profiled step: {peak.in_use / mib:.1f} '
             f'MiB in use; the tensors live then asked for '
             f'{peak.asked / mib:.1f} MiB and hold blocks of '
             f'{peak.held / mib:.1f} MiB')
    if plan.get('allocator_blocks_bytes') is not None:
      # Beside it, the plan's own replay of the step (above its start).
      print_fn(f"the plan's replay of the step through a simulated "
               f"allocator: tensors asking "
               f"{plan['allocator_asked_bytes'] / mib:.1f} MiB hold blocks "
               f"of {plan['allocator_blocks_bytes'] / mib:.1f} MiB above the "
               f"step's start (step peak planned: "
               f"{plan['step_activation_peak_bytes'] / mib:.1f} MiB)" +
               ('' if plan['time_source'] == 'measured cell times' else
                "; the cells were not measured, so no kernel's "
                'temporaries are counted (--mode=plan --plan_measure '
                'measures them)'))
  return result
