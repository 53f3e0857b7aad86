"""Lingvo-style TF2 base layer: Params(), CreateChild, CreateVariable, FProp.

A layer is a tf.Module. Children and variables are attributes named after
their params' names, so tf.train.Checkpoint keys are layer paths
(e.g. `task/network/cell_3/conv/w`) and never depend on how the network is
cut into pipeline stages.
"""
import contextlib
import math
import re
import threading

import numpy as np
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo import hyperparams

_NAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


class WeightInit:
  """Named weight initialisers (Lingvo style): WeightInit.Xavier(1.0) etc."""

  def __init__(self, method, scale):
    self.method, self.scale = method, scale

  @staticmethod
  def Xavier(scale=1.0):
    return hyperparams_init('xavier', scale)

  @staticmethod
  def Gaussian(scale=1.0):
    return hyperparams_init('gaussian', scale)

  @staticmethod
  def Uniform(scale=1.0):
    return hyperparams_init('uniform', scale)

  @staticmethod
  def Constant(scale=0.0):
    return hyperparams_init('constant', scale)

  @staticmethod
  def FanOut(scale=2.0):
    """Variance scaling on fan-out (He / TF AmoebaNet style), truncated."""
    return hyperparams_init('fan_out', scale)

  @staticmethod
  def FanIn(scale=1.0):
    return hyperparams_init('fan_in', scale)


_INIT_METHODS = ('xavier', 'gaussian', 'uniform', 'constant', 'fan_out',
                 'fan_in')


def hyperparams_init(method, scale):
  p = hyperparams.Params()
  p.Define('method', method, 'One of %s.' % (_INIT_METHODS,))
  p.Define('scale', scale, 'Scale (meaning depends on the method).')
  return p


def WeightParams(shape, init=None, dtype=tf.float32, trainable=True,
                 regularize=False, fan_in=None, fan_out=None):
  """Describes one variable; CreateVariable turns it into a tf.Variable."""
  p = hyperparams.Params()
  p.Define('shape', list(shape), 'Variable shape.')
  p.Define('init', init or WeightInit.Xavier(), 'Initialiser params.')
  p.Define('dtype', dtype, 'Variable dtype.')
  p.Define('trainable', trainable, 'Whether the optimizer updates it.')
  p.Define('regularize', regularize, 'Whether weight decay (L2) applies.')
  p.Define('fan_in', fan_in, 'Fan-in override for scaled initialisers.')
  p.Define('fan_out', fan_out, 'Fan-out override for scaled initialisers.')
  return p


def _Fans(shape):
  if len(shape) == 0:
    return 1, 1
  if len(shape) == 1:
    return shape[0], shape[0]
  receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
  return shape[-2] * receptive, shape[-1] * receptive


_INIT_STATE = threading.local()


@contextlib.contextmanager
def ZeroInitForCounting():
  """Within this scope variables start at zero instead of their initialiser.

  For building a model only to count parameters or trace shapes (the
  trainer's summary mode, parameter-count tests): random initialisation of
  a billion-parameter model takes minutes on a small CPU, zeros take
  seconds. The variables (and so the counts) are the real ones.
  """
  old = getattr(_INIT_STATE, 'zero', False)
  _INIT_STATE.zero = True
  try:
    yield
  finally:
    _INIT_STATE.zero = old


def InitialValue(wp, seed):
  """Deterministic initial value from (seed, params): same path, same value."""
  shape = [int(d) for d in wp.shape]
  if getattr(_INIT_STATE, 'zero', False):
    return tf.zeros(shape, wp.dtype)
  method, scale = wp.init.method, float(wp.init.scale)
  fan_in, fan_out = _Fans(shape)
  fan_in = wp.fan_in or fan_in
  fan_out = wp.fan_out or fan_out
  seed = tf.constant([seed, 0x5EED], tf.int64)
  if method == 'constant':
    v = tf.fill(shape, scale)
  elif method == 'gaussian':
    v = scale * tf.random.stateless_normal(shape, seed)
  elif method == 'uniform':
    v = tf.random.stateless_uniform(shape, seed, -scale, scale)
  elif method == 'xavier':
    limit = scale * math.sqrt(6.0 / max(1, fan_in + fan_out))
    v = tf.random.stateless_uniform(shape, seed, -limit, limit)
  elif method in ('fan_out', 'fan_in'):
    fan = fan_out if method == 'fan_out' else fan_in
    std = math.sqrt(scale / max(1, fan)) / 0.87962566103423978
    v = std * tf.random.stateless_truncated_normal(shape, seed)
  else:
    raise ValueError(f'Unknown init method {method!r}; use one of '
                     f'{_INIT_METHODS}.')
  return tf.cast(v, wp.dtype)


def IsRegularized(var) -> bool:
  """Whether weight decay applies to a variable made by CreateVariable."""
  return getattr(var, '_gl_regularize', False)


class _VarMap:
  """Attribute access to a layer's own variables (not checkpoint-tracked)."""

  def __init__(self):
    self.__dict__['_d'] = {}
    self.__dict__['borrowed'] = set()  # names of variables other layers own

  def __getattr__(self, k):
    try:
      return self.__dict__['_d'][k]
    except KeyError:
      raise AttributeError(f'No variable {k!r}; have {sorted(self._d)}') from None

  def __setattr__(self, k, v):
    self.__dict__['_d'][k] = v

  def items(self):
    return self.__dict__['_d'].items()

  def values(self):
    return self.__dict__['_d'].values()

  def __contains__(self, k):
    return k in self.__dict__['_d']


class BaseLayer(tf.Module):
  """Base class of all layers: built from Params, computes FProp(inputs)."""

  @classmethod
  def Params(cls):
    p = hyperparams.InstantiableParams(cls)
    p.Define('name', '', 'Layer name: the path segment of its variables.')
    p.Define('dtype', tf.float32, 'Dtype of the variables.')
    p.Define('fprop_dtype', None,
             'Dtype of activations (e.g. tf.bfloat16 for mixed precision); '
             'None means `dtype`.')
    p.Define('params_init', WeightInit.Xavier(), 'Default weight initialiser.')
    p.Define('random_seed', 0,
             'Global seed mixed with the layer path for initial values and '
             'stateless random ops.')
    return p

  def __init__(self, params, parent_path=''):
    if not params.name or not _NAME_RE.match(params.name):
      raise ValueError(
          f'{type(self).__name__} needs params.name to be an identifier '
          f'(letters, digits, _), got {params.name!r}.')
    super().__init__(name=params.name)
    self._params = params.Copy()
    self._path = f'{parent_path}/{params.name}' if parent_path else params.name
    self._vars = _VarMap()
    self._children_names = []

  @property
  def params(self):
    return self._params

  @property
  def path(self):
    """Slash-joined names from the root layer: the key for seeds and stats."""
    return self._path

  @property
  def vars(self):
    return self._vars

  @property
  def fprop_dtype(self):
    return self.params.fprop_dtype or self.params.dtype

  def _PropagateDefaults(self, child_params):
    """Children inherit the activation dtype and seed unless they set them."""
    p = child_params.Copy()
    if p.fprop_dtype is None:
      p.fprop_dtype = self.params.fprop_dtype
    if not p.random_seed:
      p.random_seed = self.params.random_seed
    return p

  def CreateChild(self, name, params):
    """Instantiates params as child `name`; its path extends this one."""
    if not _NAME_RE.match(name):
      raise ValueError(f'Child name {name!r} of {self.path} is not an identifier.')
    if name in self._children_names:
      raise ValueError(f'{self.path} already has a child named {name!r}.')
    p = self._PropagateDefaults(params)
    p.name = name
    child = p.cls(p, parent_path=self.path)
    setattr(self, name, child)
    self._children_names.append(name)
    return child

  def CreateChildren(self, name, params_list):
    """Creates children name_0, name_1, ... and returns them as a list."""
    return [self.CreateChild(f'{name}_{i}', p) for i, p in enumerate(params_list)]

  @property
  def children(self):
    return {n: getattr(self, n) for n in self._children_names}

  def CreateVariable(self, name, wp):
    """Creates variable `name` with a value determined by seed and path."""
    if name in self._vars or name in self._children_names:
      raise ValueError(f'{self.path} already has {name!r}.')
    seed = context.PathHash(f'{self.path}/{name}') ^ (
        int(self.params.random_seed) * 2654435761 & 0x7FFFFFFF)
    value = InitialValue(wp, seed)
    var = tf.Variable(value, name=f'{self.path}/{name}',
                      trainable=wp.trainable)
    var._gl_regularize = bool(wp.regularize)  # pylint: disable=protected-access
    setattr(self, name, var)
    setattr(self._vars, name, var)
    return var

  def BorrowVariable(self, name, var):
    """Uses `var`, which another layer owns, as this layer's variable `name`
    (tied weights, e.g. one embedding matrix for a first and a last
    pipeline stage): Var(name) reads it and AllVariables() lists it, but it
    is not tracked here, so a checkpoint holds it once, under its owner's
    path."""
    if name in self._vars or name in self._children_names:
      raise ValueError(f'{self.path} already has {name!r}.')
    setattr(self._vars, name, var)
    self._vars.borrowed.add(name)

  def TiedVariables(self):
    """{key: variable} this layer offers to layers that tie to it; see
    layers/tied.py. None by default."""
    return {}

  def TiedRequests(self):
    """{variable name: (key, shape)}: variables this layer borrows from the
    layer that offers `key` (layers/tied.py). None by default."""
    return {}

  def AllVariables(self, include_borrowed=True):
    """This layer's and its descendants' variables, in creation order, each
    once; with include_borrowed=False only those they own (what a
    checkpoint or a parameter count sees)."""
    out, seen = [], set()
    for layer in self.Layers():
      for name, v in layer.vars.items():
        if (v.ref() in seen or
            (not include_borrowed and name in layer.vars.borrowed)):
          continue
        seen.add(v.ref())
        out.append(v)
    return out

  def TrainableVariables(self):
    return [v for v in self.AllVariables() if v.trainable]

  def RegularizedVariables(self):
    return [v for v in self.TrainableVariables() if IsRegularized(v)]

  def NumParams(self):
    """Trainable parameters this layer and its descendants own (a tied
    variable counts where it is owned)."""
    return int(sum(np.prod(v.shape) for v in self.AllVariables(False)
                   if v.trainable))

  def Layers(self):
    """Pre-order list of this layer and its descendants."""
    out = [self]
    for child in self.children.values():
      out.extend(child.Layers())
    return out

  def CastInput(self, x):
    return tf.nest.map_structure(
        lambda t: tf.cast(t, self.fprop_dtype) if t.dtype.is_floating else t, x)

  def Var(self, name):
    """Variable `name` cast to the activation dtype (mixed precision)."""
    v = getattr(self._vars, name)
    return tf.cast(v, self.fprop_dtype) if v.dtype != self.fprop_dtype else v

  def FProp(self, inputs, *args, **kwargs):
    raise NotImplementedError(f'{type(self).__name__}.FProp')

  def __call__(self, *args, **kwargs):
    return self.FProp(*args, **kwargs)

  def UpdateStats(self, stats):
    """Applies statistics collected during a step (batch norm); no-op here."""
    del stats

  def StatsUpdates(self, stats):
    """[(variable, new value)] that UpdateStats would assign; none here."""
    del stats
    return []
