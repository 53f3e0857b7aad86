"""execution='dataflow': each device runs its actions one at a time, in the
table's order; adjacent B and W of one micro-batch run fused."""
import pytest
import tensorflow as tf

from gpipe_lingvo import devices
from gpipe_lingvo import layers
from gpipe_lingvo.pipeline import dataflow
from gpipe_lingvo.pipeline import executor
from gpipe_lingvo.pipeline import pipelined_network
from gpipe_lingvo.pipeline import schedule
from tests import pipeline_test_util as util


def testFusedBackwardsAreTheAdjacentPairs():
  tab = schedule.Build('zb_h1', 2, 8)
  # Device 0 (the first stage) runs each W right after its B; device 1
  # defers every W past the next forward.
  assert schedule.FusedBackwards(tab) == {(0, i) for i in range(8)}
  assert not schedule.FusedBackwards(schedule.Build('1f1b', 2, 8))
  for name, v in (('zb_h1', 1), ('zb_v', 2)):
    tab = schedule.Build(name, 4, 8, v)
    for c, i in schedule.FusedBackwards(tab):
      order = [a for row in tab.ticks for a in row[tab.chunk_device[c]]]
      at = order.index(schedule.Action('B', c, i))
      assert order[at + 1] == schedule.Action('W', c, i)


def testDeviceOrderBuildsProducersFirst():
  tab = schedule.Build('zb_v', 2, 4, 2)
  built = set()
  for _, _, a in schedule.DeviceOrder(tab):
    if a.kind == 'F' and a.chunk > 0:
      assert schedule.Action('F', a.chunk - 1, a.mb) in built
    if a.kind == 'B' and a.chunk < tab.num_chunks - 1:
      assert schedule.Action('B', a.chunk + 1, a.mb) in built
    if a.kind == 'W':
      assert schedule.Action('B', a.chunk, a.mb) in built
    built.add(a)
  assert len(built) == 3 * tab.num_chunks * 4


@pytest.mark.parametrize('name,v,remat', [('zb_h1', 1, 'always'),
                                          ('1f1b', 1, 'never'),
                                          ('zb_v', 2, 'except_last')])
def testEachDeviceFinishesItsActionsInTableOrder(name, v, remat):
  """From a profile of one step: on every device the actions end in the
  order of the table (a W fused with its B has no box of its own). Control
  edges that TensorFlow drops when it inlines the calls would let a
  device's backwards run before its forwards, and this fail."""
  boxes, tab = util.ProfiledTanhStep(
      64, 64, num_stages=2, num_micro_batches=4, schedule=name,
      virtual_stages=v, remat=remat, execution='dataflow')
  fused = schedule.FusedBackwards(tab)
  for d in range(tab.num_devices):
    want = [(a.kind, a.chunk, a.mb) for row in tab.ticks for a in row[d]
            if not (a.kind == 'W' and (a.chunk, a.mb) in fused)]
    got = [tuple(b[1:4]) for b in sorted(boxes, key=lambda b: b[5])
           if b[0] == d]
    assert got == want, f'device {d}'


def testOpNamesGiveTheMicroBatch():
  scope = dataflow.MicroBatchScope('outer', schedule.Action('W', 3, 5))
  assert schedule.ParseActionScope(scope + 'piece/MatMul') == (
      schedule.ActionOp('W', 3, 5, False))
  assert schedule.ParseActionScope('a/action_3W/MatMul').mb is None


def testHostOrderRunsEveryActionInDeviceOrder():
  """action_order='host': from a profile of one step, the actions of all
  devices end in DeviceOrder (one chain): what the host holds follows the
  plan's order. (Ops that read no gated tensor, such as the slice of a
  micro-batch from the batch, may still run early.)"""
  boxes, tab = util.ProfiledTanhStep(
      64, 64, num_stages=2, num_micro_batches=4, schedule='1f1b',
      remat='always', execution='dataflow', action_order='host')
  want = [(a.kind, a.chunk, a.mb) for _, _, a in schedule.DeviceOrder(tab)]
  got = [tuple(b[1:4]) for b in sorted(boxes, key=lambda b: b[5])]
  assert got == want


def testHostOrderIsTheDefaultForOneOpAtATimeOnCpu():
  topo = devices.TopologyParams()
  assert executor.HostOrder('auto', topo)  # cpu, one inter-op thread
  topo.inter_op_threads = 0
  assert not executor.HostOrder('auto', topo)
  assert executor.HostOrder('host', topo)
  topo.inter_op_threads, topo.device_type = 1, 'gpu'
  assert not executor.HostOrder('auto', topo)
  assert not executor.HostOrder('device', devices.TopologyParams())


@pytest.mark.parametrize('execution', ['dataflow', 'ticks'])
def testControlEdgesGrowWithTheGraphNotItsSquare(execution):
  """A step whose actions keep their activations (remat off) hands many
  tensors from one action to the next; ordering them must cost about one
  control edge per op, not one per pair of ops (the graph optimizer spent
  most of such a graph's first call on those edges)."""
  cells = [layers.Sequential.Params().Set(name=f'block{i}', cells=[
      layers.FullyConnected.Params().Set(
          name=f'fc{j}', input_dim=8, output_dim=8, activation='tanh')
      for j in range(16)]) for i in range(2)]
  net = pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=cells, num_stages=2, num_micro_batches=2,
      remat='never', execution=execution).Instantiate()
  net.CreateGradientAccumulators()
  x = tf.zeros([4, 8])
  step = tf.function(lambda: net.ComputeLossAndGradients(
      x, tf.zeros([4]), lambda out, lab: (tf.reduce_sum(out), {}),
      tf.constant(0, tf.int64))[0])
  ops = step.get_concrete_function().graph.get_operations()
  edges = sum(len(op.control_inputs) for op in ops)
  assert edges < 2 * len(ops), (edges, len(ops))
