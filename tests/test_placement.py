"""Both placements of the pipeline: device scopes (CPU/GPU names, several
devices per stage) and logical cores (XLA sharding annotations), the
latter compiled with jit_compile on CPU against the former."""
import pytest
import tensorflow as tf

from gpipe_lingvo import devices
from gpipe_lingvo import optimizers
from gpipe_lingvo.pipeline import pipelined_network
from gpipe_lingvo.pipeline import placement
from gpipe_lingvo.pipeline import xla_annotations
from tests import pipeline_test_util as util

PN = pipelined_network.PipelinedNetwork


def _Topo(**kw):
  return devices.TopologyParams().Set(**kw)


# -- params -----------------------------------------------------------------------


def testPlacementFollowsTheDeviceTypeUnlessSet():
  assert devices.Placement(_Topo()) == 'device_scopes'
  assert devices.Placement(_Topo(device_type='gpu')) == 'device_scopes'
  assert devices.Placement(_Topo(device_type='tpu')) == 'logical_cores'
  assert devices.Placement(_Topo(placement='logical_cores')) == 'logical_cores'


@pytest.mark.parametrize('kw, message', [
    (dict(placement='cores'), r'net\.topology\.placement: must be one of '
     r"\('device_scopes', 'logical_cores'\) or ''.*got 'cores'"),
    (dict(placement='device_scopes', device_type='tpu',
          tpu_computation_shape=[1, 1, 1, 2]),
     r"net\.topology\.placement: 'device_scopes' cannot place stages on a "
     'TPU'),
])
def testBadPlacementFailsAtInstantiateNamingTheField(kw, message):
  p = PN.Params().Set(name='net', cells=util.ConvDenseCells(), num_stages=2)
  p.topology.Set(**kw)
  with pytest.raises(devices.DeviceError, match=message):
    p.Instantiate()


# -- device scopes: names and several devices per stage ------------------------


def testStageDeviceNamesForGpusAndSeveralDevicesPerStage():
  topo = _Topo(device_type='gpu', devices_per_stage=2)
  assert devices.StageDeviceGroups(topo, 3) == [
      ['/device:GPU:0', '/device:GPU:1'], ['/device:GPU:2', '/device:GPU:3'],
      ['/device:GPU:4', '/device:GPU:5']]
  assert devices.StageDevices(topo, 3) == [
      '/device:GPU:0', '/device:GPU:2', '/device:GPU:4']
  where = placement.DeviceScopes(devices.StageDevices(topo, 2), [0, 1, 1, 0])
  assert [where.Name(c) for c in range(4)] == [
      '/device:GPU:0', '/device:GPU:2', '/device:GPU:2', '/device:GPU:0']


@pytest.mark.parametrize('cards, count, limit, per_card', [
    (1, 4, 4096, 4),   # K=4 stages as four logical GPUs of one card
    (2, 4, 4096, 2),   # logical GPUs 0, 1 on card 0; 2, 3 on card 1
    (3, 4, 1000, 2),
    (8, 4, 4096, 1),   # enough cards: each gets one device of the limit
    (4, 4, 0, 0),      # no limit: the cards as they are
])
def testLogicalGpusPerCard(cards, count, limit, per_card):
  assert devices.LogicalGpusPerCard(cards, count, limit) == per_card


def testTooFewGpusWithoutALimitNamesTheFix():
  with pytest.raises(devices.DeviceError,
                     match='needs 4 GPUs but 2 exist.*gpu_memory_limit_mb'):
    devices.LogicalGpusPerCard(2, 4, 0)


def testStageOnTheFirstDeviceOfItsGroupWithSlotsBeside():
  p = PN.Params().Set(name='net', cells=util.ConvDenseCells(), num_stages=2,
                      num_micro_batches=2)
  p.topology.devices_per_stage = 2
  net = p.Instantiate()
  assert net.stage_devices == ['/device:CPU:0', '/device:CPU:2']
  opt = optimizers.Optimizer.Params().Set(type='adam').Instantiate()
  opt.Build(net.TrainableVariables(), net.VariablePlacement())
  net.CreateGradientAccumulators()
  for k in range(2):
    for v in net.StageVariables(k):
      assert v.device.endswith(f'CPU:{2 * k}'), (v.name, v.device)
      for slot in opt.slots[optimizers.SlotKey(v)].values():
        assert slot.device == v.device
      assert net._GradAccumulator(v, 0).device == v.device


# -- logical cores under XLA ---------------------------------------------------

_NETS = {}


def _Pair(schedule, k):
  """(device-scope network, logical-core network with the same weights)."""
  if (schedule, k) not in _NETS:
    v = 2 if schedule == 'zb_v' else 1
    nets = []
    for where in ('device_scopes', 'logical_cores'):
      p = PN.Params().Set(name='net', cells=util.ConvDenseCells(),
                          num_stages=k, num_micro_batches=4,
                          schedule=schedule, virtual_stages=v)
      p.topology.placement = where
      nets.append(p.Instantiate())
    for a, b in zip(*[n.TrainableVariables() for n in nets]):
      b.assign(a)
    nets[1].CreateGradientAccumulators()
    _NETS[(schedule, k)] = nets
  return _NETS[(schedule, k)]


def _Jit(net, loss_fn):
  return tf.function(
      lambda x, lab, s: net.ComputeLossAndGradients(x, lab, loss_fn, s)[:3],
      jit_compile=True, autograph=False)


@pytest.mark.parametrize('schedule, k', [
    ('gpipe', 2), ('1f1b', 2), ('zb_h1', 2), ('gpipe', 4)])
def testAnnotatedStepUnderXlaEqualsTheDeviceScopeStep(schedule, k):
  """K stages on logical cores compile as one XLA program on CPU and give
  the device-scope step's loss and gradients; the compiled HLO pins work
  to every stage's core."""
  scoped, annotated = _Pair(schedule, k)
  assert annotated.stage_devices == [f'logical core {i}' for i in range(k)]
  assert {v.device for v in annotated.TrainableVariables()} == {
      '/job:localhost/replica:0/task:0/device:CPU:0'}
  x, lab = util.Batch()
  step = tf.constant(3, tf.int64)
  loss0, sums0, grads0, _ = scoped.ComputeLossAndGradients(
      x, lab, util.LossFn(16), step)
  fn = _Jit(annotated, util.LossFn(16))
  loss1, sums1, grads1 = fn(x, lab, step)
  assert float(loss1) == pytest.approx(float(loss0), rel=1e-6)
  assert float(sums1['num']) == pytest.approx(float(sums0['num']))
  scale = max(float(tf.reduce_max(tf.abs(g))) for g in grads0)
  for g0, g1, v in zip(grads0, grads1, scoped.TrainableVariables()):
    assert float(tf.reduce_max(tf.abs(g0 - g1))) <= 1e-5 * scale, v.name
  hlo = fn.experimental_get_compiler_ir(x, lab, step)(stage='hlo')
  assert set(xla_annotations.CountMaximalShardings(hlo)) == set(range(k))


def testAnnotatedStepWithDropoutEqualsTheOneStageXlaStep():
  """XLA draws other random numbers than TensorFlow's kernels for the same
  seed, so with dropout compare XLA with XLA: K=2 on logical cores against
  K=1 (no annotations), both compiled; masks depend on the step, the
  micro-batch and the layer path only."""
  nets = []
  for k, where in ((2, 'logical_cores'), (1, 'device_scopes')):
    p = PN.Params().Set(name='net', cells=util.ConvDenseCells(dropout=0.3),
                        num_stages=k, num_micro_batches=4, remat='always')
    p.topology.placement = where
    nets.append(p.Instantiate())
  for a, b in zip(*[n.TrainableVariables() for n in nets]):
    b.assign(a)
  x, lab = util.Batch()
  step = tf.constant(5, tf.int64)
  out = []
  for net in nets:
    net.CreateGradientAccumulators()
    out.append(_Jit(net, util.LossFn(16))(x, lab, step))
  (loss0, _, grads0), (loss1, _, grads1) = out
  assert float(loss0) == pytest.approx(float(loss1), rel=1e-6)
  for g0, g1 in zip(grads0, grads1):
    assert float(tf.reduce_max(tf.abs(g0 - g1))) <= 1e-6
  # Not the same as TensorFlow's kernels: the masks differ.
  loss_tf = nets[1].ComputeLossAndGradients(x, lab, util.LossFn(16), step)[0]
  assert abs(float(loss_tf) - float(loss0)) > 1e-4


def testLogicalCoresCreateEveryVariableInTheStrategyScope():
  """Weights, gradient accumulators and optimizer slots of a network built
  under a strategy are the strategy's variables, also when the slots and
  accumulators are made outside its scope (through the chunk's
  VariableScope)."""
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with strategy.scope():
    p = PN.Params().Set(name='net', cells=util.ConvDenseCells(),
                        num_stages=2, num_micro_batches=2)
    p.topology.placement = 'logical_cores'
    net = p.Instantiate()
  opt = optimizers.Optimizer.Params().Set(type='momentum').Instantiate()
  opt.Build(net.TrainableVariables(), net.VariablePlacement())
  net.CreateGradientAccumulators()
  assert net.placement.strategy is strategy
  made = strategy.extended.variable_created_in_scope
  for c in range(net.num_chunks):
    for v in net.ChunkVariables(c):
      assert made(v), v.name
      if v.trainable:
        assert made(opt.slots[optimizers.SlotKey(v)]['m']), v.name
        assert made(net._GradAccumulator(v, c)), v.name
  assert not made(opt.iterations)  # created outside: not the network's


def testTpuTopologyInstantiatesWithAnnotationsOnCpu():
  p = PN.Params().Set(name='net', cells=util.ConvDenseCells(), num_stages=2)
  p.topology.Set(device_type='tpu', devices_per_stage=2,
                 tpu_computation_shape=[1, 1, 1, 4])
  net = p.Instantiate()
  assert isinstance(net.placement, placement.LogicalCores)
  # Stage k on the first of its logical cores [2k, 2k + 1].
  assert net.stage_devices == ['logical core 0', 'logical core 2']
