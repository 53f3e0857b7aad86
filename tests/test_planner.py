"""Planner: exact balancing under a memory budget, the plan as data, the
trace-based costs and --mode=plan (no devices, no weights)."""
import itertools
import json
import math
import os
import random
import subprocess
import sys

import pytest

from gpipe_lingvo import layers
from gpipe_lingvo import model_registry
from gpipe_lingvo.pipeline import costs as costs_lib
from gpipe_lingvo.pipeline import partition
from gpipe_lingvo.pipeline import pipelined_network
from gpipe_lingvo.pipeline import plan as plan_lib
from gpipe_lingvo.pipeline import schedule_view

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _ToyCosts(n=6, batch=4, res=1000, out=100, params=50):
  """Costs of a toy network, no TensorFlow: every cell keeps `res` bytes."""
  cells = [costs_lib.CellCost(
      name=f'c{i}', params=params, param_bytes=4 * params, out_bytes=out,
      fwd_flops=10 * (i + 1), bwd_flops=20 * (i + 1), fwd_peak=res + out,
      residual_bytes=res, bwd_peak=res + 2 * out, fwd_s=0.001 * (i + 1),
      bwd_s=0.002 * (i + 1)) for i in range(n)]
  return costs_lib.NetworkCosts(batch, out, cells)


@pytest.mark.parametrize('schedule', schedule_view.SCHEDULES)
def testPlanStashFollowsTheTickTable(schedule):
  c = _ToyCosts()
  k, m = 3, 6
  ranges = partition.Partition(6, k)
  never = plan_lib.MakePlan(c, ranges, schedule, m, [False] * m)
  always = plan_lib.MakePlan(c, ranges, schedule, m, [True] * m)
  peaks = schedule_view.ScheduleView(schedule, k, m).PeakStash()
  for s, n in zip(never['stages'], peaks):
    # Without remat each stashed micro-batch keeps its residuals.
    assert s['stash_peak_bytes'] >= n * s['residual_bytes']
    assert s['stashed_micro_batches'] == n
  for sn, sa in zip(never['stages'], always['stages']):
    assert sa['stash_peak_bytes'] < sn['stash_peak_bytes']
  assert never['partition'] == [2, 2, 2]
  assert json.loads(json.dumps(never)) == never  # Plans are data.


def testPlanStaticBytesAndTime():
  c = _ToyCosts()
  p = plan_lib.MakePlan(c, [(0, 2), (2, 6)], 'gpipe', 2, [True, True],
                        slots_per_weight=2, budgets=[1e9, 10])
  s0 = p['stages'][0]
  assert s0['params'] == 100 and s0['weight_bytes'] == 400
  assert s0['slot_bytes'] == 800 and s0['accumulator_bytes'] == 400
  assert math.isclose(s0['forward_s'], 0.003)
  assert math.isclose(s0['backward_s'], 0.006)
  assert not p['fits']  # Stage 1's budget of 10 bytes.
  # One action at a time on a shared host: the step is all the work.
  work = sum(2 * (s['forward_s'] * 2 + s['backward_s']) for s in p['stages'])
  assert math.isclose(p['step_s'], work)
  par = plan_lib.MakePlan(c, [(0, 2), (2, 6)], 'gpipe', 2, [True, True],
                          host_parallelism=2)
  assert par['step_s'] < p['step_s'] and 0 < par['bubble'] < 1


def testTimelineMatchesTheTable():
  view = schedule_view.ScheduleView('1f1b', 2, 4)
  boxes = view.Timeline(lambda kind, k, mb: 1.0 if kind == 'F' else 2.0)
  assert len(boxes) == 2 * 2 * 4
  for b in boxes:  # A backward never starts before its forward ends.
    if b.kind == 'B':
      f = [x for x in boxes if x.kind == 'F' and x.stage == b.stage and
           x.mb == b.mb][0]
      assert f.end <= b.start


def testBudgetFailureSaysWhatWouldFit():
  c = _ToyCosts(res=10_000)
  m = 4
  fn = plan_lib.StageBytesFn(c, 'gpipe', 2, m, [False] * m)
  need = max(fn(0, 0, 3), fn(1, 3, 6))
  with pytest.raises(plan_lib.PlanError) as e:
    plan_lib.BalancedPartition(c, 'flops', 2, 'gpipe', m, [False] * m,
                               budgets=[need * 0.6] * 2)
  msg = str(e.value)
  assert 'stage' in msg and 'budget' in msg and 'Would fit with' in msg
  assert "remat 'always'" in msg
  ok = plan_lib.BalancedPartition(c, 'flops', 2, 'gpipe', m, [False] * m,
                                  budgets=[need * 1.5] * 2)
  assert len(ok) == 2


_COSTS = {}


def _ResNetCosts(batch=8):
  """ResNet-20 costs, traced once per test module."""
  if batch not in _COSTS:
    p = model_registry.GetParams('cifar10.ResNet20')
    from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
    _COSTS[batch] = model_plan.ModelCosts(p, batch)
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
    assert x.bwd_flops > x.fwd_flops > 0
    assert x.residual_bytes > 0 and x.bwd_peak >= x.residual_bytes
  half = c.Scaled(4)
  assert half.cells[1].residual_bytes * 2 == c.cells[1].residual_bytes


def testCostPartitionModes():
  c = _ResNetCosts()
  flops = plan_lib.BalancedPartition(c, 'flops', 3, 'gpipe', 2, [True] * 2)
  params = plan_lib.BalancedPartition(c, 'params', 3, 'gpipe', 2, [True] * 2)
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
  with pytest.raises(partition.PartitionError, match='needs the network'):
    p.Copy().Set(input_shape=None).Instantiate()
  q = p.Copy()
  q.topology.memory_budget_bytes = 1000
  with pytest.raises(partition.PartitionError, match='over its budget of 1000 B'):
    q.Instantiate()


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
  plan = json.loads((tmp_path / 'plan.json').read_text())
  assert plan['num_stages'] == 8 and len(plan['stages']) == 8
  assert sum(plan['partition']) == 11 and plan['partition_spec'] == 'flops'
  assert plan['fits'] and plan['largest_batch_that_fits'] >= 128
  assert '| 7 |' in out.stdout and 'bubble' in out.stdout
  for png in ('plan_timeline.png', 'plan_memory.png'):
    assert (tmp_path / png).stat().st_size > 10_000


def _Measure(configs):
  """A process of its own (bench/planner_bench.py's worker): allocator
  statistics and one inter-op thread must be set before TensorFlow
  starts."""
  cfg = {'model': 'cifar10.ResNet20', 'configs': configs, 'reps': 3}
  return subprocess.Popen(
      [sys.executable, 'bench/planner_bench.py', '--worker', json.dumps(cfg)],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def testPredictedPeakMemoryWithin15PercentOfMeasured():
  # ResNet-20 as registered (batch 128, gpipe, remat always) at K in
  # {1, 2, 4} and M in {2, 4}; two processes run side by side.
  procs = [_Measure([[1, 2], [2, 2], [4, 2]]),
           _Measure([[1, 4], [2, 4], [4, 4]])]
  rows = []
  for proc in procs:
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    rows += [json.loads(l[len('RESULT '):]) for l in out.splitlines()
             if l.startswith('RESULT ')]
  assert len(rows) == 6
  for r in rows:
    ratio = r['predicted_bytes'] / r['measured_bytes']
    assert 0.85 <= ratio <= 1.15, (r['k'], r['m'], ratio)
