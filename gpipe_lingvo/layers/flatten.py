"""Flattens all but the batch axis."""
import tensorflow as tf

from gpipe_lingvo import base_layer


class Flatten(base_layer.BaseLayer):

  def FProp(self, inputs):
    return tf.reshape(inputs, [tf.shape(inputs)[0], -1])
