"""Per-cell recompute as the planner sees it, and the per-cell choice.

A per-cell `remat` list (pipelined_network) recomputes the marked cells in
the backward: their residuals are not stashed, the input of each run of
marked cells is, and the backward reruns the run's forward once the
gradient reaches it (stage_function.Recomputed). `Apply` rewrites the cell
costs so the plan (pipeline/plan.py, which knows whole-micro-batch remat
only) models it:

- a marked cell keeps no residuals; the first cell of a run keeps its input;
- its backward also holds the run's recomputed residuals of the cells
  before it (they are recomputed together) and takes the forward's time
  and FLOPs on top of its own.

`Ladder` orders the cells for the per-cell choice: keep what is cheap to
store and costly to recompute, so recompute first the cells that free the
most stashed bytes per second of recompute. Pure Python.
"""
import dataclasses
from typing import List, Optional, Sequence


def Apply(costs, flags: Optional[Sequence[bool]]):
  """NetworkCosts with the cells marked in `flags` recomputed (None or
  no mark: the costs unchanged)."""
  if not flags or not any(flags):
    return costs
  cells, run_held = [], 0
  for j, (c, again) in enumerate(zip(costs.cells, flags)):
    if not again:
      cells.append(c)
      run_held = 0
      continue
    start = j == 0 or not flags[j - 1]
    in_bytes = (costs.input_bytes if j == 0 else costs.cells[j - 1].out_bytes)
    own = c.residual_bytes + c.input_residual_bytes
    cells.append(dataclasses.replace(
        c, residual_bytes=0,
        input_residual_bytes=in_bytes if start else 0,
        bwd_peak=c.bwd_peak + run_held,
        fwd_peak=c.fwd_transient,
        bwd_flops=c.bwd_flops + c.fwd_flops,
        bwd_s=None if c.bwd_s is None else c.bwd_s + (c.fwd_s or 0.0)))
    run_held += own
  return dataclasses.replace(costs, cells=cells)


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
