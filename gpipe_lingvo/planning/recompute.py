"""The per-cell recompute choice.

`Ladder` orders the cells: keep what is cheap to store and costly to
recompute, so recompute first the cells that free the most stashed bytes
per second of recompute. The search (search.py) takes the shortest prefix
of the ladder that fits. How a choice changes the plan:
pipeline/cell_remat.py (`Apply`, re-exported here). Pure Python.
"""
from typing import List, Sequence

from gpipe_lingvo.pipeline import cell_remat

Apply = cell_remat.Apply


def Ladder(costs) -> List[int]:
  """Cell indices, best to recompute first: most stashed bytes freed per
  second (or FLOP) of recompute; cells that free nothing are left out."""
  def Saved(j):
    c = costs.cells[j]
    return c.residual_bytes + c.input_residual_bytes

  def Work(j):
    c = costs.cells[j]
    return (c.fwd_s if c.fwd_s is not None else c.fwd_flops * 1e-9) or 1e-12

  order = [j for j in range(len(costs.cells)) if Saved(j) > 0]
  return sorted(order, key=lambda j: -Saved(j) / Work(j))


def Flags(num_cells: int, ladder: Sequence[int], n: int) -> tuple:
  """Per cell: recomputed when among the first n of the ladder."""
  chosen = set(ladder[:n])
  return tuple(j in chosen for j in range(num_cells))
