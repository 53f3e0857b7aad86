"""Learning-rate schedules: a function of the global step, built from params."""
import math

import tensorflow as tf

from gpipe_lingvo import hyperparams

TYPES = ('constant', 'cosine', 'exponential', 'piecewise')


class LearningRateSchedule:
  """Base rate times a decay curve, with an optional linear warm-up."""

  @classmethod
  def Params(cls):
    p = hyperparams.InstantiableParams(cls)
    p.Define('type', 'constant', f'One of {TYPES}.')
    p.Define('learning_rate', 0.1, 'Base learning rate.')
    p.Define('warmup_steps', 0, 'Linear warm-up from 0 over this many steps.')
    p.Define('total_steps', 0, 'Steps of the cosine decay.')
    p.Define('decay_rate', 0.97, 'Exponential: multiply by this ...')
    p.Define('decay_steps', 1000, '... every decay_steps steps.')
    p.Define('staircase', True, 'Exponential: decay in steps.')
    p.Define('min_learning_rate', 0.0, 'Floor of the rate.')
    p.Define('boundaries', [], 'Piecewise: step boundaries.')
    p.Define('values', [], 'Piecewise: multipliers (len(boundaries) + 1).')
    return p

  def __init__(self, params):
    self.params = params.Copy()
    p = self.params
    if p.type not in TYPES:
      raise ValueError(f'lr_schedule.type must be one of {TYPES}, got {p.type!r}.')
    if p.type == 'cosine' and p.total_steps <= 0:
      raise ValueError('lr_schedule.total_steps must be > 0 for cosine.')
    if p.type == 'piecewise' and len(p.values) != len(p.boundaries) + 1:
      raise ValueError('lr_schedule.values needs len(boundaries) + 1 entries, '
                       f'got {len(p.values)} for {len(p.boundaries)} boundaries.')

  def Value(self, step):
    p = self.params
    s = tf.cast(step, tf.float32)
    if p.type == 'constant':
      f = tf.constant(1.0)
    elif p.type == 'cosine':
      frac = tf.clip_by_value((s - p.warmup_steps) /
                              max(1, p.total_steps - p.warmup_steps), 0., 1.)
      f = 0.5 * (1.0 + tf.cos(math.pi * frac))
    elif p.type == 'exponential':
      e = s / p.decay_steps
      f = tf.pow(p.decay_rate, tf.floor(e) if p.staircase else e)
    else:
      f = tf.constant(float(p.values[-1]))
      for b, v in reversed(list(zip(p.boundaries, p.values[:-1]))):
        f = tf.where(s < b, float(v), f)
    lr = p.learning_rate * f
    if p.warmup_steps > 0:
      lr = lr * tf.minimum(1.0, (s + 1.0) / p.warmup_steps)
    return tf.maximum(lr, p.min_learning_rate)
