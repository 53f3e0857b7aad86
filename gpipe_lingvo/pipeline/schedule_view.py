"""The planner's one window onto a pipeline schedule.

Everything the planner knows about a schedule (which action each stage runs
at each tick, what stays stashed between ticks, how long the step takes
for given action costs) comes through `ScheduleView`, built from the
engine's tick table (`schedule.Build`). When the table's interface changes,
this module is the only one to adapt.
"""
import dataclasses
from typing import Callable, List, Tuple

from gpipe_lingvo.pipeline import schedule as schedule_lib

SCHEDULES = schedule_lib.SCHEDULES


@dataclasses.dataclass(frozen=True)
class Box:
  """One action on the timeline: stage, kind ('F' or 'B'), micro-batch,
  start and end (seconds or any cost unit)."""
  stage: int
  kind: str
  mb: int
  start: float
  end: float


class ScheduleView:
  """Ticks, lifetimes and a timeline of one schedule (K stages, M
  micro-batches), read from the engine's tick table."""

  def __init__(self, name: str, num_stages: int, num_micro_batches: int):
    self.name = name
    self._table = schedule_lib.Build(name, num_stages, num_micro_batches)
    self.num_stages = num_stages
    self.num_micro_batches = num_micro_batches
    self.num_ticks = self._table.num_ticks

  def TickActions(self, t: int, k: int) -> List[Tuple[str, int]]:
    """Actions of stage k at tick t, in the order they run."""
    out = []
    f, b = self._table.fwd[t][k], self._table.bwd[t][k]
    if f >= 0:
      out.append(('F', f))
    if b >= 0:
      out.append(('B', b))
    return out

  def StashIntervals(self, k: int) -> List[Tuple[int, int]]:
    """Per micro-batch: ticks [forward, backward] of stage k."""
    return self._table.StashLifetimes(k)

  def InputIntervals(self, k: int) -> List[Tuple[int, int]]:
    """Per micro-batch: ticks during which stage k's input is buffered."""
    return self._table.InputLifetimes(k) if k else []

  def GradIntervals(self, k: int) -> List[Tuple[int, int]]:
    """Per micro-batch: ticks during which the gradient of stage k's
    output is buffered."""
    return self._table.GradLifetimes(k) if k < self.num_stages - 1 else []

  def PeakStash(self) -> List[int]:
    return self._table.PeakStash()

  def Describe(self) -> str:
    return self._table.Describe()

  def Timeline(self, cost: Callable[[str, int, int], float],
               serial: bool = False) -> List[Box]:
    """Start and end of every action under the executor's lockstep ticks:
    a tick lasts as long as its busiest stage; within a tick a stage runs
    its forward, then its backward. cost(kind, stage, mb) -> duration.
    serial: the stages share one compute resource (logical devices on one
    host whose ops each use all its cores), so a tick's actions follow one
    another."""
    boxes, t0 = [], 0.0
    for t in range(self.num_ticks):
      longest = 0.0
      for k in range(self.num_stages):
        at = t0 + (longest if serial else 0.0)
        for kind, mb in self.TickActions(t, k):
          d = cost(kind, k, mb)
          boxes.append(Box(k, kind, mb, at, at + d))
          at += d
        longest = max(longest, at - t0)
      t0 += longest
    return boxes
