"""The executor on its own: a hand-written StageBody, plans from any tick
table, forward-only runs, B/W split against the fused backward."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo.pipeline import executor
from gpipe_lingvo.pipeline import placement
from gpipe_lingvo.pipeline import schedule
from gpipe_lingvo.pipeline.schedule import Action


class _Tanh:
  """A chunk y = tanh(x @ w) (the last: its loss against labels), written
  against the StageBody protocol only; aux: the sum of its inputs."""

  def __init__(self, w, last):
    self.w, self.last = w, last

  def __call__(self, inputs, labels, step, micro_batch):
    del step, micro_batch
    y = tf.tanh(inputs['x'] @ self.w)
    aux = [tf.reduce_sum(inputs['x'])]
    if labels is not None:
      return tf.reduce_sum(tf.square(y - labels)), aux
    return {'x': y}, aux

  def UnpackAux(self, aux):
    return {'input_sum': aux[0]}, {}


_NETS = {}


def _Net(num_chunks=3):
  if num_chunks not in _NETS:
    ws = [tf.Variable(tf.random.stateless_normal([4, 4], [7, c]) * 0.5)
          for c in range(num_chunks)]
    accs = {}

    def Acc(v, chunk):
      del chunk
      if v.ref() not in accs:
        with tf.init_scope():
          accs[v.ref()] = tf.Variable(tf.zeros_like(v), trainable=False)
      return accs[v.ref()]

    _NETS[num_chunks] = (ws, Acc)
  return _NETS[num_chunks]


def _Executor(chunk_device, bodies_last=True, execution='ticks'):
  ws, acc = _Net(len(chunk_device))
  bodies = [_Tanh(w, bodies_last and c == len(ws) - 1)
            for c, w in enumerate(ws)]
  where = placement.DeviceScopes(
      [f'/device:CPU:{d}' for d in range(max(chunk_device) + 1)],
      chunk_device)
  return executor.Executor(bodies, where, [[w] for w in ws], acc,
                           execution=execution), ws


def _Data(m=4):
  x = tf.random.stateless_normal([m, 2, 4], [1, 1])
  y = tf.random.stateless_normal([m, 2, 4], [1, 2])
  return {'x': x}, y


def _Reference(ws, x, y):
  """Loss, gradients and the sum of the last chunk's inputs."""
  with tf.GradientTape() as tape:
    h = tf.reshape(x['x'], [-1, 4])
    for w in ws:
      last_in = tf.reduce_sum(h)
      h = tf.tanh(h @ w)
    loss = tf.reduce_sum(tf.square(h - tf.reshape(y, [-1, 4])))
  return loss, tape.gradient(loss, ws), last_in


@pytest.mark.parametrize('execution', executor.EXECUTIONS)
@pytest.mark.parametrize('name,k,v,remat', [
    ('gpipe', 3, 1, 'always'), ('1f1b', 3, 1, 'except_last'),
    ('interleaved_1f1b', 1, 3, 'never'), ('zb_h1', 3, 1, 'never'),
    ('zb_h1', 3, 1, 'always')])
def testTrainEqualsTapeForAnyTable(name, k, v, remat, execution):
  tab = schedule.Build(name, k, 4, v)
  ex, ws = _Executor(tab.chunk_device, execution=execution)
  x, y = _Data()
  plan = executor.Plan(tab, executor.RematFlags(remat, 4))
  res = tf.function(ex.Train, autograph=False)(plan, x, y,
                                               tf.constant(0, tf.int64))
  loss, grads, last_in = _Reference(ws, x, y)
  np.testing.assert_allclose(res.loss, loss, rtol=1e-5)
  np.testing.assert_allclose(res.metric_sums['input_sum'], last_in,
                             rtol=1e-5)
  for w, g in zip(ws, grads):
    np.testing.assert_allclose(res.grads[w.ref()], g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('execution', executor.EXECUTIONS)
def testHandWrittenActionListsRun(execution):
  """Any valid per-device lists run, e.g. the backward of micro-batch 1
  before micro-batch 0 and a W deferred to the end."""
  acts = [[Action('F', 0, 0), Action('F', 0, 1), Action('B', 0, 1),
           Action('W', 0, 1), Action('B', 0, 0), Action('W', 0, 0)],
          [Action('F', 1, 0), Action('F', 1, 1), Action('B', 1, 1),
           Action('B', 1, 0), Action('W', 1, 1), Action('W', 1, 0)],
          [Action('F', 2, 0), Action('B', 2, 0), Action('F', 2, 1),
           Action('B', 2, 1), Action('W', 2, 1), Action('W', 2, 0)]]
  tab = schedule.TickTable(acts, 2, [0, 1, 2], one_action_per_tick=True)
  ex, ws = _Executor(tab.chunk_device, execution=execution)
  x, y = _Data(2)
  res = tf.function(ex.Train, autograph=False)(
      executor.Plan(tab, [False, True]), x, y, tf.constant(0, tf.int64))
  loss, grads, _ = _Reference(ws, x, y)
  np.testing.assert_allclose(res.loss, loss, rtol=1e-5)
  for w, g in zip(ws, grads):
    np.testing.assert_allclose(res.grads[w.ref()], g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('execution', executor.EXECUTIONS)
def testForwardOnlyTable(execution):
  chunk_device = [0, 1, 0]
  ex, ws = _Executor(chunk_device, bodies_last=False, execution=execution)
  x, _ = _Data(3)
  tab = schedule.BuildForwardOnly(chunk_device, 3)
  out, stats = tf.function(ex.Forward, autograph=False)(
      executor.Plan(tab, [True] * 3), x, tf.constant(0, tf.int64))
  h = x['x']
  for w in ws:
    h = tf.tanh(h @ w)
  np.testing.assert_allclose(out['x'], h, rtol=1e-5)
  assert stats == {}


def testPlanSlots():
  tab = schedule.Build('zb_h1', 2, 4)
  plan = executor.Plan(tab, [True, False, True, False])
  # Residual stash only for the kept micro-batches 1 and 3.
  assert plan.residuals[0].size == 1
  # Weight-input slots: as many as B->W intervals overlap at most.
  for c in range(2):
    life = tab.WeightStashLifetimes(c)
    overlap = max(sum(b <= t <= w for b, w in life)
                  for t in range(tab.num_ticks))
    assert plan.weight_inputs[c].size == overlap
  assert plan.grads[1] is None and plan.inputs[0] is None
  full = executor.Plan(schedule.Build('gpipe', 2, 4), [False] * 4)
  assert full.residuals[0].size == 4 and full.weight_inputs[0] is None
  # A kept micro-batch frees its input slot after its forward.
  assert full.inputs[1].size < executor.Plan(
      schedule.Build('gpipe', 2, 4), [True] * 4).inputs[1].size
  with pytest.raises(ValueError, match="remat policy 'sometimes'"):
    executor.RematFlags('sometimes', 2)


@pytest.mark.parametrize('name,v', [('gpipe', 1), ('1f1b', 1), ('zb_h1', 1),
                                    ('interleaved_1f1b', 2), ('zb_v', 2)])
def testPlannerCountsTheExecutorsSlots(name, v):
  # One slot assignment: the planner's held entries at the last tick are
  # the executor's ring-buffer slots, and no slot is counted before the
  # tick an entry is first written to it.
  from gpipe_lingvo.planning import schedule_view  # pylint: disable=import-outside-toplevel
  tab = schedule.Build(name, 2, 4, v)
  remat = [True, False, False, True]
  plan = executor.Plan(tab, remat)
  for c in range(tab.num_chunks):
    counts = schedule_view.BufferCounts(tab, c, remat)
    for buf, held in counts.items():
      slots = getattr(plan, buf)[c]
      assert held[-1] == (slots.size if slots else 0), (c, buf)
      lives = tab.BufferLifetimes(c, remat)[buf] or []
      first = min((life[0] for life in lives if life), default=tab.num_ticks)
      assert not any(held[:first]), (c, buf)
