"""A pipeline plan as data: memory and time of every stage before launch.

`MakePlan` combines per-cell costs (pipeline/costs.py, one trace at
micro-batch shapes), a partition, the schedule's tick table (read through
schedule_view) and the re-materialization policy into a JSON-able dict:
per stage the cells, parameters, bytes of weights / optimizer slots /
gradient accumulators, boundary and stashed activation bytes, peak working
bytes and forward / backward time; for the step the bubble, the step time,
examples per second and whether it fits the memory budget. Nothing here
runs TensorFlow.

Memory model of one stage and one micro-batch (bytes from the trace):
- residuals R: forward tensors its backward reads (TensorFlow's own);
- a forward holds R plus its transient tensors; a backward holds R (read
  from the stash, or recomputed first under remat) plus the gradients in
  flight;
- between ticks a stage keeps, per micro-batch the table says is alive,
  its buffered input, the gradient of its output and (without remat) R;
- weights, one accumulator per weight and the optimizer slots persist.
Logical devices that share a host (CPU) share one allocator: the host's
peak adds the stages tick by tick.
"""
from typing import Dict, List, Optional, Sequence

from gpipe_lingvo import errors
from gpipe_lingvo.pipeline import partition as partition_lib
from gpipe_lingvo.pipeline import schedule_view

SLOTS_PER_WEIGHT = {'sgd': 0, 'momentum': 1, 'rmsprop': 2, 'adam': 2}


class PlanError(errors.UserError, ValueError):
  """The requested pipeline does not fit; the message says what would."""


def StageActivations(costs, a: int, b: int) -> Dict[str, int]:
  """Activation bytes of a stage holding cells [a, b), one micro-batch."""
  cells = costs.cells[a:b]
  res = 0
  fwd_work = 0
  bwd_extra = 0
  for j, c in enumerate(cells):
    inputs = c.input_residual_bytes if j else 0
    fwd_work = max(fwd_work, res + inputs + c.fwd_peak)
    bwd_extra = max(bwd_extra, c.bwd_peak - c.residual_bytes + c.out_bytes)
    res += c.residual_bytes + inputs
  workspace = max(c.workspace_bytes or 0 for c in cells)
  return {'input_bytes': costs.input_bytes if a == 0 else
                         costs.cells[a - 1].out_bytes,
          'output_bytes': cells[-1].out_bytes,
          'residual_bytes': res,
          'forward_work_bytes': max(fwd_work, res),
          'backward_work_bytes': res + bwd_extra,
          'workspace_bytes': workspace}


def StageStatic(costs, a: int, b: int, slots_per_weight: int):
  cells = costs.cells[a:b]
  w = sum(c.param_bytes for c in cells)
  return {'cells': [c.name for c in cells],
          'params': sum(c.params for c in cells),
          'weight_bytes': w + sum(c.state_bytes for c in cells),
          'slot_bytes': w * slots_per_weight,
          'accumulator_bytes': w}


def _Live(intervals, t, which=None):
  return [i for i, (s, e) in enumerate(intervals)
          if s <= t <= e and (which is None or which[i])]


def TickMemory(view, acts: List[Dict[str, int]], remat: Sequence[bool]):
  """Per tick, per stage: (stashed bytes, working bytes, op workspace)."""
  out = []
  for t in range(view.num_ticks):
    row = []
    for k, act in enumerate(acts):
      keep = [not r for r in remat]
      stash = (len(_Live(view.InputIntervals(k), t)) * act['input_bytes'] +
               len(_Live(view.GradIntervals(k), t)) * act['output_bytes'] +
               len(_Live(view.StashIntervals(k), t, keep)) *
               act['residual_bytes'])
      work = 0
      ws = act['workspace_bytes'] if view.TickActions(t, k) else 0
      for kind, mb in view.TickActions(t, k):
        if kind == 'F':
          w = act['forward_work_bytes']
        else:
          w = act['backward_work_bytes']
        if not remat[mb]:
          w -= act['residual_bytes']  # Already counted in the stash.
        work = max(work, w)
      row.append((stash, work, ws))
    out.append(row)
  return out


def StageTimes(costs, a, b, flops_per_s=None):
  """(forward, backward) seconds of cells [a, b) for one micro-batch:
  measured per-cell times when the costs have them, else FLOPs at
  flops_per_s."""
  cells = costs.cells[a:b]
  if all(c.fwd_s is not None for c in cells):
    return sum(c.fwd_s for c in cells), sum(c.bwd_s for c in cells)
  if not flops_per_s:
    return None, None
  return (sum(c.fwd_flops for c in cells) / flops_per_s,
          sum(c.bwd_flops for c in cells) / flops_per_s)


def MakePlan(costs, ranges, schedule: str, num_micro_batches: int,
             remat: Sequence[bool], slots_per_weight: int = 1,
             budgets: Optional[Sequence[float]] = None,
             shared_host: bool = True, host_parallelism: float = 1.0,
             flops_per_s: Optional[float] = None) -> dict:
  """The plan of one configuration (see the module docstring).

  costs: NetworkCosts at the micro-batch size; ranges: [(start, end)] per
  stage; remat: per micro-batch, True where the forward is recomputed.
  shared_host: all stages on one host allocator (logical CPU devices);
  host_parallelism: how many actions the host runs at once at full speed
  (1 when every op already uses all cores).
  """
  k_all, m = len(ranges), num_micro_batches
  view = schedule_view.ScheduleView(schedule, k_all, m)
  acts = [StageActivations(costs, a, b) for a, b in ranges]
  mem = TickMemory(view, acts, remat)
  stages = []
  for k, (a, b) in enumerate(ranges):
    st = StageStatic(costs, a, b, slots_per_weight)
    st.update(acts[k])
    static = st['weight_bytes'] + st['slot_bytes'] + st['accumulator_bytes']
    st['stash_peak_bytes'] = max(row[k][0] for row in mem)
    st['working_peak_bytes'] = max(row[k][1] + row[k][2] for row in mem)
    st['peak_bytes'] = static + max(sum(row[k]) for row in mem)
    st['stashed_micro_batches'] = view.PeakStash()[k]
    st['forward_s'], st['backward_s'] = StageTimes(costs, a, b, flops_per_s)
    if budgets is not None:
      st['budget_bytes'] = budgets[k]
    stages.append(st)
  static_all = sum(s['weight_bytes'] + s['slot_bytes'] +
                   s['accumulator_bytes'] for s in stages)
  # One op runs at a time per host thread: workspaces do not add up.
  host_step = max(sum(s for s, w, _ in row) + max(w + x for _, w, x in row)
                  for row in mem)
  plan = {
      'schedule': schedule, 'num_stages': k_all, 'num_micro_batches': m,
      'micro_batch_size': costs.batch, 'batch_size': costs.batch * m,
      'remat': list(remat), 'partition': partition_lib.Counts(ranges),
      'stages': stages,
      'step_activation_peak_bytes': host_step if shared_host else None,
      'host_peak_bytes': static_all + host_step if shared_host else None,
      'ticks': view.num_ticks,
  }
  plan.update(_TimeEstimate(view, stages, remat, host_parallelism))
  plan['fits'] = budgets is None or all(
      s['peak_bytes'] <= s['budget_bytes'] for s in stages)
  return plan


def _TimeEstimate(view, stages, remat, host_parallelism):
  if any(s['forward_s'] is None for s in stages):
    return {'timeline': None, 'bubble': None, 'step_s': None,
            'examples_per_s': None}

  def Cost(kind, k, mb):
    s = stages[k]
    if kind == 'F':
      return s['forward_s']
    return s['backward_s'] + (s['forward_s'] if remat[mb] else 0.0)

  boxes = view.Timeline(Cost, serial=host_parallelism <= 1)
  span = max(bx.end for bx in boxes)
  busy = sum(bx.end - bx.start for bx in boxes)
  # Stages sharing a host's cores cannot run faster than its total work
  # allows.
  step = max(span, busy / host_parallelism)
  return {'timeline': [[bx.stage, bx.kind, bx.mb, bx.start, bx.end]
                       for bx in boxes],
          'bubble': 1.0 - busy / (view.num_stages * span),
          'step_s': step}


def FormatTable(plan: dict) -> str:
  """Per-stage text table of a plan (what --mode=plan prints)."""
  mib = lambda n: '-' if n is None else f'{n / 2**20:.1f}'
  ms = lambda s: '-' if s is None else f'{s * 1e3:.1f}'
  head = ('| stage | cells | params | weights+slots+acc MiB | boundary in/out '
          'MiB | stashed MiB (micro-batches) | peak MiB | fwd ms | bwd ms |')
  lines = [head, '|' + '---|' * 9]
  for k, s in enumerate(plan['stages']):
    static = s['weight_bytes'] + s['slot_bytes'] + s['accumulator_bytes']
    lines.append(
        f"| {k} | {len(s['cells'])} ({s['cells'][0]}..{s['cells'][-1]}) | "
        f"{s['params']:,} | {mib(static)} | {mib(s['input_bytes'])}/"
        f"{mib(s['output_bytes'])} | {mib(s['stash_peak_bytes'])} "
        f"({s['stashed_micro_batches']}) | {mib(s['peak_bytes'])} | "
        f"{ms(s['forward_s'])} | {ms(s['backward_s'])} |")
  return '\n'.join(lines)


def StageBytesFn(costs, schedule: str, num_stages: int,
                 num_micro_batches: int, remat: Sequence[bool],
                 slots_per_weight: int = 1):
  """stage_bytes(k, a, b): peak bytes of stage k's device if it held
  cells [a, b) (static + stash + working), for partition.Balance."""
  view = schedule_view.ScheduleView(schedule, num_stages, num_micro_batches)

  def StageBytes(k, a, b):
    act = StageActivations(costs, a, b)
    mem = TickMemory(_OneStage(view, k), [act], remat)
    st = StageStatic(costs, a, b, slots_per_weight)
    static = st['weight_bytes'] + st['slot_bytes'] + st['accumulator_bytes']
    return static + max(sum(row[0]) for row in mem)

  return StageBytes


class _OneStage:
  """A ScheduleView restricted to stage k (for one stage's memory)."""

  def __init__(self, view, k):
    self._v, self._k = view, k
    self.num_ticks = view.num_ticks

  def TickActions(self, t, _):
    return self._v.TickActions(t, self._k)

  def InputIntervals(self, _):
    return self._v.InputIntervals(self._k)

  def GradIntervals(self, _):
    return self._v.GradIntervals(self._k)

  def StashIntervals(self, _):
    return self._v.StashIntervals(self._k)


def CostVector(costs, mode: str, num_micro_batches: int = 1,
               slots_per_weight: int = 1) -> List[float]:
  """Per-cell cost the balancer equalises for partition `mode`."""
  cells = costs.cells
  if mode == 'params':
    return [float(c.param_bytes) for c in cells]
  if mode == 'flops':
    return [float(c.fwd_flops + c.bwd_flops) for c in cells]
  if mode == 'time':
    if any(c.fwd_s is None for c in cells):
      raise PlanError("partition 'time' needs measured cell times "
                      '(costs.TraceNetwork(..., measure=True)).')
    return [c.fwd_s + c.bwd_s for c in cells]
  if mode == 'memory':
    # Persistent bytes plus the activations a stage keeps per micro-batch
    # in flight (its residuals, at most M of them).
    return [float(c.param_bytes * (2 + slots_per_weight) + c.state_bytes +
                  num_micro_batches * (c.residual_bytes +
                                       c.input_residual_bytes))
            for c in cells]
  raise PlanError(f'unknown partition mode {mode!r}; use one of '
                  f'{partition_lib.COST_MODES}.')


def BalancedPartition(costs, mode: str, num_stages: int, schedule: str,
                      num_micro_batches: int, remat: Sequence[bool],
                      slots_per_weight: int = 1,
                      budgets: Optional[Sequence[float]] = None):
  """Exact min-max cut of the cells by `mode`, within the per-stage memory
  budgets if given; a cut that cannot fit raises PlanError saying what
  would (more stages, more micro-batches, remat)."""
  vec = CostVector(costs, mode, num_micro_batches, slots_per_weight)
  fn = None
  if budgets is not None:
    fn = StageBytesFn(costs, schedule, num_stages, num_micro_batches, remat,
                      slots_per_weight)
  try:
    return partition_lib.Balance(vec, num_stages, fn, budgets)
  except partition_lib.BudgetError as e:
    raise PlanError(f'{e}. {Suggest(costs, mode, num_stages, schedule, num_micro_batches, remat, slots_per_weight, budgets)}') from None


def Suggest(costs, mode, num_stages, schedule, num_micro_batches, remat,
            slots_per_weight, budgets):
  """What would fit: more stages, more micro-batches (same batch), or
  re-materialization, each tried with the same budget per device."""
  tips = []
  per_device = max(budgets)
  batch = costs.batch * num_micro_batches

  def Fits(k, m, flags):
    c = costs.Scaled(batch // m)
    try:
      partition_lib.Balance(
          CostVector(c, mode, m, slots_per_weight), k,
          StageBytesFn(c, schedule, k, m, flags, slots_per_weight),
          [per_device] * k)
      return True
    except partition_lib.PartitionError:
      return False

  if not all(remat) and Fits(num_stages, num_micro_batches,
                             [True] * num_micro_batches):
    tips.append("remat 'always'")
  for m in range(num_micro_batches + 1, batch + 1):
    if batch % m == 0 and Fits(num_stages, m, [True] * m if all(remat)
                               else [False] * m):
      tips.append(f'num_micro_batches={m}')
      break
  for k in range(num_stages + 1, min(len(costs.cells), 4 * num_stages) + 1):
    if Fits(k, num_micro_batches, remat):
      tips.append(f'num_stages={k}')
      break
  if not tips:
    return ('Nothing tried fits (more stages, more micro-batches, remat); '
            'raise the budget or shrink the model.')
  return 'Would fit with ' + ' or '.join(tips) + '.'
