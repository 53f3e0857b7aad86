"""Per-cell recompute as the plan sees it: the cell costs rewritten.

A per-cell `remat` list (pipelined_network) recomputes the marked cells in
the backward: their residuals are not stashed, the input of each run of
marked cells is, and the backward reruns the run's forward once the
gradient reaches it (stage_function.Recomputed). `Apply` rewrites the cell
costs so the plan (plan.py, which knows whole-micro-batch remat only)
models it:

- a marked cell keeps no residuals; the first cell of a run keeps its input;
- its backward also holds the run's recomputed residuals of the cells
  before it (they are recomputed together) and takes the forward's time
  and FLOPs on top of its own;
- it is marked `recomputed`, for the allocator replay
  (planning/allocator.py), which reruns the run's forward ops.
Pure Python.
"""
import dataclasses
from typing import Optional, Sequence


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
        fwd_peak=c.fwd_transient, recomputed=True,
        bwd_flops=c.bwd_flops + c.fwd_flops,
        bwd_s=None if c.bwd_s is None else c.bwd_s + (c.fwd_s or 0.0)))
    run_held += own
  return dataclasses.replace(costs, cells=cells)
