"""Cutting a list of cells into pipeline stages.

A partition is a list of (start, end) cell ranges, one per stage. `uniform`
balances cell counts; an explicit list gives the cell count of each stage.
Cost-based balancing (the Planner) only has to produce such a list.
"""
import ast


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
