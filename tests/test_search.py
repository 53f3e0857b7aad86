"""The configuration search (planning/search.py) and per-cell recompute in
the planner (planning/recompute.py), on cost vectors: pure Python."""
import itertools
import json
import os
import sys

import pytest

from gpipe_lingvo import hyperparams
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.planning import plan as plan_lib
from gpipe_lingvo.planning import recompute
from gpipe_lingvo.planning import search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _Costs(n=8, batch=16):
  """A network of n cells with uneven times and activations (bytes and
  seconds for `batch` examples)."""
  cells = []
  for j in range(n):
    act = (3 + j % 3) * 4096 * batch
    cells.append(costs_lib.CellCost(
        name=f'cell{j}', params=1000 * (j + 1), param_bytes=4000 * (j + 1),
        out_bytes=1024 * batch, fwd_flops=10**6 * (1 + j % 4) * batch,
        bwd_flops=2 * 10**6 * (1 + j % 4) * batch, fwd_peak=act + 1024 * batch,
        residual_bytes=act, input_residual_bytes=1024 * batch,
        bwd_peak=2 * act, fwd_transient=2048 * batch,
        weight_input_bytes=512 * batch, bwd_w_flops=10**6 * batch,
        fwd_s=1e-4 * (1 + j % 4) * batch, bwd_s=2e-4 * (1 + j % 4) * batch,
        bwd_w_s=1e-4 * batch, workspace_bytes=0))
  return costs_lib.NetworkCosts(batch, 1024 * batch, cells)


_BASE = _Costs()


def _Searcher(budget=None, devices=4, batch=16, **space):
  return search.Searcher(_BASE.Scaled, search.Space(devices, batch, budget,
                                                    **space),
                         host_parallelism=lambda k: k)


def testPrunedSearchFindsTheBruteForceBest():
  s = _Searcher()
  top = s.Search(3)
  brute = [s.Best(*c) for c in s.Candidates(8)]
  fastest = min(p.step_s for p in brute if p is not None)
  assert top[0].step_s == pytest.approx(fastest)
  assert s.bounded > 0  # the bound pruned some configurations
  assert [p.step_s for p in top] == sorted(p.step_s for p in top)


def testEveryPointFitsItsBudgetAndTightBudgetsRecompute():
  free = _Searcher().Search(1)[0]
  budget = 0.6 * free.peak_bytes
  points = _Searcher(budget).Search(10)
  assert points
  for p in points:
    assert all(st['peak_bytes'] <= budget for st in p.plan['stages'])
  tight = _Searcher(budget, num_stages=(free.num_stages,),
                    num_micro_batches=(free.num_micro_batches,),
                    schedules=(free.schedule,)).Search(1)
  assert tight and tight[0].remat != 'never'


def testNothingFitsGivesNoPoint():
  assert _Searcher(budget=1000.0).Search(5) == []


def testPerCellRecomputeStashesLessAndTakesLonger():
  flags = (False, True, True, False, True, False, False, False)
  pipe = plan_lib.Pipeline('1f1b', 2, 4, (False,) * 4)
  ranges = [(0, 4), (4, 8)]
  kept = plan_lib.MakePlan(_BASE, ranges, pipe)
  mixed = plan_lib.MakePlan(recompute.Apply(_BASE, flags), ranges, pipe)
  assert (mixed['stages'][0]['stash_peak_bytes'] <
          kept['stages'][0]['stash_peak_bytes'])
  assert mixed['step_s'] > kept['step_s']
  full = plan_lib.MakePlan(_BASE, ranges, pipe.Replace(remat=(True,) * 4))
  assert mixed['step_s'] < full['step_s']


def testLadderRecomputesMostBytesPerSecondFirst():
  ladder = recompute.Ladder(_BASE)
  ratio = [(c.residual_bytes + c.input_residual_bytes) / c.fwd_s
           for c in _BASE.cells]
  assert [ratio[j] for j in ladder] == sorted(ratio, reverse=True)
  assert recompute.Flags(8, ladder, 2) == tuple(
      j in ladder[:2] for j in range(8))


def testCellChoiceIsTheShortestLadderPrefixThatFits():
  s = _Searcher()
  k, m = 2, 4
  never = s.Evaluate(1, k, m, '1f1b', 1, 'never')
  s2 = _Searcher(0.7 * never.peak_bytes, num_stages=(k,),
                 num_micro_batches=(m,), schedules=('1f1b',),
                 remat=(search.CELLS,))
  assert s2.Evaluate(1, k, m, '1f1b', 1, 'never') is None
  p = s2.Best(1, k, m, '1f1b', 1)
  assert p is not None and isinstance(p.remat, tuple)
  n = sum(p.remat)
  ladder = recompute.Ladder(_BASE)
  assert p.remat == recompute.Flags(8, ladder, n)
  fits = [s2.Evaluate(1, k, m, '1f1b', 1, recompute.Flags(8, ladder, j))
          for j in range(n)]
  assert fits[-1] is None  # one cell fewer does not fit


def testAutoplanBenchRowOfASearchedPoint():
  # bench/autoplan_bench.py writes one row per measured configuration after
  # every configuration was measured (tens of minutes): its prediction side
  # must not fail at the end.
  sys.path.insert(0, os.path.join(ROOT, 'bench'))
  import autoplan_bench  # pylint: disable=import-outside-toplevel
  p = _Searcher().Search(1)[0]
  row = autoplan_bench._Row(p, (10.0, 2**20, 0.5, [0.5]))  # pylint: disable=protected-access
  assert row['static'] == sum(plan_lib.StaticBytes(s)
                              for s in p.plan['stages']) > 0
  assert (row['K'], row['M'], row['measured_ex_s']) == (
      p.num_stages, p.num_micro_batches, 10.0)
  assert json.loads(row['key'])[:2] == [p.num_stages, p.num_micro_batches]


def testOverridesReproduceThePoint():
  from gpipe_lingvo.pipeline import pipelined_network  # pylint: disable=import-outside-toplevel
  p = _Searcher(0.5 * _Searcher().Search(1)[0].peak_bytes).Search(1)[0]
  net = pipelined_network.PipelinedNetwork.Params()
  root = hyperparams.Params()
  root.Define('task', hyperparams.Params(), '')
  root.task.Define('network', net, '')
  hyperparams.ApplyOverrides(root, p.Overrides())
  assert net.num_stages == p.num_stages
  assert net.num_micro_batches == p.num_micro_batches
  assert net.schedule == p.schedule
  from gpipe_lingvo.pipeline import params_check  # pylint: disable=import-outside-toplevel
  remat = params_check.ParseList(net.remat)
  assert (remat == p.remat if isinstance(p.remat, str)
          else tuple(remat) == p.remat)
  assert params_check.ParseList(net.partition) == p.partition


@pytest.mark.parametrize('k,m', itertools.product([1, 2, 4], [1, 4]))
def testLowerBoundIsBelowEveryCut(k, m):
  s = _Searcher()
  for sched in ('gpipe', '1f1b'):
    p = s.Evaluate(1, k, m, sched, 1, 'never')
    assert s.LowerBound(1, k, m, sched, 1) <= p.step_s * (1 + 1e-9)


@pytest.mark.parametrize('schedule,k,m,remat', [
    ('gpipe', 2, 4, True), ('1f1b', 3, 8, False), ('zb_h1', 2, 4, False),
    ('1f1b_classic', 2, 1, True)])
def testFastStageBytesEqualThePlans(schedule, k, m, remat):
  """The search's cut uses the plan's memory model, evaluated faster."""
  s = _Searcher()
  pipe = plan_lib.Pipeline(schedule, k, m, (remat,) * m)
  fast = s.StageBytes(_BASE, pipe)
  ref = plan_lib.StageBytesFn(_BASE, pipe)
  for kk in range(k):
    for a, b in itertools.combinations(range(9), 2):
      assert fast(kk, a, b) == pytest.approx(ref(kk, a, b))


@pytest.mark.parametrize('schedule,k,m,v', [
    ('gpipe', 2, 4, 1), ('zb_h1', 3, 6, 1), ('zb_v', 2, 4, 2),
    ('interleaved_1f1b', 2, 4, 2)])
def testActionCostCountsEveryActionOfTheTable(schedule, k, m, v):
  s = search.Searcher(_BASE.Scaled, search.Space(4, 16), action_s=1.0)
  table = plan_lib.Pipeline(schedule, k, m, (False,) * m, v).Table()
  assert s._ActionsSeconds(schedule, k, m, v) == sum(  # pylint: disable=protected-access
      len(a) for a in table.actions)


@pytest.mark.parametrize('schedule,v', [('gpipe', 1), ('zb_h1', 1),
                                        ('zb_v', 2),
                                        ('interleaved_1f1b', 2)])
def testWorkBoundIsBelowTheTimelineBound(schedule, v):
  s = _Searcher()
  for k, m in itertools.product([2, 4], [4, 8]):
    assert s.WorkBound(1, k, m, schedule, v) <= s.LowerBound(
        1, k, m, schedule, v) * (1 + 1e-9)


@pytest.mark.parametrize('budget_frac', [None, 0.6])
def testPrunedTopListEqualsBruteForce(budget_frac):
  """Every pruning (bounds, the cut's work, its timeline) keeps the exact
  top list, with and without a budget."""
  budget = (None if budget_frac is None else
            budget_frac * _Searcher().Search(1)[0].peak_bytes)
  s = _Searcher(budget)
  top = s.Search(5)
  brute = [p for p in (s.Best(*c) for c in s.Candidates(8)) if p]
  want = search.Order(brute, s.band)[:5]
  assert [search._Rank(p) for p in top] == [  # pylint: disable=protected-access
      search._Rank(p) for p in want]
  assert s.bounded + s.cut_pruned > 0


@pytest.mark.parametrize('schedule,k,m,v,hp', [
    ('gpipe', 3, 4, 1, 1.0), ('zb_h1', 4, 8, 1, 2.0),
    ('interleaved_1f1b', 2, 4, 2, None), ('1f1b', 4, 4, 1, 4.0)])
def testBalancedTicksEqualTheTimeline(schedule, k, m, v, hp):
  """The tick bound from the table's distinct ticks is the simulator's
  duration on equal chunks."""
  s = search.Searcher(_BASE.Scaled, search.Space(4, 16),
                      host_parallelism=lambda _: hp,
                      overheads=plan_lib.Overheads(tick_s=1e-4))
  cost = (1.0, 2.5, 0.7)
  table = plan_lib.Pipeline(schedule, k, m, (False,) * m, v).Table()
  want = table.Timeline(dict(zip('FBW', cost)), host_parallelism=hp,
                        tick_overhead=1e-4).duration
  got = s._BalancedTicks(schedule, k, m, v, cost)  # pylint: disable=protected-access
  assert got == pytest.approx(want)


def testEqualPredictionsPreferMoreDevices():
  """Within the tie band the choice takes more devices, then fewer chunks;
  outside it, the faster prediction."""
  mk = lambda k, v, m, step: search.Point(k, 1, m, 'gpipe', v, 'never', [1],
                                          step, 0.0, 0, 1 / step)
  one = mk(1, 1, 1, 1.0)
  two = mk(2, 1, 1, 1.0 + search.TIE_BAND / 2)
  two_v = mk(2, 2, 1, 1.0 + search.TIE_BAND / 2)
  slow = mk(4, 1, 1, 1.0 + 2 * search.TIE_BAND)
  assert search.Order([one, two, slow, two_v]) == [two, two_v, one, slow]
  fast = mk(1, 1, 1, 0.5)
  assert search.Order([one, fast, two])[0] is fast
  assert search.Order([two, one], band=0.0) == [one, two]
  # Where the host measured a split step slower (auto.MoreDevicesFirst):
  # fewer devices first, the rest of the preference unchanged.
  assert search.Order([two_v, slow, two, one], more_devices_first=False
                      ) == [one, two, two_v, slow]


def testTieBandOnlyWhereTheHostRunsOneActionAtATime():
  shared = search.Searcher(_BASE.Scaled, search.Space(4, 16))
  parallel = search.Searcher(_BASE.Scaled, search.Space(4, 16),
                             host_parallelism=lambda k: k)
  assert shared.band == search.TIE_BAND and parallel.band == 0.0


def testAStepsOwnCostAddsOnceToEveryPointAndItsBounds():
  """Overheads.step_s (what a step pays besides its actions) lengthens
  every plan by itself, whatever M, and the bounds with it, so the
  pruned search still finds the brute-force best."""
  c = 0.25
  s0 = _Searcher()
  s1 = search.Searcher(_BASE.Scaled, search.Space(4, 16),
                       host_parallelism=lambda k: k,
                       overheads=plan_lib.Overheads(step_s=c))
  for k, m, sched in ((1, 1, 'gpipe'), (2, 4, '1f1b'), (4, 8, 'gpipe')):
    p0, p1 = (s.Evaluate(1, k, m, sched, 1, 'never') for s in (s0, s1))
    assert p1.step_s == pytest.approx(p0.step_s + c)
    assert s1.LowerBound(1, k, m, sched, 1) == pytest.approx(
        s0.LowerBound(1, k, m, sched, 1) + c)
    assert s1.LowerBound(1, k, m, sched, 1) <= p1.step_s * (1 + 1e-9)
  top = s1.Search(1)[0]
  brute = [s1.Best(*cand) for cand in s1.Candidates(8)]
  assert top.step_s == pytest.approx(
      min(p.step_s for p in brute if p is not None))
