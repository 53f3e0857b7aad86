"""Pipeline schedules as data.

A schedule is, per device, the ordered list of actions it performs. An
action (kind, chunk, micro-batch) prints like `2F0`: F runs the forward of
model chunk 2 on micro-batch 0, B its backward (only the input gradient
when the schedule splits the backward), W its weight gradient. The cells
are cut into chunks (K per pipeline, or K*v with v virtual stages);
`chunk_device[c]` is the device holding chunk c.

The executor runs lockstep clock ticks. Each tick, every device runs at most
one F, then at most one B, then at most one W (schedules marked
`one_action_per_tick` run at most one action in all). An action may run at
tick t when:
  F(c, i): F(c-1, i) ran at an earlier tick (activations cross at tick ends);
  B(c, i): B(c+1, i) ran at an earlier tick; for the last chunk, F(c, i) ran
           at an earlier tick or earlier in this one;
  W(c, i): B(c, i) ran at an earlier tick or earlier in this one.
`TickTable` packs each device's list in order, every action at the first
tick it may run. The executor, the analytics (bubble, peak stash, buffer
slots) and the timeline simulator all read that table, so what is reported
is what runs.
"""
import dataclasses
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

F, B, W = 'F', 'B', 'W'


class Action(NamedTuple):
  kind: str  # 'F', 'B' or 'W'
  chunk: int
  mb: int

  def __str__(self) -> str:
    return f'{self.chunk}{self.kind}{self.mb}'


# Op names. Both executions run an action's ops under a name scope naming it,
# so a profile's ops can be matched to the table (planning/measure.py).
RECOMPUTE_SCOPE = 'recompute'  # inside a B's scope: the forward it reruns
_ACTION_SCOPE_RE = re.compile(r'(?:^|/)action_(\d+)([FBW])(?:/mb(\d+))?(?:/|$)')


class ActionOp(NamedTuple):
  """What an op's name says about the action it is part of."""
  kind: str
  chunk: int
  mb: Optional[int]  # None: the tick loop's names (a loop iteration gives it)
  recompute: bool    # part of the forward a B reruns


def ActionScope(kind: str, chunk: int, mb: Optional[int] = None) -> str:
  """Name scope of one action's ops: `action_2F` in the tick loop (its
  micro-batch follows from the loop iteration), `action_2F/mb5` in the
  dataflow execution (no loop iteration to map it through)."""
  return f'action_{chunk}{kind}' + ('' if mb is None else f'/mb{mb}')


def ParseActionScope(name: str) -> Optional[ActionOp]:
  """The action an op named inside an ActionScope belongs to, else None."""
  m = _ACTION_SCOPE_RE.search(name)
  if m is None:
    return None
  return ActionOp(m.group(2), int(m.group(1)),
                  None if m.group(3) is None else int(m.group(3)),
                  f'/{RECOMPUTE_SCOPE}/' in name)


class ScheduleError(ValueError):
  """Unknown schedule, unsupported combination, or a list that cannot run."""


@dataclasses.dataclass(frozen=True)
class _Kind:
  doc: str
  split_backward: bool = False       # B and W are separate actions.
  one_action_per_tick: bool = False
  virtual_stages: Optional[int] = 1  # chunks per device; None: any (>= 1).


_KINDS = {
    'gpipe': _Kind('fill-drain: all forwards, then all backwards'),
    '1f1b': _Kind('one forward one backward after 2(K-1-d) warm-up forwards '
                  '(the lockstep count that keeps every device busy)'),
    '1f1b_classic': _Kind('one forward one backward after K-1-d warm-ups '
                          '(at most K-d stashed, larger bubble in lockstep)'),
    'interleaved_1f1b': _Kind('1f1b over v chunks per device (device d holds '
                              'chunks d, d+K, ...)', virtual_stages=None),
    'zb_h1': _Kind('zero bubble H1: backward split into B and W, W fills '
                   'idle ticks, at most K micro-batches stashed per device',
                   split_backward=True, one_action_per_tick=True),
    'zb_v': _Kind('zero bubble V: two chunks per device in V order (device d '
                  'holds chunks d and 2K-1-d), B/W split',
                  split_backward=True, one_action_per_tick=True,
                  virtual_stages=2),
}
SCHEDULES = tuple(_KINDS)
FORWARD_ONLY = 'forward_only'


def Describe(name: str) -> str:
  return _KINDS[name].doc


def SplitsBackward(name: str) -> bool:
  return name in _KINDS and _KINDS[name].split_backward


def CheckConfig(name: str, num_devices: int, num_micro_batches: int,
                virtual_stages: int = 1) -> None:
  """Raises ScheduleError naming the fields if the combination cannot run."""
  if name not in _KINDS:
    raise ScheduleError(f'Unknown schedule {name!r}; use one of {SCHEDULES}.')
  for field, value in (('num_stages', num_devices),
                       ('num_micro_batches', num_micro_batches),
                       ('virtual_stages', virtual_stages)):
    if not isinstance(value, int) or value < 1:
      raise ScheduleError(f'{field} must be a positive int, got {value!r}.')
  want = _KINDS[name].virtual_stages
  if want is not None and virtual_stages != want:
    raise ScheduleError(
        f"schedule={name!r} runs {want} chunk(s) per device: set "
        f'virtual_stages={want} (got virtual_stages={virtual_stages}), or '
        "use schedule='interleaved_1f1b' for other chunk counts.")
  if (name == 'interleaved_1f1b' and virtual_stages > 1 and
      num_micro_batches % num_devices):
    raise ScheduleError(
        f"schedule='interleaved_1f1b' with virtual_stages={virtual_stages} "
        f'needs num_micro_batches divisible by num_stages (micro-batches '
        f'run in groups of K per chunk); got num_micro_batches='
        f'{num_micro_batches}, num_stages={num_devices}.')


def ChunkDevices(name: str, num_devices: int,
                 virtual_stages: int = 1) -> List[int]:
  """Device of each chunk: round robin (chunks d, d+K, ... on device d), or
  the V order of zb_v (chunks d and 2K-1-d on device d)."""
  k = num_devices
  if name == 'zb_v':
    return [c if c < k else 2 * k - 1 - c for c in range(2 * k)]
  return [c % k for c in range(k * virtual_stages)]


# -- action lists ------------------------------------------------------------------


def _GPipe(k_all, m, _):
  return [[Action(F, d, i) for i in range(m)] +
          [Action(B, d, i) for i in reversed(range(m))] for d in range(k_all)]


def _Interleaved(k_all, m, v, warmup):
  """1F1B over v chunks per device: forwards in groups of K micro-batches
  per chunk (the k-th forward of device d is chunk (k // K) % v, micro-batch
  (k // Kv) * K + k % K), backwards in the same groups with the chunks
  reversed; `warmup(d)` forwards before the first backward."""
  out = []
  for d in range(k_all):
    n = m * v
    if v == 1:
      fwd = [(d, i) for i in range(m)]
      bwd = list(fwd)
    else:
      group = lambda q: (q // (k_all * v)) * k_all + q % k_all
      fwd = [(((q // k_all) % v) * k_all + d, group(q)) for q in range(n)]
      bwd = [((v - 1 - (q // k_all) % v) * k_all + d, group(q))
             for q in range(n)]
    warm = min(warmup(d), n)
    acts = [Action(F, *fwd[q]) for q in range(warm)]
    for q in range(warm, n):
      acts += [Action(F, *fwd[q]), Action(B, *bwd[q - warm])]
    acts += [Action(B, *bwd[q]) for q in range(n - warm, n)]
    out.append(acts)
  return out


def _Ready(a: Action, t: int, done: Dict[Action, int],
           last_chunk: int) -> bool:
  """The dependency rule of the module docstring (`done`: tick of each
  action that ran)."""
  def Before(x, allow_same):
    tt = done.get(x)
    return tt is not None and (tt < t or (allow_same and tt == t))
  if a.kind == F:
    return a.chunk == 0 or Before(Action(F, a.chunk - 1, a.mb), False)
  if a.kind == B:
    if a.chunk == last_chunk:
      return Before(Action(F, a.chunk, a.mb), True)
    return Before(Action(B, a.chunk + 1, a.mb), False)
  return Before(Action(B, a.chunk, a.mb), True)


def _Simulate(k_all, chunk_device, m, choose):
  """Runs one action per device per tick, as `choose(d, t, ready)` picks
  (None: idle); returns each device's actions in the order they ran."""
  last = len(chunk_device) - 1
  total = 3 * m * len(chunk_device)
  done, orders, t = {}, [[] for _ in range(k_all)], 0
  while len(done) < total:
    picked = []
    for d in range(k_all):
      a = choose(d, t, lambda x: x not in done and _Ready(x, t, done, last))
      if a is not None:
        picked.append(a)
        orders[d].append(a)
    if not picked:
      raise ScheduleError(f'Schedule construction stalled at tick {t}.')
    for a in picked:
      done[a] = t
    t += 1
  return orders


def _ZeroBubbleH1(k_all, m, _):
  """K-d warm-up forwards, then a backward (input gradient) and a forward in
  turn; a weight-gradient pass runs whenever the next F or B cannot, and
  before a forward that would stash more than K micro-batches."""
  fb = []
  for d in range(k_all):
    warm = min(k_all - d, m)
    acts = [Action(F, d, i) for i in range(warm)]
    for i in range(m):
      acts.append(Action(B, d, i))
      if warm + i < m:
        acts.append(Action(F, d, warm + i))
    fb.append(acts)
  pos, pending, live = [0] * k_all, [[] for _ in range(k_all)], [0] * k_all

  def Choose(d, _, ready):
    nxt = fb[d][pos[d]] if pos[d] < len(fb[d]) else None
    if nxt is not None and ready(nxt) and not (nxt.kind == F and
                                               live[d] >= k_all):
      pos[d] += 1
      if nxt.kind == F:
        live[d] += 1
      else:
        pending[d].append(nxt.mb)
      return nxt
    if pending[d]:
      live[d] -= 1
      return Action(W, d, pending[d].pop(0))
    return None

  return _Simulate(k_all, list(range(k_all)), m, Choose)


def _ZeroBubbleV(k_all, m, _):
  """Greedy over both chunks of a device: a ready B first, then a ready F
  (at most 2K chunk activations stashed, i.e. K stages' worth as in 1F1B),
  then the oldest pending W; earlier micro-batches, then later chunks,
  first."""
  chunk_device = ChunkDevices('zb_v', k_all)
  local = [[c for c in range(2 * k_all) if chunk_device[c] == d]
           for d in range(k_all)]
  nxt = {(kind, c): 0 for kind in (F, B, W) for c in range(2 * k_all)}
  live = [0] * k_all

  def Choose(d, _, ready):
    cands = []
    for c in local[d]:
      for rank, kind in enumerate((B, F, W)):
        i = nxt[(kind, c)]
        if i >= m or (kind == W and i >= nxt[(B, c)]):
          continue
        a = Action(kind, c, i)
        if (kind == W or ready(a)) and not (kind == F and
                                            live[d] >= 2 * k_all):
          cands.append(((rank, i, -c), a))
    if not cands:
      return None
    a = min(cands)[1]
    nxt[(a.kind, a.chunk)] += 1
    live[d] += {F: 1, B: 0, W: -1}[a.kind]
    return a

  return _Simulate(k_all, chunk_device, m, Choose)


_GENERATORS = {
    'gpipe': _GPipe,
    '1f1b': lambda k, m, v: _Interleaved(k, m, 1, lambda d: 2 * (k - 1 - d)),
    '1f1b_classic': lambda k, m, v: _Interleaved(k, m, 1,
                                                 lambda d: k - 1 - d),
    # Megatron's warm-up count; in lockstep ticks it is also the smallest
    # that reaches the bubble (K-1)/(vM+K-1) (tested).
    'interleaved_1f1b': lambda k, m, v: _Interleaved(
        k, m, v, lambda d: 2 * (k - 1 - d) + (v - 1) * k),
    'zb_h1': _ZeroBubbleH1,
    'zb_v': _ZeroBubbleV,
}


def Actions(name: str, num_devices: int, num_micro_batches: int,
            virtual_stages: int = 1) -> List[List[Action]]:
  """Per device, the ordered actions of a schedule."""
  CheckConfig(name, num_devices, num_micro_batches, virtual_stages)
  return _GENERATORS[name](num_devices, num_micro_batches, virtual_stages)


def ForwardOnlyActions(chunk_device: Sequence[int],
                       num_micro_batches: int) -> List[List[Action]]:
  """Forwards only (evaluation, or a forward differentiated by a caller's
  tape): each device runs its chunks in order, all micro-batches each."""
  k_all = max(chunk_device) + 1
  return [[Action(F, c, i) for c in range(len(chunk_device))
           if chunk_device[c] == d for i in range(num_micro_batches)]
          for d in range(k_all)]


# -- the tick table -----------------------------------------------------------------

Costs = Union[None, Dict, Callable[[str, int], float]]


class TimelineEvent(NamedTuple):
  device: int
  tick: int
  action: Action
  start: float
  end: float


class Timeline(NamedTuple):
  events: List[TimelineEvent]
  duration: float
  tick_starts: List[float]

  def BubbleFraction(self, num_devices: int) -> float:
    busy = sum(e.end - e.start for e in self.events)
    return 1.0 - busy / (num_devices * self.duration) if self.duration else 0.0


class TickTable:
  """Per-device action lists packed into lockstep ticks.

  ticks[t][d]: the actions device d runs at tick t, in order.
  """

  def __init__(self, actions: Sequence[Sequence[Action]],
               num_micro_batches: int, chunk_device: Sequence[int],
               one_action_per_tick: bool = False, name: str = ''):
    self.name = name
    self.actions = [list(a) for a in actions]
    self.num_devices = len(self.actions)
    self.chunk_device = list(chunk_device)
    self.num_chunks = len(self.chunk_device)
    self.num_micro_batches = num_micro_batches
    self.one_action_per_tick = one_action_per_tick
    self._Validate()
    self._Pack()

  @property
  def num_stages(self) -> int:
    return self.num_devices

  def _Validate(self):
    m, kinds = self.num_micro_batches, set()
    for d, acts in enumerate(self.actions):
      for a in acts:
        if not 0 <= a.chunk < self.num_chunks or (
            self.chunk_device[a.chunk] != d):
          raise ScheduleError(f'Device {d} lists {a}, but chunk {a.chunk} '
                              'is not on that device.')
        kinds.add(a.kind)
    self.forward_only = kinds == {F}
    self.split_backward = W in kinds
    want = sorted(Action(k, c, i) for k in sorted(kinds)
                  for c in range(self.num_chunks) for i in range(m))
    got = sorted(a for acts in self.actions for a in acts)
    if got != want or not {F} <= kinds <= {F, B, W} or (
        kinds == {F, W}):
      raise ScheduleError(
          f'A schedule must run each of F{", B" if B in kinds else ""}'
          f'{", W" if W in kinds else ""} once per chunk and micro-batch '
          f'({self.num_chunks} chunks, {m} micro-batches); got '
          f'{[[str(a) for a in acts] for acts in self.actions]}.')

  def _Pack(self):
    last = self.num_chunks - 1
    pos = [0] * self.num_devices
    self.tick_of: Dict[Action, int] = {}
    self.ticks: List[List[Tuple[Action, ...]]] = []
    t = 0
    while any(p < len(a) for p, a in zip(pos, self.actions)):
      row = []
      for d, acts in enumerate(self.actions):
        got, slots = [], [F, B, W]
        while pos[d] < len(acts) and slots:
          a = acts[pos[d]]
          if (a.kind not in slots or (self.one_action_per_tick and got) or
              not _Ready(a, t, self.tick_of, last)):
            break
          slots = slots[slots.index(a.kind) + 1:]
          self.tick_of[a] = t
          got.append(a)
          pos[d] += 1
        row.append(tuple(got))
      if not any(row):
        raise ScheduleError(
            f'Schedule deadlocks at tick {t}: next actions '
            f'{[str(a[p]) if p < len(a) else "-" for p, a in zip(pos, self.actions)]}.')
      self.ticks.append(row)
      t += 1
    self.num_ticks = t

  # -- lookups -----------------------------------------------------------------

  def Tick(self, kind: str, chunk: int, mb: int) -> Optional[int]:
    return self.tick_of.get(Action(kind, chunk, mb))

  def Column(self, kind: str, chunk: int) -> List[int]:
    """Per tick, the micro-batch of chunk's `kind` action, or -1."""
    col = [-1] * self.num_ticks
    for i in range(self.num_micro_batches):
      t = self.Tick(kind, chunk, i)
      if t is not None:
        col[t] = i
    return col

  def LastBackwardTick(self, chunk: int, mb: int) -> int:
    return self.Tick(W if self.split_backward else B, chunk, mb)

  # -- stash ---------------------------------------------------------------------

  def StashLifetimes(self, chunk: int) -> List[Tuple[int, int]]:
    """Ticks [forward, last backward] during which each micro-batch's
    activations of `chunk` are held."""
    if self.forward_only:
      return [(self.Tick(F, chunk, i),) * 2
              for i in range(self.num_micro_batches)]
    return [(self.Tick(F, chunk, i), self.LastBackwardTick(chunk, i))
            for i in range(self.num_micro_batches)]

  def WeightStashLifetimes(self, chunk: int) -> List[Tuple[int, int]]:
    """Ticks [B, W] during which the tensors W needs are held (split
    backward only; empty otherwise)."""
    if not self.split_backward:
      return []
    return [(self.Tick(B, chunk, i), self.Tick(W, chunk, i))
            for i in range(self.num_micro_batches)]

  def BufferLifetimes(self, chunk: int, remat: Sequence[bool]
                      ) -> Dict[str, Optional[List[Optional[Tuple[int, int]]]]]:
    """Ticks [write, last read] of each micro-batch's entry in the buffers
    of `chunk` (the executor sizes its ring buffers from these; None: the
    chunk has no such buffer, or the micro-batch has no entry):
      inputs: the chunk's input, from the previous chunk's F to its own F
              (to its B when recomputed); chunk 0 reads the batch;
      grads: the gradient of its outputs, from the next chunk's B to its
             own B; none for the last chunk;
      residuals: kept micro-batches only (remat[i] False), F to B;
      weight_inputs: what B hands to W (split backward only), B to W.
    """
    c, m, tick = chunk, self.num_micro_batches, self.Tick
    training = not self.forward_only
    last_read = lambda i: tick(B if remat[i] and training else F, c, i)
    out = {'inputs': None, 'grads': None, 'residuals': None,
           'weight_inputs': None}
    if c > 0:
      out['inputs'] = [(tick(F, c - 1, i), last_read(i)) for i in range(m)]
    if not training:
      return out
    if c < self.num_chunks - 1:
      out['grads'] = [(tick(B, c + 1, i), tick(B, c, i)) for i in range(m)]
    out['residuals'] = [None if remat[i] else (tick(F, c, i), tick(B, c, i))
                        for i in range(m)]
    if self.split_backward:
      out['weight_inputs'] = self.WeightStashLifetimes(c)
    return out

  def BufferSlots(self, chunk: int, remat: Sequence[bool]
                  ) -> Dict[str, Optional['Slots']]:
    """Ring-buffer slots of each buffer of `chunk` (BufferLifetimes,
    through BufferSlots): how the executor stores them and how the planner
    counts what they hold."""
    return {name: BufferSlots(lifetimes) for name, lifetimes in
            self.BufferLifetimes(chunk, remat).items()}

  def StashCounts(self) -> List[List[int]]:
    """counts[t][c]: micro-batches whose activations of chunk c are held
    at tick t (multiply by a chunk's stash bytes for memory)."""
    counts = [[0] * self.num_chunks for _ in range(self.num_ticks)]
    for c in range(self.num_chunks):
      for start, end in self.StashLifetimes(c):
        for t in range(start, end + 1):
          counts[t][c] += 1
    return counts

  def PeakStash(self) -> List[int]:
    """Per device, the peak number of (chunk, micro-batch) activations held."""
    peaks = [0] * self.num_devices
    for row in self.StashCounts():
      per = [0] * self.num_devices
      for c, n in enumerate(row):
        per[self.chunk_device[c]] += n
      peaks = [max(p, q) for p, q in zip(peaks, per)]
    return peaks

  # -- time ------------------------------------------------------------------------

  def _CostFn(self, costs: Costs, remat: Optional[Sequence[bool]]
              ) -> Callable[[Action], float]:
    if costs is None:
      base = lambda kind, chunk: 1.0
    elif callable(costs):
      base = costs
    elif all(isinstance(key, str) for key in costs):
      base = lambda kind, chunk: float(costs.get(kind, 0.0))
    else:
      base = lambda kind, chunk: float(costs.get((kind, chunk), 0.0))
    split = self.split_backward

    def Cost(a: Action) -> float:
      c = base(a.kind, a.chunk)
      if a.kind == B and not split:
        c += base(W, a.chunk)  # a full backward: input and weight gradients
      if a.kind == B and remat is not None and remat[a.mb]:
        c += base(F, a.chunk)  # the forward rerun first
      return c
    return Cost

  def _SlotOrder(self, device_action: Tuple[int, Action]) -> Tuple[int, int]:
    """The executor's order within a tick: slot by slot (F, B, W; one slot
    when one action runs per tick), device by device."""
    d, a = device_action
    return (0 if self.one_action_per_tick else (F, B, W).index(a.kind), d)

  def Timeline(self, costs: Costs = None,
               remat: Optional[Sequence[bool]] = None,
               host_parallelism: Optional[float] = None,
               tick_overhead: float = 0.0) -> Timeline:
    """Start and end of every action under the executor's tick semantics:
    a tick lasts as long as its busiest device; a device runs its actions
    of the tick back to back from the tick's start.

    costs: duration of (kind, chunk), as a dict {'F': f, 'B': b, 'W': w},
    a dict {(kind, chunk): seconds}, or a callable(kind, chunk). 'B' is the
    input-gradient part and 'W' the weight-gradient part; a schedule without
    W actions runs both in its B. Default: 1 for each.
    remat: per micro-batch, True where B first reruns the chunk's forward
    (its B then also costs F).
    host_parallelism: None when every device computes on its own. A number
    p when the devices share one host's compute (logical CPU devices): a
    tick lasts at least its total work / p; with p = 1 the tick's actions
    run one after another in the executor's order (every device's F, then
    every device's B, then W).
    tick_overhead: fixed time of each tick's bookkeeping, before its actions.
    """
    cost = self._CostFn(costs, remat)
    serial = host_parallelism is not None and host_parallelism <= 1
    events, starts, now = [], [], 0.0
    for t, row in enumerate(self.ticks):
      starts.append(now)
      begin = now + tick_overhead
      if serial:
        at = begin
        for d, a in sorted(((d, a) for d, acts in enumerate(row)
                            for a in acts), key=self._SlotOrder):
          events.append(TimelineEvent(d, t, a, at, at + cost(a)))
          at += cost(a)
        now = at
        continue
      longest = total = 0.0
      for d, acts in enumerate(row):
        at = begin
        for a in acts:
          events.append(TimelineEvent(d, t, a, at, at + cost(a)))
          at += cost(a)
        longest = max(longest, at - begin)
        total += at - begin
      if host_parallelism is not None:
        longest = max(longest, total / host_parallelism)
      now = begin + longest
    return Timeline(events, now, starts)

  def BubbleFraction(self, costs: Costs = None) -> float:
    """Idle fraction of device-time in the simulated timeline."""
    return self.Timeline(costs).BubbleFraction(self.num_devices)

  def Describe(self) -> str:
    """The grid: one row per device, one column per tick."""
    cells = [['+'.join(str(a) for a in row[d]) or '.' for row in self.ticks]
             for d in range(self.num_devices)]
    width = max(len(c) for r in cells for c in r)
    return '\n'.join(f'device {d}: ' + ' '.join(f'{c:>{width}}' for c in r)
                     for d, r in enumerate(cells))


def AssignSlots(intervals: Sequence[Tuple[int, int]]) -> Tuple[List[int], int]:
  """Ring-buffer slots: interval i gets a slot free over its lifetime.

  Returns (slot per interval, number of slots). A slot is reused only from
  the tick after its previous occupant's last read.
  """
  order = sorted(range(len(intervals)), key=lambda i: intervals[i][0])
  free_at = []  # slot -> first tick it is free again
  slots = [0] * len(intervals)
  for i in order:
    start, end = intervals[i]
    for s, f in enumerate(free_at):
      if f <= start:
        slots[i] = s
        free_at[s] = end + 1
        break
    else:
      slots[i] = len(free_at)
      free_at.append(end + 1)
  return slots, max(1, len(free_at))


class Slots(NamedTuple):
  """Ring-buffer slots of one buffer: the slot of each micro-batch (0 when
  it has no entry), the number of slots (0: nothing held) and the tick at
  which each slot is first written."""
  slot: List[int]
  size: int
  first_write: List[int]


def BufferSlots(lifetimes: Optional[Sequence[Optional[Tuple[int, int]]]]
                ) -> Optional[Slots]:
  """The one slot assignment of a buffer from its entries' [write, last
  read] ticks (None: no buffer; a None entry: not held). The executor
  stores entries in these slots; a slot keeps its tensor until it is
  written again, so the planner counts a slot as held from its first
  write to the end of the step."""
  if lifetimes is None:
    return None
  keep = [i for i, life in enumerate(lifetimes) if life is not None]
  assigned, size = AssignSlots([lifetimes[i] for i in keep])
  slots = [0] * len(lifetimes)
  first = {}
  for i, s in zip(keep, assigned):
    slots[i] = s
    first[s] = min(first.get(s, lifetimes[i][0]), lifetimes[i][0])
  return Slots(slots, size if keep else 0,
               [first[s] for s in sorted(first)])


def DeviceOrder(table: TickTable) -> List[Tuple[int, int, Action]]:
  """(tick, device, action) in an order that puts every action after the
  ones it reads: tick by tick, devices in turn, a device's actions of one
  tick in their order. The dataflow execution builds (and, with
  action_order 'host', runs) the actions in it; the planner counts it."""
  return [(t, d, a) for t in range(table.num_ticks)
          for d in range(table.num_devices) for a in table.ticks[t][d]]


def FusedBackwards(table: TickTable) -> set:
  """(chunk, micro-batch) of each W that its device runs right after the
  B of the same chunk and micro-batch. The dataflow execution runs such a
  pair as one fused backward: the same work in the same order, without
  stashing W's inputs or paying for the split (as PyTorch's pipelining
  merges them); the planner counts it so."""
  fused = set()
  for order in table.actions:  # each device's list, in the order it runs
    for a, nxt in zip(order, order[1:]):
      if a.kind == B and nxt == Action(W, a.chunk, a.mb):
        fused.add((a.chunk, a.mb))
  return fused


def Build(name: str, num_devices: int, num_micro_batches: int,
          virtual_stages: int = 1) -> TickTable:
  """The tick table of a named schedule."""
  acts = Actions(name, num_devices, num_micro_batches, virtual_stages)
  return TickTable(acts, num_micro_batches,
                   ChunkDevices(name, num_devices, virtual_stages),
                   one_action_per_tick=_KINDS[name].one_action_per_tick,
                   name=name)


def BuildForwardOnly(chunk_device: Sequence[int],
                     num_micro_batches: int) -> TickTable:
  return TickTable(ForwardOnlyActions(chunk_device, num_micro_batches),
                   num_micro_batches, chunk_device, name=FORWARD_ONLY)
