"""The planner's one window onto a pipeline schedule.

Everything the planner knows about a schedule comes from the engine's tick
table (`schedule.Build`): which actions each device runs at each tick, the
lifetimes of every buffer entry and the ring-buffer slots the executor
stores them in (`TickTable.BufferSlots`), and the timeline simulator
(`TickTable.Timeline`). This module adds only what memory needs on top:
how many entries of each chunk buffer are held at each tick.
"""
from typing import Dict, List, Sequence

from gpipe_lingvo.pipeline import schedule as schedule_lib

SCHEDULES = schedule_lib.SCHEDULES
BUFFERS = ('inputs', 'grads', 'residuals', 'weight_inputs')
F, B, W = schedule_lib.F, schedule_lib.B, schedule_lib.W
Action = schedule_lib.Action
TickTable = schedule_lib.TickTable
ScheduleError = schedule_lib.ScheduleError
CheckConfig = schedule_lib.CheckConfig


def Table(name: str, num_devices: int, num_micro_batches: int,
          virtual_stages: int = 1) -> TickTable:
  """The engine's tick table of a named schedule."""
  return schedule_lib.Build(name, num_devices, num_micro_batches,
                            virtual_stages)


def BufferCounts(table: TickTable, chunk: int,
                 remat: Sequence[bool]) -> Dict[str, List[int]]:
  """Per buffer of `chunk` (BUFFERS), per tick: entries held.

  The executor's ring buffers are TensorArrays whose slots keep the tensor
  last written to them until the slot is written again or the step ends,
  so an entry stays in memory past its last read: a buffer holds, at tick
  t, every slot written at or before t. The slots are the executor's own
  (TickTable.BufferSlots).
  """
  out = {}
  for name, slots in table.BufferSlots(chunk, remat).items():
    counts = [0] * table.num_ticks
    for start in slots.first_write if slots is not None else []:
      for t in range(start, table.num_ticks):
        counts[t] += 1
    out[name] = counts
  return out


def RewriteCounts(table: TickTable, chunk: int,
                  remat: Sequence[bool]) -> Dict[str, List[int]]:
  """Per buffer of `chunk`, per tick: entries written into a slot that
  already holds an earlier one. The action writing such an entry makes it
  before the write releases the old one, so while it runs it holds both
  (BufferCounts counts the slot once)."""
  out = {}
  lifetimes = table.BufferLifetimes(chunk, remat)
  for name, slots in table.BufferSlots(chunk, remat).items():
    counts = [0] * table.num_ticks
    for i, life in enumerate(lifetimes[name] or []):
      if (slots is not None and life is not None and
          life[0] > slots.first_write[slots.slot[i]]):
        counts[life[0]] += 1
    out[name] = counts
  return out
