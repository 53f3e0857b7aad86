"""The simulated BFC allocator (planning/allocator.py): its rules on hand-
made requests, and the step a plan replays through it."""
import json

import pytest

from gpipe_lingvo.planning import allocator
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.planning import plan as plan_lib

MIB = 1 << 20


def testRequestsRoundUpTo256Bytes():
  assert [allocator.Rounded(n) for n in (1, 256, 257, 1000)] == [
      256, 256, 512, 1024]


def testABlockLessThanTwiceTheRequestIsHandedOutWhole():
  bfc = allocator.Bfc()
  # A 12 MiB request grows the first region to 16 MiB: 16 < 2 * 12, so
  # the whole region is the block and counts as in use.
  a = bfc.Allocate(12 * MIB)
  assert bfc.BlockBytes(a) == 16 * MIB and bfc.in_use == 16 * MIB
  bfc.Free(a)
  # 16 >= 2 * 6: split.
  b = bfc.Allocate(6 * MIB)
  assert bfc.BlockBytes(b) == 6 * MIB and bfc.reserved == 16 * MIB


def testSmallestFreeBlockServesARequest():
  bfc = allocator.Bfc()
  big = bfc.Allocate(64 * MIB)
  bfc.Free(big)
  blocks = [bfc.Allocate(n * MIB) for n in (3, 1, 5, 1)]
  bfc.Free(blocks[0])
  bfc.Free(blocks[2])
  # Free: 3 MiB and 5 MiB (kept apart by the 1 MiB blocks) and the rest
  # of the region; 2.5 MiB goes into the 3 MiB block, whole.
  c = bfc.Allocate(5 * MIB // 2)
  assert c == blocks[0] and bfc.BlockBytes(c) == 3 * MIB


def testFreedNeighboursMerge():
  bfc = allocator.Bfc()
  bfc.Free(bfc.Allocate(8 * MIB))
  parts = [bfc.Allocate(2 * MIB) for _ in range(3)]
  for p in (parts[0], parts[2], parts[1]):
    bfc.Free(p)
  # One free 8 MiB block again: 7 MiB fits in the region already there.
  bfc.Allocate(7 * MIB)
  assert bfc.reserved == 8 * MIB and bfc.in_use == 8 * MIB


def testReplayCountsBlocksAndAskedBytesApart():
  events = [('a', 'x', 12 * MIB), ('f', 'x', 0), ('a', 'y', 7 * MIB),
            ('a', 'z', 1 * MIB)]
  held, asked = allocator.Replay(events)
  # x holds its 16 MiB region whole; then y splits it (16 >= 2 * 7) and z
  # takes 1 MiB of the rest: 8 MiB in use at the end.
  assert (held, asked) == (16 * MIB, 12 * MIB)
  events.append(('a', 'w', 6 * MIB))
  bfc = allocator.Bfc()
  allocator.Replay(events, bfc)
  # w asks 6 MiB of the 8 MiB left (8 < 2 * 6): it gets all 8.
  assert bfc.in_use == 16 * MIB


def _Cell(name, fwd, bwd):
  return costs_lib.CellCost(name=name, program={'f': fwd, 'b': bwd})


def testStepEventsFreeAfterTheLastReaderAndForwardInPlace():
  # Forward: one op makes a (4 KiB); an element-wise op reads a last and
  # may write its output b into a's buffer. Backward: one op reads b and
  # makes a 1 KiB tensor nothing reads, with a 512-byte temporary.
  kib = 1024
  cell = _Cell('c0',
               fwd=[[[[0, 4 * kib, 1]], [], 0, [], 0],
                    [[[1, 4 * kib, 1]], [[0, 'f', 0]], 0, [[0, 'f', 0]], 0]],
               bwd=[[[[0, kib, 1]], [[0, 'f', 1]], 0, [], kib // 2]])
  table = plan_lib.Pipeline('gpipe', 1, 1, (False,)).Table()
  events = allocator.StepEvents(table, [cell], [(0, 1)], [False])
  kinds = [e[0] for e in events]
  # a allocated, b takes a's buffer, the backward's output allocated, its
  # temporary comes and goes, b (read last there) and the unread output
  # freed.
  assert kinds == ['a', 'm', 'a', 'a', 'f', 'f', 'f']
  held, asked = allocator.Replay(events)
  assert allocator.Replay(events) == (5632, 5632)
  # Without the kernel writing in place, a and b are live together.
  cell.program['f'][1][3] = []
  events = allocator.StepEvents(table, [cell], [(0, 1)], [False])
  assert allocator.Replay(events) == (8 * kib, 8 * kib)


def testRecomputingBackwardFreesTheForwardsTensorsInTheForward():
  kib = 1024
  cell = _Cell('c0', fwd=[[[[0, 64 * kib, 1]], [], 0, [], 0]],
               bwd=[[[[0, kib, 1]], [[0, 'f', 0]], 0, [], 0]])
  table = plan_lib.Pipeline('gpipe', 1, 2, (True, True)).Table()
  kept = allocator.StepEvents(table, [cell], [(0, 1)], [False, False])
  remat = allocator.StepEvents(table, [cell], [(0, 1)], [True, True])
  # Kept: both micro-batches' 64 KiB live until their backward.
  assert allocator.Replay(kept)[1] == 2 * 64 * kib + kib
  # Recomputed: the forward's tensor dies at once; the backward makes it
  # again.
  assert allocator.Replay(remat)[1] == 64 * kib + kib


def testScaledProgramsScaleOnlyBatchSizedBuffers():
  # Traced at 8 examples, replayed at 4: the batch-sized buffer halves;
  # the other and the op's measured temporary do not.
  cell = costs_lib.CellCost(name='c', program={
      'batch': 8, 'f': [[[[0, 1000, 1], [1, 300, 0]], [], 0, [], 50]],
      'b': []})
  half = costs_lib.NetworkCosts(8, 0, [cell]).Scaled(4).cells[0]
  assert half.program is cell.program  # shared; the replay scales
  table = plan_lib.Pipeline('gpipe', 1, 1, (False,)).Table()
  events = allocator.StepEvents(table, [half], [(0, 1)], [False], batch=4)
  assert [n for kind, _, n in events if kind == 'a'] == [500, 300, 50]


@pytest.mark.parametrize('missing', [True, False])
def testStepBlocksNeedsEveryCellsProgram(missing):
  # A copy of an identical cell traced once has none (costs.TraceNetwork).
  cells = [_Cell('c0', [[[[0, 4096, 1]], [], 0, [], 0]], []),
           costs_lib.CellCost(name='c1') if missing else
           _Cell('c1', [[[[0, 4096, 1]], [[-1, 'f', 0]], 0, [], 0]], [])]
  table = plan_lib.Pipeline('gpipe', 1, 1, (False,)).Table()
  out = allocator.StepBlocks(table, cells, [(0, 2)], [False])
  assert (out is None) == missing


def _Traced(batch=8, cells=4):
  """Costs of a real traced network: fully connected ReLU cells, each of
  its own width (no two alike, so every cell is traced)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import layers  # pylint: disable=import-outside-toplevel

  def Build():
    return [layers.FullyConnected.Params().Set(
        name=f'fc{i}', input_dim=256 + 16 * i, output_dim=272 + 16 * i,
        activation='relu').Instantiate() for i in range(cells)], None
  return costs_lib.TraceNetwork(Build, tf.TensorSpec([batch, 256],
                                                     tf.float32))


def testTracedProgramsReadOnlyBuffersTheyOrEarlierCellsMake():
  c = _Traced()
  made = {(i, ph, j) for i, cell in enumerate(c.cells) for ph in 'fb'
          for row in cell.program[ph] for j, _, _ in row[0]}
  for i, cell in enumerate(c.cells):
    assert cell.program['f'] and cell.program['b']
    assert cell.program['batch'] == c.batch
    for ph in 'fb':
      for row in cell.program[ph]:
        for off, rph, j in row[1] + row[3]:
          assert (i + off, rph, j) in made
          # The forward reads no backward; a backward reads the gradient
          # of its output from the next cell at most.
          assert (ph, rph) != ('f', 'b') and off <= (1 if ph == 'b' else 0)
  # The ReLU (element-wise) may write into its matmul's output.
  assert any(row[3] for row in c.cells[0].program['f'])


def testPlanReplaysDataflowStepsThroughTheAllocator():
  c = _Traced()
  ranges = [(0, 2), (2, 4)]
  plans = {e: plan_lib.MakePlan(c, ranges, plan_lib.Pipeline(
      '1f1b', 2, 4, (False,) * 4, execution=e), allocator=True)
           for e in ('dataflow', 'ticks')}
  flow = plans['dataflow']
  assert 0 < flow['allocator_asked_bytes'] <= flow['allocator_blocks_bytes']
  assert flow['step_activation_peak_bytes'] >= flow['allocator_blocks_bytes']
  assert plans['ticks']['allocator_blocks_bytes'] is None
  # Costs cached as JSON give the same plan.
  again = costs_lib.NetworkCosts.FromJson(
      json.loads(json.dumps(c.ToJson())))
  pipe = plan_lib.Pipeline('1f1b', 2, 4, (False,) * 4, execution='dataflow')
  assert (plan_lib.MakePlan(again, ranges, pipe, allocator=True) ==
          plan_lib.MakePlan(c, ranges, pipe, allocator=True))
  # Half the micro-batch: the batch-sized buffers halve, the weights'
  # gradients do not.
  full = allocator.StepBlocks(pipe.Table(), c.cells, ranges, pipe.remat,
                              c.batch)
  half = allocator.StepBlocks(pipe.Table(), c.Scaled(4).cells, ranges,
                              pipe.remat, 4)
  assert full[1] / 2 < half[1] < full[1]
  assert (plan_lib.MakePlan(c.Scaled(4), ranges, pipe, allocator=True)
          ['allocator_blocks_bytes'] == half[0])


def testCopiesOfIdenticalCellsRecordNoProgram():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import layers  # pylint: disable=import-outside-toplevel

  def Build():
    return [layers.FullyConnected.Params().Set(
        name=f'fc{i}', input_dim=64, output_dim=64,
        activation='relu').Instantiate() for i in range(5)], None
  c = costs_lib.TraceNetwork(Build, tf.TensorSpec([4, 64], tf.float32))
  # fc3 repeats fc2 (the same params, input and two predecessors); the
  # last cell is always traced.
  assert [x.program is None for x in c.cells] == [
      False, False, False, True, False]
  table = plan_lib.Pipeline('gpipe', 1, 1, (False,)).Table()
  assert allocator.StepBlocks(table, c.cells, [(0, 5)], [False]) is None


@pytest.mark.parametrize('schedule,v', [('gpipe', 1), ('1f1b', 1),
                                        ('zb_h1', 1), ('zb_v', 2),
                                        ('interleaved_1f1b', 2)])
def testEveryOpRunsOncePerMicroBatchInAnySchedule(schedule, v):
  # A split backward's W runs the weight-gradient-only ops its B left
  # out; a recomputing B runs the forward once more.
  c = _Traced(cells=8)
  k, m = 2, 4
  per = len(c.cells) // (k * v)
  ranges = [(per * i, per * i + per) for i in range(k * v)]
  fwd = sum(len(x.program['f']) for x in c.cells)
  bwd = sum(len(x.program['b']) for x in c.cells)
  for remat in (False, True):
    table = plan_lib.Pipeline(schedule, k, m, (remat,) * m,
                              virtual_stages=v).Table()
    ops = allocator._StepOps(table, c.cells, ranges, [remat] * m)  # pylint: disable=protected-access
    assert len(ops) == m * (fwd * (2 if remat else 1) + bwd)


def testCellsRecomputedPerCellRunTheirForwardAgainInTheBackward():
  # Cells 1-2 and 5 marked (two runs; chunk boundary at 4): each run's
  # forward runs again in B, so its forward tensors die in F and the
  # step asks less than keeping them, more than recomputing every cell.
  from gpipe_lingvo.planning import recompute  # pylint: disable=import-outside-toplevel
  c = _Traced(cells=8)
  flags = (False, True, True, False, False, True, False, False)
  marked = recompute.Apply(c, flags)
  assert [x.recomputed for x in marked.cells] == list(flags)
  ranges, m = [(0, 4), (4, 8)], 2
  table = plan_lib.Pipeline('1f1b', 2, m, (False,) * m).Table()
  ops = allocator._StepOps(table, marked.cells, ranges, [False] * m)  # pylint: disable=protected-access
  fwd = sum(len(x.program['f']) for x in c.cells)
  bwd = sum(len(x.program['b']) for x in c.cells)
  again = sum(len(c.cells[i].program['f']) for i in (1, 2, 5))
  assert len(ops) == m * (fwd + bwd + again)
  asked = {name: allocator.StepBlocks(table, cells, ranges, [r] * m)[1]
           for name, cells, r in (('never', c.cells, False),
                                  ('cells', marked.cells, False),
                                  ('always', c.cells, True))}
  assert asked['always'] < asked['cells'] < asked['never']


def testASharedHostMustFitTheBudgetsSummed():
  # The host's one allocator holds every device's step: what only the
  # host holds (here the prefetched batches) counts against the devices'
  # budgets summed. A host of its own per device has no such sum.
  c = _Traced()
  ranges = [(0, 2), (2, 4)]
  pipe = plan_lib.Pipeline('1f1b', 2, 4, (False,) * 4, execution='dataflow')
  free = plan_lib.MakePlan(c, ranges, pipe, allocator=True)
  budget = float(max(s['peak_bytes'] for s in free['stages']))
  room = 2 * budget - free['host_peak_bytes']
  for extra, shared, fits in ((room, True, True), (room + 1, True, False),
                              (room + 1, False, True)):
    plan = plan_lib.MakePlan(c, ranges, pipe, budgets=[budget] * 2,
                             prefetch_bytes=extra, allocator=True,
                             shared_host=shared)
    assert all(s['peak_bytes'] <= budget for s in plan['stages'])
    assert plan['host_fits'] == plan['fits'] == fits


def _Searcher(c, budget, shared_host=True):
  from gpipe_lingvo.planning import search  # pylint: disable=import-outside-toplevel
  space = search.Space(2, 32, budget, schedules=('gpipe', '1f1b'),
                       remat=('never',))
  return search.Searcher(c.Scaled, space, flops_per_s=1e10,
                         shared_host=shared_host)


def testTheSearchReplaysItsChoiceAndDropsWhatTheHostCannotHold(
    monkeypatch):
  c = _Traced(batch=32)
  assert (_Searcher(c, None, shared_host=False).Search(10)[0]
          .plan['allocator_blocks_bytes'] is None)
  free = _Searcher(c, None).Search(10)
  assert free[0].plan['allocator_blocks_bytes'] is not None
  budget = 2.0 * max(p.plan['host_peak_bytes'] for p in free)
  ranked = _Searcher(c, budget).Search(10)
  # The replay says the first two ranked would take blocks the host
  # cannot hold: the search drops them and replays the next.
  real, calls = allocator.StepBlocks, []

  def Blocks(*args, **kwargs):
    calls.append(args)
    return (int(4 * budget), 0) if len(calls) <= 2 else real(*args, **kwargs)

  monkeypatch.setattr(allocator, 'StepBlocks', Blocks)
  searcher = _Searcher(c, budget)
  got = searcher.Search(10)
  assert len(searcher.replay_dropped) == 2 and len(calls) == 3
  assert ([p.Overrides() for p in searcher.replay_dropped] ==
          [p.Overrides() for p in ranked[:2]])
  assert ([p.Overrides() for p in got[:len(ranked) - 2]] ==
          [p.Overrides() for p in ranked[2:]])
  assert got[0].plan['fits'] and got[0].plan['allocator_blocks_bytes'] < (
      4 * budget)
  # Without a budget any blocks fit: the first is kept.
  calls.clear()
  searcher = _Searcher(c, None)
  assert searcher.Search(10)[0].Overrides() == free[0].Overrides()
  assert not searcher.replay_dropped and len(calls) == 1
