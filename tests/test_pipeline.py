"""Pipeline engine: statistics, forward counts, placement, errors, keys."""
import collections
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context as eager_context

from gpipe_lingvo import context
from gpipe_lingvo import devices
from gpipe_lingvo import errors
from gpipe_lingvo import layers
from gpipe_lingvo.planning import partition
from gpipe_lingvo.pipeline import pipelined_network
from gpipe_lingvo.pipeline import schedule
from tests import pipeline_test_util as util

PN = pipelined_network.PipelinedNetwork


def _Step0():
  return tf.constant(0, tf.int64)


# -- schedules -------------------------------------------------------------------


@pytest.mark.parametrize('k,m', [(2, 8), (4, 16), (3, 5)])
def testScheduleAnalytics(k, m):
  g = schedule.Build('gpipe', k, m)
  assert g.PeakStash() == [m] * k
  # Unit-cost forward and backward: the paper's bubble (K-1)/(M+K-1).
  assert g.BubbleFraction({'F': 1, 'B': 1, 'W': 0}) == pytest.approx(
      (k - 1) / (m + k - 1), abs=0.02)
  c = schedule.Build('1f1b_classic', k, m)
  assert max(c.PeakStash()) <= k
  o = schedule.Build('1f1b', k, m)
  assert o.PeakStash()[0] == min(2 * k - 1, m)
  assert o.BubbleFraction() <= g.BubbleFraction() + 1e-9
  assert o.num_ticks < g.num_ticks


def testUnknownScheduleAndDeadlock():
  with pytest.raises(schedule.ScheduleError, match='Unknown schedule'):
    schedule.Build('zigzag', 2, 2)
  bad = [[schedule.Action('B', k, 0), schedule.Action('F', k, 0)]
         for k in range(2)]
  with pytest.raises(schedule.ScheduleError, match='deadlock'):
    schedule.TickTable(bad, 1, [0, 1])


# -- batch norm statistics -----------------------------------------------------


def _BnCells():
  return [
      layers.Conv2D.Params().Set(name='conv', input_dim=2, output_dim=3,
                                 filter_shape=3),
      layers.BatchNorm.Params().Set(name='bn', dim=3, decay=0.5),
      layers.Activation.Params().Set(name='relu'),
      layers.Flatten.Params().Set(name='flat'),
      layers.FullyConnected.Params().Set(name='logits', input_dim=48,
                                         output_dim=3),
  ]


@pytest.mark.parametrize('remat', ['always', 'never'])
def testBatchNormMovingStatsEqualFullBatch(remat):
  net = PN.Params().Set(name='net', cells=_BnCells(), num_stages=2,
                        num_micro_batches=4, remat=remat).Instantiate()
  x, lab = util.Batch()
  _, _, _, stats = net.ComputeLossAndGradients(x, lab, util.LossFn(16),
                                               _Step0())
  assert list(stats) == ['net/bn']
  (count, s1, s2), = stats['net/bn']
  # Counted once per example, not again for the recompute.
  assert float(count) == 16 * 4 * 4
  conv_out = net.conv.FProp(x)
  mean, var = tf.nn.moments(conv_out, [0, 1, 2])
  net.bn.UpdateStats(stats['net/bn'])
  np.testing.assert_allclose(net.bn.vars.moving_mean.numpy(), 0.5 * mean,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(net.bn.vars.moving_variance.numpy(),
                             0.5 + 0.5 * var, rtol=1e-4, atol=1e-6)


# -- forward counts ------------------------------------------------------------


@pytest.mark.parametrize('remat,per_mb', [('never', 1), ('always', 2)])
@pytest.mark.parametrize('schedule_name', ['gpipe', '1f1b'])
def testEachCellForwardRunsMOr2MTimes(remat, per_mb, schedule_name):
  m = 4
  net = PN.Params().Set(name='net', cells=util.ConvDenseCells(counting=True),
                        num_stages=4, num_micro_batches=m,
                        schedule=schedule_name, remat=remat).Instantiate()
  x, lab = util.Batch()
  net.ComputeLossAndGradients(x, lab, util.LossFn(16), _Step0())
  counts = [float(c.vars.count.numpy()) for c in net.cells]
  assert counts == [per_mb * m] * len(counts)


def testExceptLastRecomputesAllButTheLastMicroBatch():
  m = 4
  net = PN.Params().Set(name='net', cells=util.ConvDenseCells(counting=True),
                        num_stages=2, num_micro_batches=m,
                        remat='except_last').Instantiate()
  x, lab = util.Batch()
  net.ComputeLossAndGradients(x, lab, util.LossFn(16), _Step0())
  assert [float(c.vars.count.numpy()) for c in net.cells] == [2 * m - 1] * 8


# -- devices -------------------------------------------------------------------


def testVariablesAndOpsOnTheirStageDevice():
  cells = [
      layers.FullyConnected.Params().Set(name='a', input_dim=8, output_dim=8,
                                         activation='tanh'),
      layers.FullyConnected.Params().Set(name='b', input_dim=8, output_dim=8,
                                         activation='sigmoid'),
      layers.FullyConnected.Params().Set(name='c', input_dim=8, output_dim=8,
                                         activation='relu'),
  ]
  net = PN.Params().Set(name='net', cells=cells, num_stages=3,
                        num_micro_batches=2, remat='always').Instantiate()
  for k, name in enumerate('abc'):
    for v in getattr(net, name).AllVariables():
      assert v.device.endswith(f'CPU:{k}'), (v.name, v.device)
  ctx = eager_context.context()
  ctx.enable_run_metadata()
  try:
    x = tf.ones([4, 8])
    net.ComputeLossAndGradients(
        x, x, lambda o, l: (tf.reduce_sum(o * l), {}), _Step0())
    md = ctx.export_run_metadata()
  finally:
    ctx.disable_run_metadata()
  where = collections.defaultdict(set)
  for fg in md.function_graphs:
    for pg in fg.partition_graphs:
      for node in pg.node:
        where[node.op].add(node.device.split('device:')[-1])
  # Gradient ops of each stage's activation ran on that stage's device (the
  # forward activations are fused into the matmuls by grappler; matmuls ran
  # on all three devices).
  assert where['TanhGrad'] == {'CPU:0'}
  assert where['SigmoidGrad'] == {'CPU:1'}
  assert where['ReluGrad'] == {'CPU:2'}
  matmuls = set().union(*[d for op, d in where.items() if 'MatMul' in op])
  assert matmuls == {'CPU:0', 'CPU:1', 'CPU:2'}


# -- errors ----------------------------------------------------------------------


def _Params(**kw):
  return PN.Params().Set(name='net', cells=util.ConvDenseCells(), **kw)


def testErrors():
  with pytest.raises(partition.PartitionError, match='num_stages=9.*8 cells'):
    _Params(num_stages=9).Instantiate()
  with pytest.raises(partition.PartitionError, match=r'sums to 7.*8 cells'):
    _Params(num_stages=2, partition=[3, 4]).Instantiate()
  with pytest.raises(partition.PartitionError, match='one cell count per'):
    _Params(num_stages=2, partition=[8]).Instantiate()
  too_many = _Params(num_stages=8)
  too_many.topology.devices_per_stage = 2  # conftest made 8 logical CPUs.
  with pytest.raises(devices.DeviceError, match='needs 16 CPU devices but '
                     'only 8 exist'):
    too_many.Instantiate()
  with pytest.raises(ValueError, match="unknown schedule 'zigzag'"):
    _Params(schedule='zigzag').Instantiate()
  with pytest.raises(ValueError, match="unknown remat policy 'sometimes'"):
    _Params(remat='sometimes').Instantiate()
  with pytest.raises(ValueError, match="batch_norm_mode 'global'"):
    _Params(batch_norm_mode='global').Instantiate()
  with pytest.raises(errors.ParamsError,
                     match=r'^net\.num_micro_batches=3 does not divide the '
                     'input_shape batch 16; use'):
    _Params(num_stages=2, num_micro_batches=3,
            input_shape=[16, 8, 8, 2]).Instantiate()
  net = _Params(num_stages=2, num_micro_batches=3).Instantiate()
  x, lab = util.Batch(16)
  with pytest.raises(errors.ParamsError,
                     match=r'^net\.num_micro_batches=3 does not divide the '
                     'batch size 16; use'):
    net.ComputeLossAndGradients(x, lab, util.LossFn(16), _Step0())


def testExplicitPartition():
  net = _Params(num_stages=3, partition=[1, 5, 2]).Instantiate()
  assert [len(net.StageCells(k)) for k in range(3)] == [1, 5, 2]
  assert net.logits.AllVariables()[0].device.endswith('CPU:2')
  assert partition.Partition(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]


# -- checkpoints -----------------------------------------------------------------


def _Keys(prefix):
  return sorted(n for n, _ in tf.train.list_variables(prefix)
                if not n.startswith('_CHECKPOINTABLE_OBJECT_GRAPH'))


def testCheckpointKeysIndependentOfStagesAndMicroBatches(tmp_path):
  src = _Params(num_stages=2, num_micro_batches=4, random_seed=7).Instantiate()
  prefix = tf.train.Checkpoint(network=src).write(str(tmp_path / 'k2'))
  targets = {
      'k4': _Params(num_stages=4, num_micro_batches=2).Instantiate(),
      'seq': layers.Sequential.Params().Set(
          name='net', cells=util.ConvDenseCells()).Instantiate(),
  }
  for name, net in targets.items():
    p = tf.train.Checkpoint(network=net).write(str(tmp_path / name))
    assert _Keys(p) == _Keys(prefix), name
    tf.train.Checkpoint(network=net).read(
        prefix).assert_existing_objects_matched()
    for a, b in zip(src.AllVariables(), net.AllVariables()):
      assert a.name == b.name
      np.testing.assert_array_equal(a.numpy(), b.numpy())


def testFPropEvalEqualsSequential():
  net = _Params(num_stages=4, num_micro_batches=2).Instantiate()
  seq = layers.Sequential.Params().Set(
      name='net', cells=util.ConvDenseCells()).Instantiate()
  x, _ = util.Batch()
  with context.Scope(training=False):
    np.testing.assert_allclose(net.FProp(x), seq.FProp(x), rtol=1e-5)


# -- full_batch batch norm -------------------------------------------------------


def _TwoBnCells():
  return [
      layers.Conv2D.Params().Set(name='conv1', input_dim=2, output_dim=3,
                                 filter_shape=3),
      layers.BatchNorm.Params().Set(name='bn1', dim=3),
      layers.Activation.Params().Set(name='relu1'),
      layers.Conv2D.Params().Set(name='conv2', input_dim=3, output_dim=3,
                                 filter_shape=3),
      layers.BatchNorm.Params().Set(name='bn2', dim=3),
      layers.Flatten.Params().Set(name='flat'),
      layers.FullyConnected.Params().Set(name='logits', input_dim=48,
                                         output_dim=3),
  ]


def testFullBatchBatchNormEqualsUnpipelined():
  seq = layers.Sequential.Params().Set(name='net',
                                       cells=_TwoBnCells()).Instantiate()
  x, lab = util.Batch()
  with context.Scope(training=True, step=0, micro_batch=0, stats={}):
    with tf.GradientTape() as tape:
      ref_loss, _ = util.LossFn(16)(seq.FProp(x), lab)
  ref_grads = tape.gradient(ref_loss, seq.TrainableVariables())
  losses = {}
  for mode in ('full_batch', 'micro_batch'):
    net = PN.Params().Set(name='net', cells=_TwoBnCells(), num_stages=2,
                          num_micro_batches=4, remat='always',
                          batch_norm_mode=mode).Instantiate()
    assert net.bn2.params.mode == mode
    loss, _, grads, stats = net.ComputeLossAndGradients(
        x, lab, util.LossFn(16), _Step0())
    losses[mode] = float(loss)
    if mode == 'full_batch':
      np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
      for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5)
      assert float(stats['net/bn2'][0][0]) == 16 * 16
  # Micro-batch statistics normalise differently: the test can tell.
  assert abs(losses['micro_batch'] - float(ref_loss)) > 1e-4


def testPartitionAndBatchNormModeSetByTextOverride():
  from gpipe_lingvo import hyperparams  # pylint: disable=g-import-not-at-top
  p = _Params(num_stages=2)
  hyperparams.ApplyOverrides(p, 'partition = [3, 5]; batch_norm_mode = '
                             'full_batch; schedule = 1f1b')
  net = p.Instantiate()
  assert [len(net.StageCells(k)) for k in range(2)] == [3, 5]
  assert (net.params.batch_norm_mode, net.params.schedule) == ('full_batch',
                                                               '1f1b')
  with pytest.raises(partition.PartitionError, match='not a list of ints'):
    partition.Partition(8, 2, '[3, five]')


def testFPropUnderTapeCollectsMicroBatchStatsOnce():
  """The training FProp (tick loop) records batch-norm sums over all
  micro-batches once, like the training step, and its graph does not grow
  with M."""
  x, lab = util.Batch()
  sizes = {}
  for m in (2, 8):
    net = PN.Params().Set(name='net', cells=_BnCells(), num_stages=2,
                          num_micro_batches=m,
                          execution='ticks').Instantiate()
    _, _, _, step_stats = net.ComputeLossAndGradients(
        x, lab, util.LossFn(16), _Step0())

    def Fwd(x, net=net):
      with context.Scope(training=True, step=0, stats={}):
        return net.FProp(x)

    graph = tf.function(Fwd, autograph=False).get_concrete_function(
        x).graph.as_graph_def()
    sizes[m] = len(graph.node) + sum(len(f.node_def)
                                     for f in graph.library.function)
    stats = {}
    with context.Scope(training=True, step=0, stats=stats):
      net.FProp(x)
    (count, s1, s2), = stats['net/bn']
    assert float(count) == 16 * 16
    np.testing.assert_allclose(s1, step_stats['net/bn'][0][1], rtol=1e-5)
    np.testing.assert_allclose(s2, step_stats['net/bn'][0][2], rtol=1e-5)
  assert sizes[2] == sizes[8]


# -- chunks (virtual stages) -----------------------------------------------------


def testChunkedScheduleErrorsNameTheFields():
  with pytest.raises(schedule.ScheduleError,
                     match=r"net: schedule='gpipe' runs 1 chunk.*"
                     'virtual_stages=2'):
    _Params(num_stages=2, virtual_stages=2).Instantiate()
  with pytest.raises(schedule.ScheduleError, match='set virtual_stages=2'):
    _Params(num_stages=2, schedule='zb_v').Instantiate()
  with pytest.raises(schedule.ScheduleError,
                     match='num_micro_batches=6, num_stages=4'):
    _Params(num_stages=4, num_micro_batches=6, schedule='interleaved_1f1b',
            virtual_stages=2).Instantiate()
  with pytest.raises(partition.PartitionError,
                     match=r'num_stages=4 x virtual_stages=3 = 12 chunks but '
                     'the network has 8 cells'):
    _Params(num_stages=4, num_micro_batches=4, schedule='interleaved_1f1b',
            virtual_stages=3).Instantiate()
  with pytest.raises(partition.PartitionError, match='one cell count per '
                     'chunk'):
    _Params(num_stages=2, num_micro_batches=2, schedule='interleaved_1f1b',
            virtual_stages=2, partition=[4, 4]).Instantiate()


def testChunksPlacementKeysAndForward(tmp_path):
  """Interleaved: chunk c on device c % K, cells and keys as Sequential,
  FProp (evaluation) through the executor equals the Sequential."""
  net = _Params(num_stages=2, num_micro_batches=2, schedule='interleaved_1f1b',
                virtual_stages=2, partition=[1, 3, 2, 2]).Instantiate()
  assert net.chunk_device == [0, 1, 0, 1]
  assert [len(net.ChunkCells(c)) for c in range(4)] == [1, 3, 2, 2]
  assert [c.params.name for c in net.StageCells(0)] == [
      'conv1', 'split', 'dict_fc']
  for c in range(4):
    for v in net.ChunkVariables(c):
      assert v.device.endswith(f'CPU:{c % 2}'), (v.name, v.device)
  seq = layers.Sequential.Params().Set(
      name='net', cells=util.ConvDenseCells()).Instantiate()
  a = tf.train.Checkpoint(network=net).write(str(tmp_path / 'a'))
  b = tf.train.Checkpoint(network=seq).write(str(tmp_path / 'b'))
  assert _Keys(a) == _Keys(b)
  tf.train.Checkpoint(network=seq).read(a).assert_existing_objects_matched()
  x, _ = util.Batch()
  with context.Scope(training=False):
    np.testing.assert_allclose(net.FProp(x), seq.FProp(x), rtol=1e-5)
  zbv = _Params(num_stages=4, num_micro_batches=2, schedule='zb_v',
                virtual_stages=2).Instantiate()
  assert zbv.chunk_device == [0, 1, 2, 3, 3, 2, 1, 0]
  assert zbv.logits.AllVariables()[0].device.endswith('CPU:0')
