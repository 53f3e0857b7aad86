"""Tied weights: one variable used by several cells (e.g. the target
embedding of the first pipeline stage and the softmax of the last).

A layer offers variables under string keys (`TiedVariables()`), another
asks for them (`TiedRequests()`: {its variable name: key}). The container
of the cells (layers.Sequential, the pipeline) calls `Tie(cells)` once they
are built: each request borrows the offered variable (BaseLayer.
BorrowVariable), so it is one tf.Variable, listed by every cell that uses
it, checkpointed once under its owner's path; its gradient is the sum of
the gradients of its uses.
"""
from typing import Sequence

from gpipe_lingvo import base_layer


class TiedVariableError(ValueError):
  """A request names no offered variable, or the shapes differ."""


def Tie(cells: Sequence[base_layer.BaseLayer]) -> None:
  """Resolves every tied-variable request among `cells` (and their
  descendants)."""
  layers = [l for c in cells for l in c.Layers()]
  offered = {}
  for layer in layers:
    for key, var in layer.TiedVariables().items():
      if key in offered:
        raise TiedVariableError(
            f'{layer.path} offers tied variable {key!r}, which '
            f'{offered[key][0]} offers already; use distinct keys.')
      offered[key] = (layer.path, var)
  for layer in layers:
    for name, (key, shape) in layer.TiedRequests().items():
      if key not in offered:
        raise TiedVariableError(
            f'{layer.path} ties its {name!r} to {key!r}, but no layer of '
            f'the network offers it (offered: {sorted(offered)}). Turn the '
            'tying on in both layers or in neither.')
      owner, var = offered[key]
      if list(var.shape) != list(shape):
        raise TiedVariableError(
            f'{layer.path} ties its {name!r} of shape {list(shape)} to '
            f'{owner}\'s {key!r} of shape {var.shape.as_list()}; the '
            'dimensions must agree (vocabulary size and model_dim).')
      layer.BorrowVariable(name, var)
