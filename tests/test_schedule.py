"""Schedules as data: properties of every schedule's tick table for many K,
M and v, the bubble figures, the timeline simulator and the errors (pure
Python; no TensorFlow devices)."""
import pytest

from gpipe_lingvo.pipeline import schedule
from gpipe_lingvo.pipeline.schedule import Action

V = {'interleaved_1f1b': 2, 'zb_v': 2}


def _Configs():
  for name in schedule.SCHEDULES:
    for k in (1, 2, 3, 4, 8):
      for m in (1, 2, 3, 4, 8, 12, 32):
        v = V.get(name, 1)
        if name == 'interleaved_1f1b' and m % k:
          continue
        yield name, k, m, v
  yield 'interleaved_1f1b', 4, 8, 3
  yield 'interleaved_1f1b', 3, 5, 1


def _CheckDependencies(tab):
  """Every action once, in its device's order, and after what it needs
  (rules restated from the module docstring)."""
  last = tab.num_chunks - 1
  seen = []
  for t, row in enumerate(tab.ticks):
    for d, acts in enumerate(row):
      kinds = [a.kind for a in acts]
      assert kinds == sorted(kinds, key='FBW'.index)
      assert len(set(kinds)) == len(kinds)
      if tab.one_action_per_tick:
        assert len(acts) <= 1
      for a in acts:
        assert tab.chunk_device[a.chunk] == d
        seen.append(a)
        tick = lambda kind, c: tab.Tick(kind, c, a.mb)
        if a.kind == 'F' and a.chunk > 0:
          assert tick('F', a.chunk - 1) < t
        if a.kind == 'B':
          assert tick('F', a.chunk) <= t
          if a.chunk < last:
            assert tick('B', a.chunk + 1) < t
        if a.kind == 'W':
          assert tick('B', a.chunk) <= t
  assert sorted(seen) == sorted(a for acts in tab.actions for a in acts)
  assert len(seen) == len(set(seen))
  for d in range(tab.num_devices):
    ran = [a for row in tab.ticks for a in row[d]]
    assert ran == tab.actions[d]


def testEveryScheduleRunsEachActionOnceRespectingDependencies():
  for name, k, m, v in _Configs():
    tab = schedule.Build(name, k, m, v)
    assert tab.num_chunks == k * v
    kinds = {a.kind for acts in tab.actions for a in acts}
    assert kinds == ({'F', 'B', 'W'} if schedule.SplitsBackward(name)
                     else {'F', 'B'}), name
    assert len(kinds) * k * v * m == sum(len(a) for a in tab.actions)
    _CheckDependencies(tab)


def testPeakStashBounds():
  for name, k, m, v in _Configs():
    peak = schedule.Build(name, k, m, v).PeakStash()
    bound = {
        'gpipe': [m] * k,
        '1f1b': [min(2 * (k - d) - 1, m) for d in range(k)],
        '1f1b_classic': [min(k - d, m) for d in range(k)],
        # 1F1B's peak (K micro-batches of a whole stage) on every device.
        'zb_h1': [min(k, m)] * k,
        'zb_v': [2 * min(k, m)] * k,
        # Megatron's warm-ups + 1 chunks, v chunks per stage.
        'interleaved_1f1b': [min(2 * (k - 1 - d) + (v - 1) * k + 1, m * v)
                             for d in range(k)],
    }[name]
    assert all(p <= b for p, b in zip(peak, bound)), (name, k, m, v, peak)
    if name in ('gpipe', '1f1b', '1f1b_classic'):
      assert peak == bound, (name, k, m)


def testBubbleFigures():
  """With F, B and W each costing 1 (a full backward 2): the interleaved
  table reaches (K-1)/(vM+K-1) and zb_h1 (K-1)/(3M+K-1), the asynchronous
  ideals; 1f1b equals GPipe's (K-1)/(M+K-1)."""
  for k in (2, 4, 8):
    for m in (8, 16, 32):
      gpipe = schedule.Build('gpipe', k, m).BubbleFraction()
      assert gpipe == pytest.approx((k - 1) / (m + k - 1))
      assert schedule.Build('1f1b', k, m).BubbleFraction() == pytest.approx(
          gpipe)
      assert schedule.Build('zb_h1', k, m).BubbleFraction() == pytest.approx(
          (k - 1) / (3 * m + k - 1))
      for v in (2, 4):
        tab = schedule.Build('interleaved_1f1b', k, m, v)
        assert tab.BubbleFraction() == pytest.approx((k - 1) /
                                                     (v * m + k - 1))
  one = schedule.Build('1f1b', 4, 8).BubbleFraction()
  zb = schedule.Build('zb_h1', 4, 8).BubbleFraction()
  inter = schedule.Build('interleaved_1f1b', 4, 8, 2).BubbleFraction()
  zbv = schedule.Build('zb_v', 4, 8, 2).BubbleFraction()
  assert zb <= 0.5 * one and inter <= 0.6 * one and zbv <= zb


def testTimelineUsesTickSemantics():
  tab = schedule.Build('1f1b', 2, 2)
  # ticks: d0 [F0] [F1] [B0] [B1]... costs F=1, B=3 (input 1 + weight 2).
  tl = tab.Timeline({'F': 1, 'B': 1, 'W': 2})
  assert tab.Describe().splitlines()[0].split(':')[0] == 'device 0'
  for e in tl.events:
    assert e.end - e.start == (1 if e.action.kind == 'F' else 3)
    assert e.start >= tl.tick_starts[e.tick]
  for t, start in enumerate(tl.tick_starts):
    ends = [e.end for e in tl.events if e.tick == t]
    nxt = tl.tick_starts[t + 1] if t + 1 < tab.num_ticks else tl.duration
    assert max(ends) == nxt  # a tick lasts as long as its busiest device
  per_chunk = tab.Timeline({('F', 0): 2, ('F', 1): 1, ('B', 0): 1,
                            ('B', 1): 1, ('W', 0): 0, ('W', 1): 0})
  assert per_chunk.duration > tab.Timeline({'F': 1, 'B': 1}).duration
  assert tab.BubbleFraction(lambda kind, chunk: 1.0) == pytest.approx(
      tab.BubbleFraction())


def testTimelineOptions():
  tab = schedule.Build('gpipe', 2, 2)
  costs = {'F': 1, 'B': 2, 'W': 1}
  plain = tab.Timeline(costs)
  # A recomputing backward reruns the forward first.
  rem = tab.Timeline(costs, remat=[True, False])
  for e, f in zip(plain.events, rem.events):
    extra = 1 if e.action.kind == 'B' and e.action.mb == 0 else 0
    assert (f.end - f.start) - (e.end - e.start) == extra
  # Devices sharing one core: a tick is all its work, in the executor's
  # order (every device's F, then every device's B).
  one = tab.Timeline(costs, host_parallelism=1, tick_overhead=0.5)
  work = sum(e.end - e.start for e in plain.events)
  assert one.duration == pytest.approx(work + 0.5 * tab.num_ticks)
  for t in range(tab.num_ticks):
    evs = sorted((e for e in one.events if e.tick == t),
                 key=lambda e: e.start)
    assert evs[0].start == one.tick_starts[t] + 0.5
    kinds = [e.action.kind for e in evs]
    assert kinds == sorted(kinds, key='FBW'.index)
    assert all(a.end == b.start for a, b in zip(evs, evs[1:]))
  two = tab.Timeline(costs, host_parallelism=2)
  assert plain.duration <= two.duration <= one.duration


def testBufferLifetimes():
  tab = schedule.Build('gpipe', 2, 2)  # F0 F1 . B1 B0 on device 0
  tick = tab.Tick
  life = tab.BufferLifetimes(1, [True, False])
  assert life['inputs'] == [(tick('F', 0, 0), tick('B', 1, 0)),
                            (tick('F', 0, 1), tick('F', 1, 1))]
  assert life['grads'] is None and life['weight_inputs'] is None
  assert life['residuals'] == [None, (tick('F', 1, 1), tick('B', 1, 1))]
  first = tab.BufferLifetimes(0, [True, False])
  assert first['inputs'] is None
  assert first['grads'] == [(tick('B', 1, i), tick('B', 0, i))
                            for i in range(2)]
  zb = schedule.Build('zb_h1', 2, 2)
  assert zb.BufferLifetimes(0, [True] * 2)['weight_inputs'] == (
      zb.WeightStashLifetimes(0))


def testStashCountsAndDescribe():
  tab = schedule.Build('interleaved_1f1b', 2, 4, 2)
  counts = tab.StashCounts()
  assert len(counts) == tab.num_ticks and len(counts[0]) == 4
  assert max(c[0] + c[2] for c in counts) == tab.PeakStash()[0]
  assert tab.chunk_device == [0, 1, 0, 1]
  assert schedule.Build('zb_v', 3, 6, 2).chunk_device == [0, 1, 2, 2, 1, 0]
  grid = schedule.Build('1f1b', 2, 3).Describe().splitlines()
  assert grid[0].split() == ['device', '0:', '0F0', '0F1', '0F2+0B0', '0B1',
                             '0B2']
  assert str(Action('W', 3, 1)) == '3W1'
  w = schedule.Build('zb_h1', 2, 4)
  assert w.WeightStashLifetimes(0)[0] == (w.Tick('B', 0, 0), w.Tick('W', 0, 0))


def testForwardOnlyTable():
  tab = schedule.BuildForwardOnly([0, 1, 0, 1], 3)
  assert tab.forward_only and not tab.split_backward
  _CheckDependencies(tab)
  assert tab.num_ticks == 7  # chunk 0 for 3 micro-batches, then chunk 2 ...


@pytest.mark.parametrize('name,k,m,v', [('gpipe', 2, 3, 1), ('zb_h1', 3, 4, 1),
                                         ('interleaved_1f1b', 2, 4, 3),
                                         ('zb_v', 4, 8, 2)])
def testActionScopesParseBack(name, k, m, v):
  # The one format and the one parse of op names: every action of a table,
  # named as either execution names it (the tick loop without the
  # micro-batch), inside an outer scope and around an op.
  tab = schedule.Build(name, k, m, v)
  for a in [a for acts in tab.actions for a in acts]:
    assert schedule.ParseActionScope(schedule.ActionScope(*a)) == (
        schedule.ActionOp(a.kind, a.chunk, a.mb, False))
    op = f'outer/{schedule.ActionScope(a.kind, a.chunk)}/piece/MatMul'
    assert schedule.ParseActionScope(op) == (
        schedule.ActionOp(a.kind, a.chunk, None, False))
    rerun = (f'{schedule.ActionScope(*a)}/{schedule.RECOMPUTE_SCOPE}/'
             'piece/MatMul')
    assert schedule.ParseActionScope(rerun).recompute
  assert schedule.ParseActionScope('net/action_overhead/MatMul') is None
  assert schedule.ParseActionScope('net/dense/MatMul') is None


def testErrorsNameTheFields():
  with pytest.raises(schedule.ScheduleError, match='Unknown schedule'):
    schedule.Build('zigzag', 2, 2)
  with pytest.raises(schedule.ScheduleError,
                     match=r"schedule='gpipe' runs 1 chunk.*virtual_stages=2"):
    schedule.Build('gpipe', 2, 4, 2)
  with pytest.raises(schedule.ScheduleError, match='virtual_stages=2'):
    schedule.Build('zb_v', 2, 4, 3)
  with pytest.raises(schedule.ScheduleError,
                     match='num_micro_batches=6, num_stages=4'):
    schedule.Build('interleaved_1f1b', 4, 6, 2)
  with pytest.raises(schedule.ScheduleError, match='num_micro_batches must'):
    schedule.Build('1f1b', 2, 0)
  bad = [[Action('B', 0, 0), Action('F', 0, 0)]]
  with pytest.raises(schedule.ScheduleError, match='deadlock'):
    schedule.TickTable(bad, 1, [0])
  with pytest.raises(schedule.ScheduleError, match='once per chunk'):
    schedule.TickTable([[Action('F', 0, 0)] * 2], 1, [0])
