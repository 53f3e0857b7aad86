"""Cutting a list of cells into pipeline stages.

A partition is a list of (start, end) cell ranges, one per stage. `uniform`
balances cell counts; an explicit list gives the cell count of each stage.
`Balance` cuts by cost: it minimises the most expensive stage exactly
(dynamic programming over contiguous cuts), optionally subject to a memory
budget per stage. Everything here is pure Python on cost vectors.
"""
import ast
import math
from typing import Callable, List, Optional, Sequence, Tuple

COST_MODES = ('params', 'flops', 'memory', 'time')


class PartitionError(ValueError):
  """The requested partition cannot cut these cells into these stages."""


def Partition(num_cells, num_stages, spec='uniform'):
  """Returns [(start, end)] cell ranges of each stage (end exclusive)."""
  if not isinstance(num_stages, int) or num_stages < 1:
    raise PartitionError(f'num_stages must be a positive int, got {num_stages!r}.')
  if num_stages > num_cells:
    raise PartitionError(
        f'num_stages={num_stages} is more than the {num_cells} cells: every '
        'stage needs at least one cell. Lower num_stages or split the network '
        'into more cells.')
  if isinstance(spec, str) and spec.strip().startswith(('[', '(')):
    # A list given as text (e.g. a --model_params_override of a param whose
    # default is the string 'uniform').
    try:
      spec = list(ast.literal_eval(spec))
    except (ValueError, SyntaxError):
      raise PartitionError(f'partition {spec!r} is not a list of ints.') from None
  if isinstance(spec, str):
    if spec != 'uniform':
      raise PartitionError(f"partition must be 'uniform' or a list of cell "
                           f"counts per stage, got {spec!r}.")
    base, extra = divmod(num_cells, num_stages)
    # Earlier stages take the remainder: the last stage also runs the loss.
    counts = [base + (1 if k < extra else 0) for k in range(num_stages)]
  else:
    counts = list(spec)
    if len(counts) != num_stages:
      raise PartitionError(
          f'partition {counts} has {len(counts)} entries but num_stages='
          f'{num_stages}; give one cell count per stage.')
    if any(not isinstance(c, int) or c < 1 for c in counts):
      raise PartitionError(
          f'partition {counts}: every stage needs a positive int cell count.')
    if sum(counts) != num_cells:
      raise PartitionError(
          f'partition {counts} sums to {sum(counts)} but the network has '
          f'{num_cells} cells; the counts must add up to {num_cells}.')
  out, start = [], 0
  for c in counts:
    out.append((start, start + c))
    start += c
  return out


Ranges = List[Tuple[int, int]]
# stage_bytes(k, start, end) -> estimated bytes of stage k holding cells
# [start, end); budget(k) -> bytes stage k's device may use.
StageBytesFn = Callable[[int, int, int], float]


class BudgetError(PartitionError):
  """No contiguous cut fits the memory budget."""


def Balance(costs: Sequence[float], num_stages: int,
            stage_bytes: Optional[StageBytesFn] = None,
            budgets: Optional[Sequence[float]] = None) -> Ranges:
  """Contiguous cut of `costs` into num_stages non-empty stages that
  minimises the largest stage sum; ties go to the cut whose later stages
  are lighter (the last stage also runs the loss).

  With stage_bytes and budgets, only cuts where every stage k satisfies
  stage_bytes(k, a, b) <= budgets[k] are allowed; if none is, BudgetError
  names the tightest stage. Exact: O(K n^2) evaluations.
  """
  n = len(costs)
  Partition(n, num_stages, 'uniform')  # Same argument checks and errors.
  prefix = [0.0]
  for c in costs:
    if c < 0 or math.isnan(c):
      raise PartitionError(f'costs must be finite and >= 0, got {c!r}.')
    prefix.append(prefix[-1] + c)

  def Fits(k, a, b):
    return stage_bytes is None or stage_bytes(k, a, b) <= budgets[k]

  inf = math.inf
  # best[k][j]: (bottleneck, sum of squares) of cells [0, j) in k+1 stages.
  best = [[(inf, inf)] * (n + 1) for _ in range(num_stages)]
  back = [[-1] * (n + 1) for _ in range(num_stages)]
  for j in range(1, n - num_stages + 2):
    if Fits(0, 0, j):
      s = prefix[j]
      best[0][j] = (s, s * s)
  for k in range(1, num_stages):
    for j in range(k + 1, n - num_stages + k + 2):
      # The candidates best first (ties: the later cut, lighter last
      # stages); the first that fits wins, so the budget, the costly part,
      # is asked only until then.
      cands = []
      for i in range(k, j):
        prev = best[k - 1][i]
        if prev[0] != inf:
          s = prefix[j] - prefix[i]
          cands.append((max(prev[0], s), prev[1] + s * s, -i))
      cands.sort()
      for bottleneck, squares, neg_i in cands:
        if Fits(k, -neg_i, j):
          best[k][j], back[k][j] = (bottleneck, squares), -neg_i
          break
  if best[-1][n][0] == inf:
    raise BudgetError(_NoFitMessage(costs, num_stages, stage_bytes, budgets))
  out, j = [], n
  for k in range(num_stages - 1, -1, -1):
    i = back[k][j] if k else 0
    out.append((i, j))
    j = i
  return out[::-1]


def _NoFitMessage(costs, num_stages, stage_bytes, budgets):
  """Names the stage most over its budget in the cut balanced without a
  budget, with its estimated bytes."""
  ranges = Balance(costs, num_stages)
  need = [stage_bytes(k, a, b) for k, (a, b) in enumerate(ranges)]
  k = max(range(num_stages), key=lambda j: need[j] / budgets[j])
  return (f'no cut of {len(costs)} cells into {num_stages} stages fits the '
          f'memory budget: balanced as {Counts(ranges)}, stage {k} needs '
          f'{FormatBytes(need[k])}, over its budget of '
          f'{FormatBytes(budgets[k])}')


def FormatBytes(n: float) -> str:
  for unit, size in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if abs(n) >= size:
      return f'{n / size:.1f} {unit}'
  return f'{int(n)} B'


def Counts(ranges: Ranges) -> List[int]:
  return [b - a for a, b in ranges]
