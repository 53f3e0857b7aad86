"""Drop path (stochastic depth per branch) with a linear keep-prob ramp.

Masks come from stateless seeds (`context.LayerSeed`), so a re-materialised
forward draws the same mask as the first one. The keep probability falls
linearly from 1.0 at step 0 to `keep_prob` at `burn_in_steps` (NASNet /
AmoebaNet "ScheduledDropPath"), using the step in the context.
"""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context


def KeepProb(keep_prob, burn_in_steps, step):
  """Scheduled keep probability (float32 tensor) at `step`."""
  if burn_in_steps <= 0:
    return tf.constant(float(keep_prob), tf.float32)
  frac = tf.minimum(1.0, tf.cast(step, tf.float32) / float(burn_in_steps))
  return 1.0 - frac * (1.0 - float(keep_prob))


class DropPath(base_layer.BaseLayer):
  """Zeroes a whole example's input with prob 1 - keep; scales survivors."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('keep_prob', 1.0, 'Final keep probability (1.0: off).')
    p.Define('burn_in_steps', 0,
             'Steps of the linear ramp from 1.0 down to keep_prob (usually '
             'the total training steps); 0: keep_prob from the start.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if not 0.0 < p.keep_prob <= 1.0:
      raise ValueError(f'{self.path}: keep_prob must be in (0, 1], got '
                       f'{p.keep_prob}.')
    if p.burn_in_steps < 0:
      raise ValueError(f'{self.path}: burn_in_steps must be >= 0, got '
                       f'{p.burn_in_steps}.')

  def FProp(self, inputs):
    p = self.params
    x = self.CastInput(inputs)
    ctx = context.Current()
    if p.keep_prob >= 1.0 or not ctx.training:
      return x
    keep = KeepProb(p.keep_prob, p.burn_in_steps, ctx.step)
    shape = tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)],
                      axis=0)
    u = tf.random.stateless_uniform(shape, context.LayerSeed(self.path))
    mask = tf.floor(keep + u)  # 1 with probability keep.
    return x * tf.cast(mask / keep, x.dtype)
