"""A sequence of cells: the unit the pipeline cuts into stages."""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo.layers import tied


def CellNames(cell_params):
  """Child names for cells: their own names if set and unique, else cell_i."""
  names = []
  for i, p in enumerate(cell_params):
    names.append(p.name if p.name else f'cell_{i}')
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f'Cell names must be unique; repeated: {dup}.')
  return names


class Sequential(base_layer.BaseLayer):
  """Applies its cells in order; activations may be any nest of tensors."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('cells', [], 'List of layer params, applied in order.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    if not self.params.cells:
      raise ValueError(f'{self.path}: cells is empty.')
    for n, c in zip(CellNames(self.params.cells), self.params.cells):
      self.CreateChild(n, c)
    tied.Tie(self.cells)

  @property
  def cells(self):
    # A property, not a list attribute, so checkpoints name each cell once.
    return list(self.children.values())

  def FProp(self, inputs):
    x = inputs
    for cell in self.cells:
      x = cell.FProp(x)
    return x
