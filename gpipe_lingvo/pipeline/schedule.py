"""Pipeline schedules as data.

A schedule is, per stage (device), the ordered list of actions it performs:
('F', i) runs the forward of micro-batch i, ('B', i) its backward. The
executor never decides an order itself: it runs the tick table derived here,
where each clock tick gives every stage at most one forward followed by at
most one backward. The analytics (bubble fraction, peak stash, buffer slots)
are computed from the same table, so what is reported is what runs.
"""
import collections

SCHEDULES = ('gpipe', '1f1b', '1f1b_classic')

Action = collections.namedtuple('Action', ['kind', 'mb'])


class ScheduleError(ValueError):
  """Unknown schedule or an action list that cannot run."""


def GPipeActions(num_stages, num_micro_batches):
  """Fill-drain: all forwards, then all backwards (last micro-batch first)."""
  m = num_micro_batches
  return [[Action('F', i) for i in range(m)] +
          [Action('B', i) for i in reversed(range(m))]
          for _ in range(num_stages)]


def OneFOneBActions(num_stages, num_micro_batches, warmup_fn):
  """One-forward-one-backward after warmup_fn(K, k) warm-up forwards."""
  k_all, m = num_stages, num_micro_batches
  out = []
  for k in range(k_all):
    warm = min(warmup_fn(k_all, k), m)
    acts = [Action('F', i) for i in range(warm)]
    f, b = warm, 0
    while f < m:
      acts.append(Action('F', f))
      acts.append(Action('B', b))
      f += 1
      b += 1
    acts.extend(Action('B', i) for i in range(b, m))
    out.append(acts)
  return out


def _LockstepWarmup(num_stages, k):
  # In lockstep ticks an activation takes one tick to reach the next stage
  # and a gradient one tick to come back, so the round trip from stage k to
  # the last stage and back is 2(K-1-k) ticks; that many warm-up forwards
  # keep every stage busy with one forward and one backward per tick.
  return 2 * (num_stages - 1 - k)


def _ClassicWarmup(num_stages, k):
  # PipeDream-flush / Megatron: K-1-k warm-ups, at most K-k stashed; in
  # lockstep ticks this leaves a stage idle every other tick.
  return num_stages - 1 - k


def Actions(name, num_stages, num_micro_batches):
  if name == 'gpipe':
    return GPipeActions(num_stages, num_micro_batches)
  if name == '1f1b':
    return OneFOneBActions(num_stages, num_micro_batches, _LockstepWarmup)
  if name == '1f1b_classic':
    return OneFOneBActions(num_stages, num_micro_batches, _ClassicWarmup)
  raise ScheduleError(f'Unknown schedule {name!r}; use one of {SCHEDULES}.')


class TickTable:
  """Per-device action lists turned into lockstep clock ticks.

  fwd[t][k] / bwd[t][k]: micro-batch whose forward / backward stage k runs at
  tick t, or -1. A forward needs the previous stage's forward of the same
  micro-batch at an earlier tick; a backward needs the next stage's backward
  at an earlier tick (the last stage: its own forward, possibly in the same
  tick, since a tick runs its forward before its backward).
  """

  def __init__(self, actions, num_micro_batches):
    self.actions = actions
    self.num_stages = len(actions)
    self.num_micro_batches = m = num_micro_batches
    k_all = self.num_stages
    for k, acts in enumerate(actions):
      want = sorted([('F', i) for i in range(m)] + [('B', i) for i in range(m)])
      if sorted(tuple(a) for a in acts) != want:
        raise ScheduleError(f'Stage {k} must run F and B of each of the {m} '
                            f'micro-batches exactly once; got {acts}.')
    f_tick = [[None] * m for _ in range(k_all)]
    b_tick = [[None] * m for _ in range(k_all)]
    pos = [0] * k_all
    self.fwd, self.bwd = [], []
    t = 0
    while any(pos[k] < len(actions[k]) for k in range(k_all)):
      row_f, row_b = [-1] * k_all, [-1] * k_all
      for k in range(k_all):
        acts = actions[k]
        if pos[k] < len(acts) and acts[pos[k]].kind == 'F':
          i = acts[pos[k]].mb
          if k == 0 or (f_tick[k - 1][i] is not None and f_tick[k - 1][i] < t):
            row_f[k] = i
            f_tick[k][i] = t
            pos[k] += 1
        if pos[k] < len(acts) and acts[pos[k]].kind == 'B':
          i = acts[pos[k]].mb
          if k == k_all - 1:
            ready = f_tick[k][i] is not None and f_tick[k][i] <= t
          else:
            ready = b_tick[k + 1][i] is not None and b_tick[k + 1][i] < t
          if ready and f_tick[k][i] is not None:
            row_b[k] = i
            b_tick[k][i] = t
            pos[k] += 1
      if row_f == [-1] * k_all and row_b == [-1] * k_all:
        raise ScheduleError(f'Schedule deadlocks at tick {t}: stage positions '
                            f'{pos} of {[len(a) for a in actions]}.')
      self.fwd.append(row_f)
      self.bwd.append(row_b)
      t += 1
    self.num_ticks = t
    self.f_tick, self.b_tick = f_tick, b_tick

  # -- buffers ---------------------------------------------------------------

  def InputLifetimes(self, k):
    """Ticks [written, last read] of stage k's input per micro-batch (k>0):
    written by stage k-1's forward, read again by stage k's backward."""
    return [(self.f_tick[k - 1][i], self.b_tick[k][i])
            for i in range(self.num_micro_batches)]

  def GradLifetimes(self, k):
    """Gradient w.r.t. stage k's output (k < K-1): from stage k+1's backward
    to stage k's backward."""
    return [(self.b_tick[k + 1][i], self.b_tick[k][i])
            for i in range(self.num_micro_batches)]

  def StashLifetimes(self, k):
    """Micro-batches stashed at stage k: forward done, backward not yet."""
    return [(self.f_tick[k][i], self.b_tick[k][i])
            for i in range(self.num_micro_batches)]

  def PeakStash(self):
    """Peak number of micro-batches stashed per stage."""
    return [_Peak(self.StashLifetimes(k)) for k in range(self.num_stages)]

  def BubbleFraction(self, f_cost=1.0, b_cost=2.0):
    """Idle fraction of stage-time when each tick lasts as long as its
    busiest stage (forward costs f_cost, backward b_cost; with
    re-materialization a backward costs one more forward)."""
    busy, total = 0.0, 0.0
    for row_f, row_b in zip(self.fwd, self.bwd):
      work = [(f_cost if f >= 0 else 0.0) + (b_cost if b >= 0 else 0.0)
              for f, b in zip(row_f, row_b)]
      busy += sum(work)
      total += max(work) * self.num_stages
    return 1.0 - busy / total

  def Describe(self):
    """Human-readable grid: one row per stage, one column per tick."""
    rows = []
    for k in range(self.num_stages):
      cells = []
      for t in range(self.num_ticks):
        f, b = self.fwd[t][k], self.bwd[t][k]
        s = (f'F{f}' if f >= 0 else '') + (f'B{b}' if b >= 0 else '')
        cells.append(s or '.')
      rows.append(f'stage {k}: ' + ' '.join(f'{c:>5}' for c in cells))
    return '\n'.join(rows)


def _Peak(intervals):
  events = sorted([(s, 1) for s, _ in intervals] + [(e + 1, -1) for _, e in intervals],
                  key=lambda x: (x[0], x[1]))
  cur = peak = 0
  for _, d in events:
    cur += d
    peak = max(peak, cur)
  return peak


def AssignSlots(intervals):
  """Ring-buffer slots: micro-batch i gets a slot free over its lifetime.

  Returns (slot per micro-batch, number of slots). A slot is reused only
  from the tick after its previous occupant's last read.
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


def Build(name, num_stages, num_micro_batches):
  return TickTable(Actions(name, num_stages, num_micro_batches),
                   num_micro_batches)
