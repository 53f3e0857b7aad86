"""Configuration search: the pipeline the framework would choose.

Given the devices (count N, bytes per device) and the global batch, the
search enumerates stages x replicas (K * R <= N, R dividing the batch),
micro-batches M (dividing the replica's batch), schedules and their
virtual stages v, and re-materialization (none, a per-cell choice, the
policies); inside each point it cuts the cells exactly (partition.Balance
on the cells' times, under the budget of each stage's position in the
schedule: plan.BalancedPartition) and ranks the points by predicted
examples per second (plan.MakePlan's step time). Pure Python on the cell
costs: no TensorFlow, no devices.

Pruning keeps it to seconds for K up to 64:
- a point's step is bounded below by its schedule's timeline on perfectly
  balanced chunks (no cut can do better, up to the host model); points are
  evaluated best bound first and the search stops once the bound is slower
  than the k-th best found;
- a stage count whose weights, slots and accumulators alone exceed the
  budget on average is rejected before any cut;
- the per-cell recompute is the smallest prefix of recompute.Ladder that
  fits (binary search), tried only when keeping every activation does not.
"""
import collections
import dataclasses
import functools
import heapq
import inspect
import math
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from gpipe_lingvo.planning import partition as partition_lib
from gpipe_lingvo.planning import plan as plan_lib
from gpipe_lingvo.planning import schedule_view
from gpipe_lingvo.planning import recompute

POLICIES = ('never', 'except_last', 'always')
CELLS = 'cells'  # the per-cell recompute choice
# executor.AUTO_DATAFLOW_MAX_ACTIONS (restated: no TensorFlow here).
AUTO_DATAFLOW_MAX_ACTIONS = 256
# Predictions within this fraction of the fastest are equal for the
# search: below the plan's resolution (docs/search.md), they are ordered by
# _Preference instead of by a difference the plan cannot vouch for.
TIE_BAND = 0.01
# The search's choice is checked by replaying its step through the
# simulated allocator (Searcher._Replayed) when the step runs at most this
# many ops: some 3 s of the search's time.
REPLAY_MAX_OPS = 60_000
# Virtual stages tried per schedule (the others take v = 1).
VIRTUAL = {'interleaved_1f1b': (2, 3, 4), 'zb_v': (2,)}


@dataclasses.dataclass(frozen=True)
class Space:
  """What may vary. A field left None varies freely; a tuple lists the
  values allowed (a field the user fixed has one)."""
  num_devices: int
  batch_size: int
  budget_bytes: Optional[float] = None     # per device
  max_replicas: int = 1
  num_stages: Optional[Tuple[int, ...]] = None
  num_micro_batches: Optional[Tuple[int, ...]] = None
  schedules: Tuple[str, ...] = tuple(schedule_view.SCHEDULES)
  virtual_stages: Optional[Tuple[int, ...]] = None
  remat: Tuple = POLICIES + (CELLS,)  # policies, CELLS, or per-cell tuples
  partition: object = 'auto'  # 'auto': the exact cut; else a fixed spec
  max_micro_batches: int = 64
  execution: str = 'auto'  # 'auto': executor.ChooseExecution's rule


@dataclasses.dataclass
class Point:
  """One evaluated configuration."""
  num_stages: int
  num_replicas: int
  num_micro_batches: int
  schedule: str
  virtual_stages: int
  remat: object        # a policy name or a tuple of per-cell flags
  partition: List[int]
  step_s: float
  bubble: float
  peak_bytes: int      # the largest device's
  examples_per_s: float
  plan: dict = dataclasses.field(repr=False, default=None)
  execution: str = 'dataflow'

  def Overrides(self, prefix: str = 'task.network') -> str:
    """The --model_params_override text that reproduces this point."""
    remat = (f'"{self.remat}"' if isinstance(self.remat, str) else
             '"' + str([bool(f) for f in self.remat]) + '"')
    parts = [f'{prefix}.num_stages = {self.num_stages}',
             f'{prefix}.num_micro_batches = {self.num_micro_batches}',
             f'{prefix}.schedule = "{self.schedule}"',
             f'{prefix}.virtual_stages = {self.virtual_stages}',
             f'{prefix}.remat = {remat}',
             f'{prefix}.partition = "{self.partition}"',
             f'{prefix}.execution = "{self.execution}"']
    if self.num_replicas > 1:
      parts.append(f'{prefix}.topology.num_replicas = {self.num_replicas}')
    return '; '.join(parts)

  def RematText(self) -> str:
    if isinstance(self.remat, str):
      return self.remat
    return 'cells ' + ''.join('R' if f else '.' for f in self.remat)


# Tables are pure functions of (schedule, K, M, v) and cost a schedule's
# simulation to build: the bounds, the cuts and the plans share them.
_Table = functools.lru_cache(maxsize=1024)(schedule_view.Table)


@dataclasses.dataclass(frozen=True)
class _Pipeline(plan_lib.Pipeline):
  """A plan_lib.Pipeline whose table comes from the search's cache."""

  def Table(self) -> schedule_view.TickTable:
    return _Table(self.schedule, self.num_stages, self.num_micro_batches,
                  self.virtual_stages)


@functools.lru_cache(maxsize=1024)
def _TickProfile(schedule: str, k: int, m: int, v: int) -> tuple:
  """The table's ticks as ((distinct per-device (F, B, W) counts, their
  sum), number of such ticks): on equal chunks a tick lasts its busiest
  device's count times the costs, whatever its position."""
  table = _Table(schedule, k, m, v)
  kinds = (schedule_view.F, schedule_view.B, schedule_view.W)
  ticks = collections.Counter()
  for row in table.ticks:
    held = collections.Counter(tuple(a.kind for a in acts) for acts in row)
    per_device = frozenset(tuple(sig.count(x) for x in kinds)
                           for sig in held)
    total = tuple(sum(n * sig.count(x) for sig, n in held.items())
                  for x in kinds)
    ticks[(per_device, total)] += 1
  return tuple(ticks.items())


def ClearCaches() -> None:
  """Forgets the tables (for timing one search on its own)."""
  _Table.cache_clear()
  _TickProfile.cache_clear()


def _Divisors(n: int) -> List[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


class Searcher:
  """Evaluates configurations on cell costs.

  costs_at(micro_batch) -> NetworkCosts at that micro-batch size (with
  measured times, or FLOPs and flops_per_s). host_parallelism(K): how many
  actions the host runs at once (plan.MakePlan). plan_kwargs: passed to
  plan.MakePlan when it accepts them (e.g. the execution it models)."""

  def __init__(self, costs_at: Callable, space: Space,
               opt: plan_lib.Optimizer = plan_lib.Optimizer(),
               host_parallelism: Callable[[int], float] = lambda k: 1.0,
               flops_per_s: Optional[float] = None, shared_host: bool = True,
               overheads: plan_lib.Overheads = plan_lib.Overheads(),
               plan_kwargs: Optional[dict] = None, action_s: float = 0.0,
               more_devices_first: bool = True):
    self.costs_at = costs_at
    self.space = space
    self.opt = opt
    self.host_parallelism = host_parallelism
    self.flops_per_s = flops_per_s
    self.shared_host = shared_host
    self.overheads = overheads
    # The executor's own cost per action (a call, its buffer reads and
    # writes), measured (auto.ActionSeconds): the plan's dataflow timeline
    # adds it to every action (Overheads.action_s).
    if action_s and not overheads.action_s:
      self.overheads = dataclasses.replace(overheads, action_s=action_s)
    self.action_s = self.overheads.action_s
    accepted = inspect.signature(plan_lib.MakePlan).parameters
    self.plan_kwargs = {k: v for k, v in (plan_kwargs or {}).items()
                        if k in accepted}
    self._costs: Dict[int, object] = {}
    self._rows: Dict[tuple, list] = {}
    self._kinds: Dict[str, int] = {}
    self.evaluated = 0
    self.bounded = 0  # configurations pruned by a bound
    self.cut_pruned = 0  # cuts whose timeline alone is too slow
    # Top points the allocator replay did not fit, with their plans.
    self.replay_dropped: List[Point] = []
    self._cutoff = None  # seconds: the k-th best step found (Search)
    # Devices that share one host which the plan runs one action at a time
    # overlap in fact (docs/search.md): there near-equal predictions are
    # ordered by _Preference.
    hp = host_parallelism(2)
    self.band = (TIE_BAND if shared_host and hp is not None and hp <= 1
                 else 0.0)
    # Which way the host's measured split goes (auto.MoreDevicesFirst):
    # among equal predictions, more devices first or fewer.
    self.more_devices_first = more_devices_first

  # -- pieces ------------------------------------------------------------------

  def Costs(self, micro: int):
    if micro not in self._costs:
      self._costs[micro] = self.costs_at(micro)
    return self._costs[micro]

  def _Table(self, schedule, k, m, v):
    return _Table(schedule, k, m, v)

  def _Mode(self, costs) -> str:
    return 'time' if costs.cells[0].fwd_s is not None else 'flops'

  def Candidates(self, num_cells: int) -> Iterator[tuple]:
    """(R, K, M, schedule, v) that can run: the schedule accepts them and
    every chunk gets a cell."""
    s = self.space
    for r in _Divisors(s.num_devices):
      if r > s.max_replicas or s.batch_size % r:
        continue
      per_replica = s.batch_size // r
      ks = s.num_stages or range(1, s.num_devices // r + 1)
      ms = s.num_micro_batches or [m for m in _Divisors(per_replica)
                                   if m <= s.max_micro_batches]
      for k in ks:
        if k * r > s.num_devices or k > num_cells:
          continue
        for m in ms:
          if per_replica % m:
            continue
          for sched in s.schedules:
            vs = s.virtual_stages or VIRTUAL.get(sched, (1,))
            if k == 1 and not s.num_stages and (sched, 1) != (
                s.schedules[0], 1):
              # One stage: every schedule and chunking runs the same
              # forwards and backwards; the first schedule stands for all.
              continue
            for v in vs:
              if k * v > num_cells:
                continue
              try:
                schedule_view.CheckConfig(sched, k, m, v)
              except schedule_view.ScheduleError:
                continue
              yield r, k, m, sched, v

  def WorkBound(self, r, k, m, sched, v) -> float:
    """A bound without the table: each device's share of the work and of
    the actions' own cost (the host's share when it runs fewer actions at
    once than there are devices)."""
    costs = self.Costs(self.space.batch_size // (r * m))
    f, b, w = plan_lib.ChunkTimes(costs, 0, len(costs.cells),
                                  self.flops_per_s)
    if f is None:
      return 0.0
    hp = self.host_parallelism(k)
    work = ((m * (f + b + w) + self._ActionsSeconds(sched, k, m, v)) /
            min(k, max(hp, 1.0)))
    # Every micro-batch runs its forwards chunk after chunk, then its
    # input-gradient backwards in reverse: one such chain bounds any cut.
    split = self._Kinds(sched) == 3  # W apart from B
    chain = f + b + (0.0 if split else w) + 2 * k * v * self.action_s
    return max(work, chain) + self.overheads.step_s

  def LowerBound(self, r, k, m, sched, v) -> float:
    """A lower bound of the point's step seconds: under the tick loop, its
    schedule's timeline on perfectly balanced chunks, nothing recomputed."""
    costs = self.Costs(self.space.batch_size // (r * m))
    n = k * v
    f, b, w = plan_lib.ChunkTimes(costs, 0, len(costs.cells),
                                  self.flops_per_s)
    if f is None:
      return 0.0
    if self.Execution(sched, k, m, v) == 'dataflow':
      # Without lockstep ticks an uneven cut can shorten the fill (a light
      # first chunk): balanced chunks bound nothing, the work does.
      return self.WorkBound(r, k, m, sched, v)
    return max(self.WorkBound(r, k, m, sched, v),
               self._BalancedTicks(sched, k, m, v, (f / n, b / n, w / n)))

  def _BalancedTicks(self, sched, k, m, v, cost) -> float:
    """TickTable.Timeline's duration on equal chunks (nothing recomputed),
    from the table's distinct ticks."""
    f, b, w = cost
    if not _Table(sched, k, m, v).split_backward:
      b += w  # a full backward
    hp = self.host_parallelism(k)
    serial = hp is not None and hp <= 1
    out = 0.0
    for (per_device, total), count in _TickProfile(sched, k, m, v):
      work = total[0] * f + total[1] * b + total[2] * w
      if serial:
        tick = work
      else:
        tick = max(nf * f + nb * b + nw * w for nf, nb, nw in per_device)
        if hp is not None:
          tick = max(tick, work / hp)
      out += count * (self.overheads.tick_s + tick)
    return out + self.overheads.step_s

  def _StaticFits(self, k, costs) -> bool:
    """The weights, slots and accumulators alone, spread evenly, fit."""
    budget = self.space.budget_bytes
    if not budget:
      return True
    whole = plan_lib.ChunkStatic(costs, 0, len(costs.cells), self.opt)
    static = plan_lib.StaticBytes(whole) + whole['decay_bytes']
    return static / k <= budget

  def Plan(self, costs, pipe: plan_lib.Pipeline) -> Optional[dict]:
    """The plan of the exact cut under the budget, or None if none fits.

    The cut balancing the cost without a budget is tried first; when it
    does not fit (v = 1), the exact cut under the budget of each stage's
    position (partition.Balance with `StageBytes`), which the plan then
    confirms."""
    budgets = (None if not self.space.budget_bytes else
               [float(self.space.budget_bytes)] * pipe.num_stages)
    spec = self.space.partition
    balanced = spec == 'auto' or spec in partition_lib.COST_MODES
    mode = self._Mode(costs) if spec == 'auto' else spec
    try:
      if balanced:
        vec = plan_lib.CostVector(costs, mode, pipe.num_micro_batches,
                                  self.opt)
        ranges = partition_lib.Balance(vec, pipe.num_chunks)
      else:
        ranges = partition_lib.Partition(len(costs.cells), pipe.num_chunks,
                                         spec)
      if (balanced and mode in ('time', 'flops') and
          pipe.virtual_stages == 1 and
          self._Slower(costs, ranges, pipe, timeline=False)):
        # The min-max cut's busiest device bounds every cut's.
        return None
      fast = (self.StageBytes(costs, pipe)
              if budgets and balanced and pipe.virtual_stages == 1 else None)
      if fast is None or all(fast(k, a, b) <= budgets[k]
                             for k, (a, b) in enumerate(ranges)):
        if self._Slower(costs, ranges, pipe):
          return None
        plan = self._MakePlan(costs, ranges, pipe, budgets)
        if plan['fits'] or fast is None:
          return plan if plan['fits'] else None
      ranges = partition_lib.Balance(vec, pipe.num_chunks, fast, budgets)
      if self._Slower(costs, ranges, pipe):
        return None
      plan = self._MakePlan(costs, ranges, pipe, budgets)
      return plan if plan['fits'] else None
    except (plan_lib.PlanError, partition_lib.PartitionError):
      return None

  def _Slower(self, costs, ranges, pipe, timeline: bool = True) -> bool:
    """The cut's step (its busiest device's work; then, with `timeline`,
    the plan's timeline alone) is slower than the search's cutoff (the
    k-th best found): no plan needed."""
    if self._cutoff is None:
      return False
    times = [plan_lib.ChunkTimes(costs, a, b, self.flops_per_s)
             for a, b in ranges]
    if times[0][0] is None:
      return False
    table = pipe.Table()
    hp = self.host_parallelism(pipe.num_stages)
    # First the busiest device's work (and the host's share), O(K).
    rerun = sum(pipe.remat)
    work = [0.0] * pipe.num_stages
    for c, (f, b, w) in enumerate(times):
      work[table.chunk_device[c]] += (pipe.num_micro_batches * (f + b + w) +
                                      rerun * f)
    if _Above(max(max(work), sum(work) / min(pipe.num_stages, max(hp, 1.0))),
              self._cutoff):
      self.cut_pruned += 1
      return True
    if not timeline:
      return False
    cost = lambda kind, c: times[c]['FBW'.index(kind)]
    if pipe.execution == 'dataflow':
      step = plan_lib.DataflowTimeline(table, cost, list(pipe.remat), hp,
                                       self.overheads.action_s).duration
    else:
      step = table.Timeline(cost, remat=list(pipe.remat),
                            host_parallelism=hp,
                            tick_overhead=self.overheads.tick_s).duration
    if _Above(step, self._cutoff):
      self.cut_pruned += 1
      return True
    return False

  def _Rows(self, pipe: plan_lib.Pipeline):
    """Per device k (one chunk each): the distinct (buffered entries of
    its inputs + the gradients of its input, of its residuals, of its
    weight inputs; the same three of slots written again under 'ticks';
    its actions) over the ticks, as plan.TickMemory counts them."""
    key = (pipe.schedule, pipe.num_stages, pipe.num_micro_batches,
           pipe.remat, pipe.execution)
    if key not in self._rows:
      table = self._Table(pipe.schedule, pipe.num_stages,
                          pipe.num_micro_batches, 1)
      counts = [plan_lib.BufferCounts(table, c, pipe.remat, pipe.execution)
                for c in range(table.num_chunks)]
      again = [plan_lib.RewriteCounts(table, c, pipe.remat, pipe.execution)
               for c in range(table.num_chunks)]
      zero = [0] * table.num_ticks
      rows = []
      for k in range(pipe.num_stages):
        grads = counts[k - 1]['grads'] if k else zero
        grads_again = again[k - 1]['grads'] if k else zero
        rows.append(_Undominated({
            (counts[k]['inputs'][t] + grads[t], counts[k]['residuals'][t],
             counts[k]['weight_inputs'][t],
             again[k]['inputs'][t] + grads_again[t],
             again[k]['residuals'][t], again[k]['weight_inputs'][t],
             frozenset((a.kind, bool(pipe.remat[a.mb]))
                       for a in table.ticks[t][k]))
            for t in range(table.num_ticks)}))
      self._rows[key] = rows
    return self._rows[key]

  def StageBytes(self, costs, pipe: plan_lib.Pipeline):
    """stage_bytes(k, a, b) for partition.Balance: plan.StageBytesFn's
    model (device k's buffers and actions, tick by tick), evaluated on the
    distinct ticks only."""
    rows = self._Rows(pipe)
    acts = {}
    kinds = [(x, flag) for x in (schedule_view.F, schedule_view.B,
                                 schedule_view.W) for flag in (False, True)]

    def Bytes(k, a, b):
      if (a, b) not in acts:
        act = plan_lib.ChunkActivations(costs, a, b)
        work = {(x, flag): plan_lib._ActionWork(  # pylint: disable=protected-access
            schedule_view.Action(x, 0, 0), act, [flag]) for x, flag in kinds}
        acts[(a, b)] = (act, work,
                        plan_lib.ChunkStatic(costs, a, b, self.opt))
      act, work, static = acts[(a, b)]
      busiest = max(
          (n_in + r_in) * act['input_bytes'] +
          (n_res + r_res) * act['residual_bytes'] +
          (n_wi + r_wi) * act['weight_input_bytes'] +
          max([work[x] for x in actions] or [0])
          for n_in, n_res, n_wi, r_in, r_res, r_wi, actions in rows[k])
      return plan_lib.PeakBytes(static, [busiest], self.opt)

    return Bytes

  def _MakePlan(self, costs, ranges, pipe, budgets, **kwargs):
    self.evaluated += 1
    return plan_lib.MakePlan(
        costs, ranges, pipe, self.opt, budgets, shared_host=self.shared_host,
        host_parallelism=self.host_parallelism(pipe.num_stages),
        flops_per_s=self.flops_per_s, overheads=self.overheads,
        **{**self.plan_kwargs, **kwargs})

  def _Inputs(self, r, k, m, sched, v, remat):
    """(costs, pipeline) of a configuration with one remat choice."""
    base = self.Costs(self.space.batch_size // (r * m))
    if isinstance(remat, str):
      costs, flags = base, plan_lib_flags(remat, m)
    else:
      costs, flags = recompute.Apply(base, remat), (False,) * m
    return costs, _Pipeline(sched, k, m, flags, v,
                            self.Execution(sched, k, m, v))

  def Evaluate(self, r, k, m, sched, v, remat) -> Optional[Point]:
    """One configuration with one remat choice (a policy, or per-cell
    flags); None if it does not fit."""
    costs, pipe = self._Inputs(r, k, m, sched, v, remat)
    plan = self.Plan(costs, pipe)
    if plan is None or not plan.get('step_s'):
      return None
    step = plan['step_s']
    return Point(k, r, m, sched, v, remat, list(plan['partition']),
                 step, plan['bubble'],
                 max(s['peak_bytes'] for s in plan['stages']),
                 self.space.batch_size / step, plan, pipe.execution)

  def Execution(self, sched, k, m, v) -> str:
    """The execution a configuration runs ('auto': the runtime's rule)."""
    if self.space.execution != 'auto':
      return self.space.execution
    n = k * v * m * self._Kinds(sched)
    return 'dataflow' if n <= AUTO_DATAFLOW_MAX_ACTIONS else 'ticks'

  def _Kinds(self, sched) -> int:
    """Actions per chunk and micro-batch: F and B, and W when the schedule
    splits the backward."""
    if sched not in self._kinds:
      small = self._Table(sched, 2, 4, VIRTUAL.get(sched, (1,))[0])
      self._kinds[sched] = len({a.kind for acts in small.actions
                                for a in acts})
    return self._kinds[sched]

  def _ActionsSeconds(self, sched, k, m, v) -> float:
    """The executor's own cost of all the step's actions."""
    if not self.action_s:
      return 0.0
    return self.action_s * k * v * m * self._Kinds(sched)

  def Best(self, r, k, m, sched, v) -> Optional[Point]:
    """The fastest remat choice of a configuration that fits."""
    base = self.Costs(self.space.batch_size // (r * m))
    if not self._StaticFits(k, base):
      return None
    found = []
    allowed = self.space.remat
    fixed = [x for x in allowed if not isinstance(x, str)]
    for flags in fixed:
      found.append(self.Evaluate(r, k, m, sched, v, tuple(flags)))
    if 'never' in allowed:
      p = self.Evaluate(r, k, m, sched, v, 'never')
      if p is not None:
        return p  # Nothing recomputed: nothing can be faster.
    if CELLS in allowed:
      found.append(self._CheapestCells(r, k, m, sched, v, base))
    for policy in ('except_last', 'always'):
      if policy in allowed:
        found.append(self.Evaluate(r, k, m, sched, v, policy))
    found = [p for p in found if p is not None]
    return min(found, key=lambda p: p.step_s) if found else None

  def _CheapestCells(self, r, k, m, sched, v, base) -> Optional[Point]:
    """The shortest prefix of the recompute ladder that fits."""
    ladder = recompute.Ladder(base)
    n = len(base.cells)
    lo, hi, best = 1, len(ladder), None
    while lo <= hi:
      mid = (lo + hi) // 2
      p = self.Evaluate(r, k, m, sched, v, recompute.Flags(n, ladder, mid))
      if p is None:
        lo = mid + 1
      else:
        best, hi = p, mid - 1
    # Fitting is not quite monotone in the prefix (the cut and the runs'
    # inputs change): step down while a shorter prefix still fits.
    while best is not None and sum(best.remat) > 0:
      p = self.Evaluate(r, k, m, sched, v,
                        recompute.Flags(n, ladder, sum(best.remat) - 1))
      if p is None:
        break
      best = p
    # A cell or two more can allow a better cut.
    for more in (1, 2):
      if best is None or sum(best.remat) + more > len(ladder):
        break
      p = self.Evaluate(r, k, m, sched, v,
                        recompute.Flags(n, ladder, sum(best.remat) + more))
      if p is not None and p.step_s < best.step_s:
        return p
    return best

  # -- the search --------------------------------------------------------------

  def Search(self, top: int = 10) -> List[Point]:
    """The `top` best configurations that fit, in `Order`."""
    num_cells = len(self.Costs(self.space.batch_size).cells)
    cands = [(self.WorkBound(*c), c) for c in self.Candidates(num_cells)]
    cands.sort(key=lambda x: x[0])
    found: List[Point] = []
    steps: List[float] = []  # the `top` fastest steps, as a max-heap
    try:
      for i, (bound, cand) in enumerate(cands):
        # A point slower than the top-th step and outside the band of
        # equal predictions (TIE_BAND) cannot be among the top.
        self._cutoff = (max(-steps[0], min(found_steps) * (1 + self.band))
                        if len(steps) >= top else None)
        if self._cutoff is not None and _Above(bound, self._cutoff):
          self.bounded += len(cands) - i
          break
        if self._cutoff is not None and _Above(self.LowerBound(*cand),
                                               self._cutoff):
          self.bounded += 1
          continue
        p = self.Best(*cand)
        if p is None:
          continue
        found.append(p)
        found_steps = [q.step_s for q in found]
        heapq.heappush(steps, -p.step_s)
        if len(steps) > top:
          heapq.heappop(steps)
    finally:
      self._cutoff = None
    return self._Replayed(Order(found, self.band,
                                self.more_devices_first))[:top]

  def _Replayed(self, points: List[Point]) -> List[Point]:
    """`points` from the first whose plan still fits with the step's ops
    replayed through the simulated allocator (plan.MakePlan's allocator:
    on a shared host under dataflow, the blocks the host's one allocator
    hands out, against the devices' budgets summed). That point carries
    the replayed plan, as --mode=plan prints it; the ones before it are
    dropped. One replay per point tried (up to REPLAY_MAX_OPS ops, some
    3 s): the search ranks on the liveness model alone."""
    if not self.shared_host:
      return points
    for i, p in enumerate(points):
      costs, pipe = self._Inputs(p.num_replicas, p.num_stages,
                                 p.num_micro_batches, p.schedule,
                                 p.virtual_stages, p.remat)
      ranges = partition_lib.Partition(len(costs.cells), pipe.num_chunks,
                                       list(p.partition))
      budgets = (None if not self.space.budget_bytes else
                 [float(self.space.budget_bytes)] * pipe.num_stages)
      plan = self._MakePlan(costs, ranges, pipe, budgets, allocator=True,
                            allocator_max_ops=REPLAY_MAX_OPS)
      if plan['fits']:
        return [dataclasses.replace(p, plan=plan)] + points[i + 1:]
      self.replay_dropped.append(dataclasses.replace(p, plan=plan))
    return []


def Order(points: Sequence[Point], band: float = TIE_BAND,
          more_devices_first: bool = True) -> List[Point]:
  """Points within `band` of the fastest prediction first, preferring
  more devices, or fewer when not more_devices_first (_Preference); then
  the others, fastest first. band 0: fastest first, ties to the simpler
  configuration (_Rank)."""
  if not points or not band:
    return sorted(points, key=_Rank)
  fastest = min(p.step_s for p in points)
  tied = [p for p in points if p.step_s <= fastest * (1 + band)]
  rest = [p for p in points if p.step_s > fastest * (1 + band)]
  sign = -1 if more_devices_first else 1
  return (sorted(tied, key=lambda p: _Preference(p, sign))
          + sorted(rest, key=_Rank))


def _Above(seconds: float, cutoff: float) -> bool:
  """Slower than the cutoff at _Rank's precision (ties are not pruned)."""
  return round(seconds, 9) > round(cutoff, 9)


def _Undominated(rows: set) -> list:
  """The rows no other row covers (entries at least as many in every
  count, a superset of its non-empty action kinds, the last field): bytes
  are >= 0, so a covered row is never the busiest."""
  out = []
  for r in sorted(rows, key=lambda r: (-sum(r[:-1]), -len(r[-1]))):
    if not any(all(x >= y for x, y in zip(o[:-1], r[:-1])) and (
        r[-1] <= o[-1] if r[-1] else not o[-1]) for o in out):
      out.append(r)
  return out


def _Preference(p: Point, sign: int = -1) -> tuple:
  """Among equal predictions: more devices (sign -1) or fewer (+1), as
  the host measured a step split over two devices (the plan of a shared
  host credits no overlap of their actions, nor charges for the split:
  docs/search.md); then fewer chunks per device and micro-batches, less
  recompute."""
  recomputed = (POLICIES.index(p.remat) if isinstance(p.remat, str)
                else 0.5 + sum(p.remat) / (len(p.remat) + 1))
  return (sign * p.num_stages * p.num_replicas, p.virtual_stages,
          p.num_micro_batches, recomputed,
          schedule_view.SCHEDULES.index(p.schedule), p.step_s)


def _Rank(p: Point) -> tuple:
  """Fastest first; among equal predictions, the simpler configuration
  (fewer devices, chunks and micro-batches, less recompute)."""
  recomputed = (POLICIES.index(p.remat) if isinstance(p.remat, str)
                else 0.5 + sum(p.remat) / (len(p.remat) + 1))
  return (round(p.step_s, 9), p.num_stages * p.num_replicas,
          p.virtual_stages, p.num_micro_batches, recomputed,
          schedule_view.SCHEDULES.index(p.schedule))


def plan_lib_flags(policy: str, m: int) -> tuple:
  """Per micro-batch recompute flags of a policy (executor.RematFlags,
  without importing TensorFlow)."""
  if policy == 'always':
    return (True,) * m
  if policy == 'never':
    return (False,) * m
  if policy == 'except_last':
    return (True,) * (m - 1) + (False,)
  raise ValueError(f'unknown remat policy {policy!r}')


def FormatTop(points: Sequence[Point], budget: Optional[float] = None) -> str:
  """The markdown table --search prints."""
  mib = lambda n: f'{n / 2**20:.1f}'
  lines = ['| rank | K x R | M | schedule | v | remat | partition | '
           'step ms | bubble | peak MiB/device | examples/s |',
           '|' + '---|' * 11]
  for i, p in enumerate(points):
    lines.append(
        f'| {i + 1} | {p.num_stages} x {p.num_replicas} | '
        f'{p.num_micro_batches} | {p.schedule} | {p.virtual_stages} | '
        f'{p.RematText()} | {p.partition} | {p.step_s * 1e3:.1f} | '
        f'{p.bubble:.3f} | {mib(p.peak_bytes)} | {p.examples_per_s:.1f} |')
  lines.append('')
  for i, p in enumerate(points):
    lines.append(f"{i + 1}: --model_params_override='{p.Overrides()}'")
  return '\n'.join(lines)


def ReplayLine(plan: dict, dropped: Sequence[Point] = ()) -> str:
  """What the allocator replay said of the choice and of the faster
  points it dropped (Searcher._Replayed)."""
  mib = lambda n: f'{n / 2**20:.1f} MiB'
  if plan.get('allocator_blocks_bytes') is None:
    return ('1: not replayed through the simulated allocator (a device of '
            'its own, the tick loop, unrecorded cell programs, or more than '
            f'{REPLAY_MAX_OPS} ops a step)')
  line = (f"1: host peak {mib(plan['host_peak_bytes'])} with the step's ops "
          f"replayed through a simulated BFC allocator (tensors asking "
          f"{mib(plan['allocator_asked_bytes'])} hold blocks of "
          f"{mib(plan['allocator_blocks_bytes'])})")
  for p in dropped:
    line += (f'\ndropped, faster but its replayed host peak '
             f"{mib(p.plan['host_peak_bytes'])} is above the devices' "
             f'budgets summed: K={p.num_stages} M={p.num_micro_batches} '
             f'{p.schedule} v={p.virtual_stages} {p.RematText()} '
             f'{p.partition}')
  return line
