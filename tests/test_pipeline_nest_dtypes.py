"""Integer and boolean members of the activation nest cross every stage
boundary under every schedule and both executions: no gradient, no cast,
values intact (the loss and gradients equal the un-pipelined network's)."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo import layers
from gpipe_lingvo.pipeline import pipelined_network

_SEEN = []  # (cell path, {key: dtype}) recorded when a cell is traced


class MakeNest(base_layer.BaseLayer):
  """x -> {'x', int32 ids, int64 big ids, bool mask}."""

  def FProp(self, inputs):
    return {'x': inputs,
            'ids': tf.cast(tf.range(inputs.shape[-1])[None] *
                           tf.ones_like(inputs, tf.int32), tf.int32) +
                   tf.cast(inputs > 0, tf.int32),
            'big': tf.cast(inputs > 0.5, tf.int64) + (1 << 40),
            'mask': inputs > -0.5}


class NestDense(base_layer.BaseLayer):
  """Dense tanh on 'x', mixing in the int and bool members, which pass on
  unchanged; records the dtypes it receives."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('dim', 4, 'Width.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    d = self.params.dim
    self.CreateChild('fc', layers.FullyConnected.Params().Set(
        input_dim=d, output_dim=d, activation='tanh'))

  def FProp(self, inputs):
    _SEEN.append((self.path, {k: v.dtype for k, v in inputs.items()}))
    x = inputs['x'] * tf.cast(inputs['mask'], tf.float32)
    x += 0.1 * tf.cast(inputs['ids'], tf.float32)
    x += tf.cast(inputs['big'] - (1 << 40), tf.float32)
    return dict(inputs, x=self.fc.FProp(x))


class Logits(base_layer.BaseLayer):
  def FProp(self, inputs):
    return inputs['x'] * tf.cast(inputs['mask'], tf.float32)


def _Cells():
  return ([MakeNest.Params().Set(name='make')] +
          [NestDense.Params().Set(name=f'dense{i}') for i in range(4)] +
          [Logits.Params().Set(name='logits')])


def _Batch():
  x = tf.random.stateless_normal([8, 4], [4, 2])
  y = tf.random.stateless_uniform([8], [4, 3], 0, 4, tf.int32)
  return x, y


def _LossFn(logits, y):
  per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y,
                                                       logits=logits)
  return tf.reduce_sum(per) / 8.0, {}


@pytest.fixture(scope='module')
def reference():
  net = layers.Sequential.Params().Set(name='net',
                                       cells=_Cells()).Instantiate()
  x, y = _Batch()
  with context.Scope(training=True, step=0, micro_batch=0):
    with tf.GradientTape() as tape:
      loss, _ = _LossFn(net.FProp(x), y)
  return loss.numpy(), [g.numpy() for g in
                        tape.gradient(loss, net.TrainableVariables())]


_SCHEDULES = [('gpipe', 1), ('1f1b', 1), ('1f1b_classic', 1),
              ('interleaved_1f1b', 2), ('zb_h1', 1), ('zb_v', 2)]


@pytest.mark.parametrize('schedule,v,execution', [
    (s, v, e)
    for (s, v), e in itertools.product(_SCHEDULES, ['ticks', 'dataflow'])])
def testIntAndBoolTensorsCrossStages(reference, schedule, v, execution):
  net = pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=_Cells(), num_stages=2, num_micro_batches=4,
      schedule=schedule, virtual_stages=v, remat='always',
      partition=[2, 1, 1, 2] if v == 2 else [3, 3],
      execution=execution).Instantiate()
  del _SEEN[:]
  x, y = _Batch()
  loss, _, grads, _ = net.ComputeLossAndGradients(
      x, y, _LossFn, tf.constant(0, tf.int64))
  # Every dense cell, including those of later chunks, got the members in
  # their own dtypes.
  want = {'x': tf.float32, 'ids': tf.int32, 'big': tf.int64,
          'mask': tf.bool}
  seen = {path for path, _ in _SEEN}
  assert seen == {f'net/dense{i}' for i in range(4)}
  for path, dtypes in _SEEN:
    assert dtypes == want, path
  # Only 'x' may carry a gradient between chunks.
  fns, _ = net._Executor([pipelined_network._ChunkBody(net.ChunkCells(c))  # pylint: disable=protected-access
                          for c in range(net.num_chunks)]).TraceStages(
      tf.nest.map_structure(lambda t: t[None], x), None, backward=False)
  for fn in fns[:-1]:
    specs = fn.output_specs[:fn.num_diff]
    trainable = {s.dtype: tr for s, tr in zip(specs, fn.diff_trainable)}
    assert trainable == {tf.float32: True, tf.int32: False,
                         tf.int64: False, tf.bool: False}
  ref_loss, ref_grads = reference
  np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-6)
