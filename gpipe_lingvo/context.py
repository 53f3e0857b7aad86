"""Per-step forward context: mode, randomness and batch-norm statistics.

Layers are pure functions of their variables, inputs and this context, so a
stage's forward recomputed in backward (re-materialization) sees exactly the
same random masks: seeds derive from (step, micro-batch, layer path), never
from stateful generators.
"""
import contextlib
import threading
import zlib

import tensorflow as tf

_STATE = threading.local()


class StepContext:
  """What a forward pass needs besides variables and inputs."""

  def __init__(self, training=False, step=0, micro_batch=0, stats=None,
               global_seed=0, bn_moments=None, micro_batch_offset=0):
    self.training = training
    self.step = step
    self.micro_batch = micro_batch
    # dict path -> list of statistic tuples, filled by batch-norm layers in
    # training; None when statistics are not wanted (e.g. during recompute).
    self.stats = stats
    self.global_seed = global_seed
    # dict path -> (mean, variance) to normalise with instead of the local
    # batch's moments (batch norm in `full_batch` mode inside the pipeline).
    self.bn_moments = bn_moments
    # Added to micro_batch in random seeds: replica r of R, each running M
    # micro-batches, uses r * M, so that replicas draw different masks and
    # R replicas draw exactly the masks of one process running R * M.
    self.micro_batch_offset = micro_batch_offset

  def Replace(self, **kw):
    c = StepContext(self.training, self.step, self.micro_batch, self.stats,
                    self.global_seed, self.bn_moments, self.micro_batch_offset)
    for k, v in kw.items():
      if not hasattr(c, k):
        raise AttributeError(f'StepContext has no field {k!r}')
      setattr(c, k, v)
    return c


def _Stack():
  if not hasattr(_STATE, 'stack'):
    _STATE.stack = [StepContext()]
  return _STATE.stack


def Current():
  return _Stack()[-1]


@contextlib.contextmanager
def Scope(ctx=None, **kw):
  """Pushes a context (or the current one with fields replaced)."""
  ctx = ctx if ctx is not None else Current().Replace(**kw)
  if kw and ctx is not None and not isinstance(ctx, StepContext):
    raise TypeError('Scope takes a StepContext or keyword fields.')
  _Stack().append(ctx)
  try:
    yield ctx
  finally:
    _Stack().pop()


def PathHash(path):
  """A stable 31-bit hash of a layer path (independent of PYTHONHASHSEED)."""
  return zlib.crc32(path.encode('utf-8')) & 0x7FFFFFFF


def LayerSeed(path, salt=0):
  """Stateless seed [2] for a random op in layer `path` in this context.

  The seed combines the global seed, the layer path, the step and the
  micro-batch index (plus the replica's offset), so every micro-batch draws
  an independent mask and a recomputed forward draws the same one.
  """
  ctx = Current()
  step = tf.cast(ctx.step, tf.int64)
  mb = tf.cast(ctx.micro_batch, tf.int64) + ctx.micro_batch_offset
  a = tf.constant((PathHash(path) + 7919 * salt + 104729 * ctx.global_seed)
                  & 0x7FFFFFFF, tf.int64)
  b = step * 1000003 + mb
  return tf.stack([a, b])


def AddStats(path, values):
  """Records a layer's per-micro-batch statistics if they are collected."""
  ctx = Current()
  if ctx.stats is not None:
    ctx.stats.setdefault(path, []).append(values)
