"""Identity as a layer (a no-op branch of a cell)."""
from gpipe_lingvo import base_layer


class Identity(base_layer.BaseLayer):
  """Returns its input, cast to the activation dtype."""

  def FProp(self, inputs):
    return self.CastInput(inputs)
