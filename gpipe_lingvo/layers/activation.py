"""Elementwise activations as a layer (so they can be cells or sub-layers)."""
import tensorflow as tf

from gpipe_lingvo import base_layer

_ACTIVATIONS = {
    'relu': tf.nn.relu,
    'relu6': tf.nn.relu6,
    'tanh': tf.tanh,
    'sigmoid': tf.sigmoid,
    'gelu': tf.nn.gelu,
    'swish': tf.nn.silu,
    'none': tf.identity,
}


def GetActivation(name):
  if name not in _ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; choose one of '
                     f'{sorted(_ACTIVATIONS)}.')
  return _ACTIVATIONS[name]


class Activation(base_layer.BaseLayer):
  """Applies a named activation."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('activation', 'relu', f'One of {sorted(_ACTIVATIONS)}.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    self._fn = GetActivation(self.params.activation)

  def FProp(self, inputs):
    return self._fn(inputs)
