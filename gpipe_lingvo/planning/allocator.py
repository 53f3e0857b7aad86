"""TensorFlow's best-fit-with-coalescing (BFC) allocator, simulated.

A plan counts the bytes tensors ask for; the BFC allocator counts the
blocks it hands out. A request is rounded up to 256 bytes and served by
the smallest free block that fits (ties: lowest address); the block is
split only when it is at least twice the request (or larger than the
request by the fragmentation limit, 128 MiB unless set), else handed out
whole. Freed blocks merge with free neighbours of their region. With
memory growth on, regions are reserved as needed: 2 MiB first, doubling
(and at least the request). Replaying a step's allocations and frees here
tells what the blocks add to what the tensors ask for. Pure Python.
"""
import bisect
import itertools
from typing import Dict, Iterable, List, Optional, Tuple

from gpipe_lingvo.pipeline import schedule as schedule_lib

F, B, W = schedule_lib.F, schedule_lib.B, schedule_lib.W

MIN_BYTES = 256
NUM_BINS = 21
FIRST_REGION = 2 << 20
DEFAULT_FRAGMENTATION_LIMIT = 128 << 20
MAX_STEP_OPS = 200_000


def Rounded(n: int) -> int:
  """Bytes of the smallest block BFC gives a request of n bytes."""
  return max(MIN_BYTES, -(-n // MIN_BYTES) * MIN_BYTES)


def _Bin(size: int) -> int:
  return min(max((size >> 8).bit_length() - 1, 0), NUM_BINS - 1)


class _Chunk:
  __slots__ = ('addr', 'size', 'free', 'prev', 'next')

  def __init__(self, addr, size, prev=None, nxt=None):
    self.addr, self.size, self.free = addr, size, True
    self.prev, self.next = prev, nxt


class Bfc:
  """The allocator's chunks: Allocate returns a block's address, Free
  takes it back."""

  def __init__(self, fragmentation_limit: int = DEFAULT_FRAGMENTATION_LIMIT):
    self.limit = fragmentation_limit
    self.bins: List[list] = [[] for _ in range(NUM_BINS)]  # (size, addr)
    self.chunks: Dict[int, _Chunk] = {}  # addr -> chunk
    self.next_region = FIRST_REGION
    self.end = 0          # next free address for a region
    self.in_use = 0       # bytes of the blocks handed out
    self.peak = 0
    self.reserved = 0

  def _Insert(self, c: _Chunk):
    c.free = True
    bisect.insort(self.bins[_Bin(c.size)], (c.size, c.addr))

  def _Remove(self, c: _Chunk):
    b = self.bins[_Bin(c.size)]
    del b[bisect.bisect_left(b, (c.size, c.addr))]

  def _Extend(self, rounded: int):
    grew = False
    while rounded > self.next_region:
      self.next_region *= 2
      grew = True
    size = self.next_region
    if not grew:
      self.next_region *= 2
    c = _Chunk(self.end, size)
    self.end += size + MIN_BYTES  # regions are not contiguous
    self.reserved += size
    self.chunks[c.addr] = c
    self._Insert(c)

  def _Find(self, rounded: int) -> Optional[_Chunk]:
    for b in range(_Bin(rounded), NUM_BINS):
      entries = self.bins[b]
      i = bisect.bisect_left(entries, (rounded, -1))
      if i < len(entries):
        return self.chunks[entries[i][1]]
    return None

  def Allocate(self, n: int) -> Optional[int]:
    """Address of the block serving a request of n bytes (None for 0)."""
    if n <= 0:
      return None
    rounded = Rounded(n)
    c = self._Find(rounded)
    if c is None:
      self._Extend(rounded)
      c = self._Find(rounded)
    self._Remove(c)
    if c.size >= 2 * rounded or c.size - rounded >= self.limit:
      rest = _Chunk(c.addr + rounded, c.size - rounded, c, c.next)
      if c.next is not None:
        c.next.prev = rest
      c.next, c.size = rest, rounded
      self.chunks[rest.addr] = rest
      self._Insert(rest)
    c.free = False
    self.in_use += c.size
    self.peak = max(self.peak, self.in_use)
    return c.addr

  def BlockBytes(self, addr: int) -> int:
    return self.chunks[addr].size

  def Free(self, addr: Optional[int]):
    if addr is None:
      return
    c = self.chunks[addr]
    self.in_use -= c.size
    c.free = True
    for other in (c.next, c.prev):
      if other is not None and other.free:
        self._Remove(other)
        left, right = (c, other) if other is c.next else (other, c)
        left.size += right.size
        left.next = right.next
        if right.next is not None:
          right.next.prev = left
        del self.chunks[right.addr]
        c = left
    self._Insert(c)


def Replay(events: Iterable[Tuple[str, object, int]],
           bfc: Optional[Bfc] = None) -> Tuple[int, int]:
  """(peak of the blocks in use, peak of the bytes asked) over `events`:
  ('a', key, bytes) allocates, ('f', key, _) frees what `key` holds,
  ('m', key, old) hands old's block to key."""
  bfc = bfc or Bfc()
  held, asked, asked_peak, base = {}, 0, 0, bfc.in_use
  bfc.peak = bfc.in_use
  for kind, key, n in events:
    if kind == 'a':
      held[key] = (bfc.Allocate(n), n)
      asked += n
      asked_peak = max(asked_peak, asked)
    elif kind == 'm':
      held[key] = held.pop(n)
    else:
      addr, m = held.pop(key)
      bfc.Free(addr)
      asked -= m
  return bfc.peak - base, asked_peak


def _StepOps(table, cells, ranges, remat, batch=None):
  """The ops of one training step in the order the host runs the
  schedule's actions (schedule.DeviceOrder): per op, the buffer instances
  it makes ([(key, bytes)]) and the ones it reads. A recomputing B runs
  its chunk's forward again: its reads find the new instances, so the
  forward's own die in F. Cells marked `recomputed` (a per-cell choice,
  cell_remat.Apply) do the same per run of marked cells: its forward
  runs again when the backward reaches its last cell. A W runs the weight-gradient-only ops a split
  B leaves out. batch: the micro-batch, to which a program's batch-sized
  bytes are scaled from the one it was traced at (None: as traced)."""
  fused = schedule_lib.FusedBackwards(table)
  split = {(a.chunk, a.mb) for acts in table.actions for a in acts
           if a.kind == W} - fused
  ops, current, serial = [], {}, itertools.count()

  def Find(mb, i, refs):
    found = [current.get((mb, i + off, ph, j)) for off, ph, j in refs]
    return [k for k in found if k is not None]

  def Run(mb, i, phase, keep):
    program = cells[i].program
    r = 1.0 if batch is None else batch / program['batch']
    for made, reads, w, takes, temp in program[phase]:
      if not keep(w):
        continue
      found, can_take = Find(mb, i, reads), Find(mb, i, takes)
      out = []
      for j, n, batched in made:
        key = current[(mb, i, phase, j)] = next(serial)
        # Op temporaries (measured) stay as they are, as in Scaled.
        out.append((key, int(round(n * r)) if batched else n))
      ops.append((out, found, can_take, temp))

  again = [c.recomputed for c in cells]
  for _, _, a in schedule_lib.DeviceOrder(table):
    lo, hi = ranges[a.chunk]
    if a.kind == F or (a.kind == B and remat[a.mb]):
      for i in range(lo, hi):
        Run(a.mb, i, 'f', lambda w: True)
    if a.kind == B:
      only_b = (a.chunk, a.mb) in split
      for i in reversed(range(lo, hi)):
        if not remat[a.mb] and again[i] and (i + 1 == hi or
                                             not again[i + 1]):
          # The gradient reached the last cell of a run recomputed per
          # cell (within the chunk): the run's forward runs again first.
          start = i
          while start > lo and again[start - 1]:
            start -= 1
          for j in range(start, i + 1):
            Run(a.mb, j, 'f', lambda w: True)
        Run(a.mb, i, 'b', lambda w, s=only_b: not (s and w))
    elif a.kind == W and (a.chunk, a.mb) not in fused:
      for i in reversed(range(lo, hi)):
        Run(a.mb, i, 'b', lambda w: w)
  return ops


def StepEvents(table, cells, ranges, remat, batch=None
               ) -> List[Tuple[str, int, int]]:
  """Allocations and frees of one training step (Replay's events): a
  buffer is allocated by the op that makes it, unless an element-wise
  kernel writes into an input it reads last, and freed after the last op
  that reads it, or at once when none does; an op's measured temporaries
  are allocated after its outputs and freed as it ends. batch: as in
  _StepOps."""
  ops = _StepOps(table, cells, ranges, remat, batch)
  last = {}
  for j, (_, reads, _, _) in enumerate(ops):
    for k in reads:
      last[k] = j
  events = []
  for j, (made, reads, can_take, temp) in enumerate(ops):
    # The first output may take over an input this op reads last.
    taken = next((k for k in can_take if last.get(k) == j), None)
    for i, (k, n) in enumerate(made):
      events.append(('m', k, taken) if i == 0 and taken is not None else
                    ('a', k, n))
    if temp:  # the kernel's temporaries, while it runs
      events += [('a', ('temp', j), temp), ('f', ('temp', j), 0)]
    events.extend(('f', k, 0) for k, _ in made if k not in last)
    events.extend(('f', k, 0) for k in set(reads)
                  if last[k] == j and k != taken)
  return events


def ReplayTwice(events) -> Tuple[int, int]:
  """Replay of `events` on the blocks a first replay of them leaves (what
  a step meets after the first; later ones repeat it): (peak of the
  blocks in use, peak of the bytes asked), both above its start."""
  bfc = Bfc()
  for step in range(2):
    out = Replay([(k, (step, key), (step, n) if k == 'm' else n)
                  for k, key, n in events], bfc)
  return out


def StepBlocks(table, cells, ranges, remat, batch=None,
               max_ops: int = MAX_STEP_OPS) -> Optional[Tuple[int, int]]:
  """ReplayTwice of a training step's events (StepEvents). None when a
  cell's program was not recorded, or when the step runs more than
  max_ops ops (the replay does some 20,000 a second)."""
  if any(c.program is None for c in cells):
    return None
  per_chunk = [sum(len(c.program[phase]) for c in cells[a:b]
                   for phase in 'fb') for a, b in ranges]
  if sum(per_chunk[a.chunk] for acts in table.actions
         for a in acts) > max_ops:
    return None
  return ReplayTwice(StepEvents(table, cells, ranges, remat, batch))
