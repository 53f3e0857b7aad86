"""Tiny cells for pipeline tests: dense and conv, nested activations."""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import layers
from gpipe_lingvo.pipeline import pipelined_network
from gpipe_lingvo.planning import measure


class CountingCell(base_layer.BaseLayer):
  """Wraps a layer; a non-trainable counter records each executed forward."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('inner', None, 'Wrapped layer params.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    self.CreateChild('inner', self.params.inner)
    self.CreateVariable('count', base_layer.WeightParams(
        [], base_layer.WeightInit.Constant(0.0), trainable=False))

  def FProp(self, inputs):
    with tf.control_dependencies([self.vars.count.assign_add(1.0)]):
      inputs = tf.nest.map_structure(tf.identity, inputs)
    return self.inner.FProp(inputs)


class SplitMask(base_layer.BaseLayer):
  """x -> (x, int mask): an activation nest with a non-float member."""

  def FProp(self, inputs):
    return {'x': inputs, 'mask': tf.cast(inputs > 0, tf.int32)}


class UseMask(base_layer.BaseLayer):
  """{'x', 'mask'} -> x * mask + x (consumes the nest)."""

  def FProp(self, inputs):
    x = inputs['x']
    return x + x * tf.cast(inputs['mask'], x.dtype)


class DictDense(base_layer.BaseLayer):
  """A dense layer applied to the 'x' of a dict activation."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('dim', 8, 'Width.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    self.CreateChild('fc', layers.FullyConnected.Params().Set(
        input_dim=self.params.dim, output_dim=self.params.dim,
        activation='tanh'))

  def FProp(self, inputs):
    return dict(inputs, x=self.fc.FProp(inputs['x']))


def ConvDenseCells(counting=False, dropout=0.0):
  """Eight cells: conv, conv, flatten, dense, nest split, dense on the
  nest, nest merge, logits. Input [N, 4, 4, 2]."""
  cells = [
      layers.Conv2D.Params().Set(name='conv1', input_dim=2, output_dim=4,
                                 filter_shape=3, use_bias=True),
      layers.Conv2D.Params().Set(name='conv2', input_dim=4, output_dim=4,
                                 filter_shape=3),
      layers.Flatten.Params().Set(name='flatten'),
      layers.FullyConnected.Params().Set(name='fc1', input_dim=64,
                                         output_dim=8, activation='tanh'),
      SplitMask.Params().Set(name='split'),
      DictDense.Params().Set(name='dict_fc'),
      UseMask.Params().Set(name='merge'),
      layers.FullyConnected.Params().Set(name='logits', input_dim=8,
                                         output_dim=3),
  ]
  if dropout:
    cells.insert(4, layers.Dropout.Params().Set(name='drop',
                                               keep_prob=1.0 - dropout))
  if counting:
    cells = [CountingCell.Params().Set(name=c.name, inner=c.Copy().Set(
        name='inner')) for c in cells]
  return cells


def Batch(n=16, seed=0):
  x = tf.random.stateless_normal([n, 4, 4, 2], [seed, 1])
  y = tf.random.stateless_uniform([n], [seed, 2], 0, 3, tf.int32)
  w = tf.random.stateless_uniform([n], [seed, 3], 0.5, 1.5)
  return x, (y, w)


def LossFn(global_batch):
  def Fn(logits, labels):
    y, w = labels
    per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y,
                                                         logits=logits)
    s = tf.reduce_sum(per * w)
    return s / global_batch, {'loss': s, 'num': tf.reduce_sum(w)}
  return Fn


def ProfiledTanhStep(width, batch, **pipeline):
  """(boxes, tick table) of one profiled training step of four tanh
  layers of `width` units, pipelined with the given params."""
  cells = [layers.FullyConnected.Params().Set(
      name=f'fc{i}', input_dim=width, output_dim=width, activation='tanh')
           for i in range(4)]
  net = pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=cells, **pipeline).Instantiate()
  net.CreateGradientAccumulators()
  x = tf.random.stateless_normal([batch, width], [1, 2])
  loss_fn = lambda out, lab: (tf.reduce_sum(out), {})
  step = tf.function(lambda: net.ComputeLossAndGradients(
      x, tf.zeros([batch]), loss_fn, tf.constant(0, tf.int64))[0])
  step()
  _, boxes = measure.ProfileStep(step, net.schedule_table)
  return boxes, net.schedule_table
