"""Optimizers with slot variables named after the variables they serve.

Our own (not Keras) so that slots are checkpointed under the layer path of
their variable, which keeps checkpoints independent of the pipeline layout.
"""
from typing import ContextManager, Protocol

import tensorflow as tf

from gpipe_lingvo import hyperparams

TYPES = ('sgd', 'momentum', 'rmsprop', 'adam')


def SlotKey(var):
  name = var.name.split(':')[0]
  return name.replace('/', '.')


class SlotPlacement(Protocol):
  """Where a variable's slots are created and its update runs (a pipelined
  network's VariablePlacement, so slots follow its stage placement)."""

  def VariableScope(self, var: tf.Variable) -> ContextManager:
    ...

  def OpScope(self, var: tf.Variable) -> ContextManager:
    ...


class SameDevice:
  """Slots and updates on the variable's own device."""

  def VariableScope(self, var: tf.Variable) -> ContextManager:
    return tf.device(var.device)

  def OpScope(self, var: tf.Variable) -> ContextManager:
    return tf.device(var.device)


class Optimizer(tf.Module):
  """SGD, momentum, RMSProp (TF semantics) or Adam, chosen by params."""

  @classmethod
  def Params(cls):
    p = hyperparams.InstantiableParams(cls)
    p.Define('type', 'momentum', f'One of {TYPES}.')
    p.Define('momentum', 0.9, 'Momentum (momentum, rmsprop).')
    p.Define('decay', 0.9, 'RMSProp squared-gradient decay.')
    p.Define('epsilon', 1e-8, 'RMSProp / Adam epsilon.')
    p.Define('beta1', 0.9, 'Adam beta1.')
    p.Define('beta2', 0.999, 'Adam beta2.')
    p.Define('nesterov', False, 'Nesterov momentum.')
    p.Define('clip_gradient_norm', 0.0, 'Clip by global norm if > 0.')
    return p

  def __init__(self, params):
    super().__init__(name='optimizer')
    self._params = params.Copy()
    if params.type not in TYPES:
      raise ValueError(f'optimizer.type must be one of {TYPES}, got '
                       f'{params.type!r}.')
    self.slots = {}
    self._placement = SameDevice()
    self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False,
                                  name='optimizer_iterations')

  @property
  def params(self):
    return self._params

  def _SlotNames(self):
    return {'sgd': (), 'momentum': ('m',), 'rmsprop': ('ms', 'mom'),
            'adam': ('m', 'v')}[self.params.type]

  def Build(self, variables, placement: SlotPlacement = None):
    """Creates slots next to each variable, before the step: where
    `placement` says (default: the variable's device), which is also where
    Apply runs each variable's update."""
    if placement is not None:
      self._placement = placement
    for var in variables:
      key = SlotKey(var)
      if key in self.slots:
        continue
      with self._placement.VariableScope(var):
        init = {'ms': tf.ones_like} if self.params.type == 'rmsprop' else {}
        self.slots[key] = {
            s: tf.Variable(init.get(s, tf.zeros_like)(var), trainable=False,
                           name=f'{key}/{s}') for s in self._SlotNames()}

  def Apply(self, grads, variables, learning_rate, norm=None):
    """Applies one update; returns the pre-clip global gradient norm
    (`norm`, if the caller has computed it already)."""
    p = self.params
    if norm is None:
      norm = tf.linalg.global_norm(grads)
    if p.clip_gradient_norm > 0:
      grads, _ = tf.clip_by_global_norm(grads, p.clip_gradient_norm,
                                        use_norm=norm)
    self.iterations.assign_add(1)
    t = tf.cast(self.iterations, tf.float32)
    lr = tf.cast(learning_rate, tf.float32)
    for g, var in zip(grads, variables):
      if g is None:
        continue
      slots = self.slots[SlotKey(var)]
      with self._placement.OpScope(var):
        g = tf.cast(g, var.dtype)
        if p.type == 'sgd':
          var.assign_sub(lr * g)
        elif p.type == 'momentum':
          m = slots['m'].assign(p.momentum * slots['m'] + g)
          step = p.momentum * m + g if p.nesterov else m
          var.assign_sub(lr * step)
        elif p.type == 'rmsprop':
          ms = slots['ms'].assign(p.decay * slots['ms'] + (1 - p.decay) * g * g)
          mom = slots['mom'].assign(
              p.momentum * slots['mom'] + lr * g / tf.sqrt(ms + p.epsilon))
          var.assign_sub(mom)
        else:
          m = slots['m'].assign(p.beta1 * slots['m'] + (1 - p.beta1) * g)
          v = slots['v'].assign(p.beta2 * slots['v'] + (1 - p.beta2) * g * g)
          mhat = m / (1 - p.beta1 ** t)
          vhat = v / (1 - p.beta2 ** t)
          var.assign_sub(lr * mhat / (tf.sqrt(vhat) + p.epsilon))
    return norm
