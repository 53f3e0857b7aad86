"""Fully connected (projection) layer over the last axis."""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo.layers import activation


def Linear(x, w, transpose_w=False):
  """x [..., i] times w [i, o] (or w [o, i] with transpose_w) as one 2-D
  matmul: the leading axes are folded with static shapes, so its gradient
  has no broadcasting (whose shape arguments would be dynamic tensors that
  a pipeline stage cannot stash)."""
  if x.shape.rank == 2:
    return tf.matmul(x, w, transpose_b=transpose_w)
  lead = x.shape[:-1].as_list()
  if None in lead:
    lead = tf.unstack(tf.shape(x)[:-1])
  y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), w, transpose_b=transpose_w)
  return tf.reshape(y, lead + [w.shape[0] if transpose_w else w.shape[1]])


class FullyConnected(base_layer.BaseLayer):
  """y = act(x W + b) on the last axis."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('input_dim', 0, 'Input features.')
    p.Define('output_dim', 0, 'Output features.')
    p.Define('use_bias', True, 'Add a bias.')
    p.Define('activation', 'none', 'Activation applied to the output.')
    p.Define('weight_decay', True, 'Whether W is L2-regularised.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if p.input_dim <= 0 or p.output_dim <= 0:
      raise ValueError(f'{self.path}: input_dim and output_dim must be > 0, '
                       f'got {p.input_dim}, {p.output_dim}.')
    self._act = activation.GetActivation(p.activation)
    self.CreateVariable('w', base_layer.WeightParams(
        [p.input_dim, p.output_dim], p.params_init, p.dtype,
        regularize=p.weight_decay))
    if p.use_bias:
      self.CreateVariable('b', base_layer.WeightParams(
          [p.output_dim], base_layer.WeightInit.Constant(0.0), p.dtype))

  def FProp(self, inputs):
    x = self.CastInput(inputs)
    y = Linear(x, self.Var('w'))
    if self.params.use_bias:
      y = y + self.Var('b')
    return self._act(y)
