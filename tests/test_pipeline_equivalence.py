"""Loss and gradients of the pipeline equal the un-pipelined network's."""
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo import layers
from gpipe_lingvo.pipeline import pipelined_network
from tests import pipeline_test_util as util

_REF = {}


def _Reference():
  """Loss and grads of layers.Sequential (K=1, M=1) with the same weights."""
  if not _REF:
    net = layers.Sequential.Params().Set(
        name='net', cells=util.ConvDenseCells()).Instantiate()
    x, lab = util.Batch()
    with context.Scope(training=True, step=0, micro_batch=0):
      with tf.GradientTape() as tape:
        loss, _ = util.LossFn(16)(net.FProp(x), lab)
    _REF['loss'] = loss.numpy()
    _REF['grads'] = [g.numpy() for g in
                     tape.gradient(loss, net.TrainableVariables())]
    _REF['names'] = [v.name for v in net.TrainableVariables()]
  return _REF


def _Pipelined(k, m, schedule, remat, cells=None, v=1, execution='ticks'):
  return pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=cells or util.ConvDenseCells(), num_stages=k,
      num_micro_batches=m, schedule=schedule, remat=remat,
      virtual_stages=v, execution=execution).Instantiate()


_REMAT = ['always', 'except_last', 'never']
_SCHEDULES = [('gpipe', 1), ('1f1b', 1), ('interleaved_1f1b', 2), ('zb_h1', 1),
              ('zb_v', 2)]
_EXECUTIONS = ['ticks', 'dataflow']
# The table: gpipe and 1f1b for K in {1, 2, 4} and M in {1, 2, 4, 8};
# interleaved_1f1b (v=2), zb_h1 and zb_v (v=2) for K in {2, 4} and M in
# {4, 8}; both executions. Every point runs under one remat policy, the sum
# of its indices (K, M, schedule, execution) mod 3: so each policy meets
# every schedule x execution, schedule x K, schedule x M and K x M pair. The
# fast points run under every policy. GPIPE_FULL_TABLE=1 runs the whole
# product (216 cases, about 5 minutes on a 2-core machine).
_FAST = {'ticks': {('gpipe', 1, 1), ('gpipe', 2, 4), ('gpipe', 4, 8),
                   ('1f1b', 1, 1), ('1f1b', 2, 4), ('1f1b', 4, 8),
                   ('interleaved_1f1b', 4, 8), ('zb_h1', 2, 4),
                   ('zb_v', 2, 8)},
         'dataflow': {('gpipe', 2, 4), ('1f1b', 2, 4),
                      ('interleaved_1f1b', 4, 8), ('zb_h1', 2, 4),
                      ('zb_v', 2, 8)}}


def _Cases(full):
  cases = []
  for (e, execution), (si, (s, v)) in itertools.product(
      enumerate(_EXECUTIONS), enumerate(_SCHEDULES)):
    wide = s in ('gpipe', '1f1b')
    for k, m in itertools.product([1, 2, 4] if wide else [2, 4],
                                  [1, 2, 4, 8] if wide else [4, 8]):
      fast = (s, k, m) in _FAST[execution]
      turn = ([1, 2, 4].index(k) + [1, 2, 4, 8].index(m) + si + e) % 3
      for r in _REMAT:
        if full or fast or r == _REMAT[turn]:
          cases.append(pytest.param(k, m, s, v, r, execution,
                                    marks=() if fast else pytest.mark.slow))
  return cases


_CASES = _Cases(os.environ.get('GPIPE_FULL_TABLE') == '1')


@pytest.mark.parametrize('k,m,schedule,v,remat,execution', _CASES)
def testLossAndGradientsMatchUnpipelined(k, m, schedule, v, remat, execution):
  ref = _Reference()
  net = _Pipelined(k, m, schedule, remat, v=v, execution=execution)
  assert [v.name for v in net.TrainableVariables()] == ref['names']
  x, lab = util.Batch()
  loss, sums, grads, _ = net.ComputeLossAndGradients(
      x, lab, util.LossFn(16), tf.constant(0, tf.int64))
  np.testing.assert_allclose(loss.numpy(), ref['loss'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sums['num'].numpy(), tf.reduce_sum(lab[1]),
                             rtol=1e-6)
  for g, r, name in zip(grads, ref['grads'], ref['names']):
    np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-6,
                               err_msg=name)


@pytest.mark.parametrize('schedule', ['gpipe', '1f1b_classic'])
def testClassicScheduleAndFProp(schedule):
  """1f1b_classic gives the same gradients; FProp under a tape too."""
  ref = _Reference()
  net = _Pipelined(2, 4, schedule, 'always')
  x, lab = util.Batch()
  _, _, grads, _ = net.ComputeLossAndGradients(
      x, lab, util.LossFn(16), tf.constant(0, tf.int64))
  for g, r in zip(grads, ref['grads']):
    np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-6)
  with context.Scope(training=True, step=0):
    with tf.GradientTape() as tape:
      loss, _ = util.LossFn(16)(net.FProp(x), lab)
  np.testing.assert_allclose(loss.numpy(), ref['loss'], rtol=1e-5)
  for g, r in zip(tape.gradient(loss, net.TrainableVariables()),
                  ref['grads']):
    np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-6)


def testRecomputeReproducesDropoutMasks():
  """Dropout masks depend on (step, micro-batch, path), so re-materialized
  and stashed backwards agree, and a different step draws other masks."""
  cells = util.ConvDenseCells(dropout=0.5)
  x, lab = util.Batch()
  out = {}
  for remat in ('always', 'never'):
    net = _Pipelined(2, 4, 'gpipe', remat, cells)
    out[remat] = net.ComputeLossAndGradients(
        x, lab, util.LossFn(16), tf.constant(3, tf.int64))
  np.testing.assert_allclose(out['always'][0], out['never'][0], rtol=1e-6)
  for a, b in zip(out['always'][2], out['never'][2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  other = net.ComputeLossAndGradients(x, lab, util.LossFn(16),
                                      tf.constant(4, tf.int64))
  assert abs(float(other[0]) - float(out['never'][0])) > 1e-6


def testCoveringTableMeetsEveryPolicyEverywhere():
  """The default table (one policy per point) still has every policy with
  every schedule x execution, schedule x K, schedule x M and K x M pair of
  the whole product, and every point of it under both executions."""
  def Keys(cases, *fields):
    return {tuple(c.values[f] for f in fields) for c in cases}
  # values: (k, m, schedule, v, remat, execution)
  full, table = _Cases(full=True), _Cases(full=False)
  assert len(full) == 216 and len(table) < len(full) // 2
  for fields in [(2, 4, 5), (2, 4, 0), (2, 4, 1), (0, 1, 4), (0, 1, 2, 5)]:
    assert Keys(table, *fields) == Keys(full, *fields), fields
