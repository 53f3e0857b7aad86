"""A pipeline plan as data: memory and time of every device before launch.

`MakePlan` combines per-cell costs (planning/costs.py, one trace at
micro-batch shapes), a partition of the cells into chunks, the schedule's
tick table (schedule_view) and the re-materialization flags into a
JSON-able dict: per device its chunks and cells, parameters, bytes of
weights / optimizer slots / gradient accumulators, stashed activation bytes
(peak over the table), peak working bytes and time; per chunk its boundary
and residual bytes and action times; for the step the bubble, the step
time, examples per second and whether it fits the memory budget. Nothing
here runs TensorFlow.

Memory model of one chunk and one micro-batch (bytes from the trace):
- residuals R: forward tensors its backward reads (TensorFlow's own);
- F holds its transient tensors (and R when the micro-batch is kept); a B
  holds R (kept, or recomputed first) plus the gradients in flight; a W
  reads what B handed it and makes the weight gradients;
- between ticks the executor's buffers hold, per chunk, the entries the
  table says (schedule_view.BufferCounts): inputs, gradients of outputs,
  kept residuals, B->W tensors; the gradient of a chunk's outputs lives on
  the next chunk's device;
- weights, one accumulator per weight and the optimizer slots persist;
  after the loop the update may copy the gradients (clipping).
A device's bytes are the sum of its chunks'. Logical devices that share a
host (CPU) share one allocator and run one action at a time: the host's
peak adds every device's buffers and the largest action's working bytes,
tick by tick.
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

from gpipe_lingvo import errors
from gpipe_lingvo.planning import allocator as allocator_lib
from gpipe_lingvo.planning import partition as partition_lib
from gpipe_lingvo.pipeline import schedule as schedule_lib
from gpipe_lingvo.planning import schedule_view

SLOTS_PER_WEIGHT = {'sgd': 0, 'momentum': 1, 'rmsprop': 2, 'adam': 2}
F, B, W = schedule_view.F, schedule_view.B, schedule_view.W


class PlanError(errors.UserError, ValueError):
  """The requested pipeline does not fit; the message says what would."""


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """What the plan needs of a pipeline's configuration."""
  schedule: str
  num_stages: int           # K devices
  num_micro_batches: int    # M
  remat: tuple              # per micro-batch: True where recomputed
  virtual_stages: int = 1   # v chunks per device
  execution: str = 'dataflow'  # or 'ticks' (executor.EXECUTIONS)
  host_order: bool = False  # dataflow: all actions in one chain (executor)

  @property
  def num_chunks(self) -> int:
    return self.num_stages * self.virtual_stages

  def Table(self) -> schedule_view.TickTable:
    return schedule_view.Table(self.schedule, self.num_stages,
                               self.num_micro_batches, self.virtual_stages)

  def Replace(self, **changes) -> 'Pipeline':
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """What the plan needs of the update: the optimizer's slots per weight,
  the copies of the gradients it makes after the loop (1 when they are
  clipped by their global norm), and whether the step adds weight-decay
  gradients (the task's own tape makes them outside the pipeline, with
  no input to wait for, so they are held through the whole step)."""
  slots_per_weight: int = 1
  update_copies: int = 0
  weight_decay: bool = False

  @classmethod
  def FromTask(cls, task_p) -> 'Optimizer':
    """From task params (train.optimizer's type and clip_gradient_norm,
    weight_decay)."""
    p = task_p.train.optimizer
    return cls(SLOTS_PER_WEIGHT[p.type], int(p.clip_gradient_norm > 0),
               bool(task_p.weight_decay))


@dataclasses.dataclass(frozen=True)
class Overheads:
  """Executor costs beyond the cells' own work, measured on the device
  (planning/measure.py ExecutorOverhead): seconds per clock tick of the
  loop's bookkeeping, the switches over each device's actions and the
  calls and buffer reads and writes of the actions ('ticks'); seconds per
  action of the unrolled graph's calls and gates ('dataflow'); seconds a
  step pays once besides its actions (auto.StepFit: what runs outside
  the cells, the update among it)."""
  tick_s: float = 0.0
  action_s: float = 0.0
  step_s: float = 0.0


def _Workspaces(c) -> Tuple[int, int, int]:
  """What a cell's op workspaces add to its forward peak, its transient
  forward peak and its backward peak: placed at their ops when measured
  that way, else its largest one added to each (an upper bound)."""
  if c.bwd_workspace_bytes is not None:
    return (c.fwd_workspace_bytes, c.transient_workspace_bytes,
            c.bwd_workspace_bytes)
  ws = c.workspace_bytes or 0
  return ws, ws, ws


def ChunkActivations(costs, a: int, b: int) -> Dict[str, int]:
  """Activation bytes of a chunk holding cells [a, b), one micro-batch.

  The forward of cell j runs while the residuals of the cells before it
  are kept; the backward of cell j runs (last cell first) while those are
  still kept, its own are being read and the gradient of its output has
  arrived. The network's last cell makes that gradient itself (the loss
  is traced with it, in its backward peak). A cell's op workspaces
  (measured) add while their ops run."""
  cells = costs.cells[a:b]
  res = fwd_work = fwd_free = bwd_work = 0
  for j, c in enumerate(cells):
    inputs = c.input_residual_bytes if j else 0
    fwd_ws, free_ws, bwd_ws = _Workspaces(c)
    fwd_work = max(fwd_work, res + inputs + c.fwd_peak + fwd_ws)
    # Without residuals kept (ForwardOutputs), a cell holds its input
    # (the chunk's own input sits in the buffer) and its transients.
    fwd_free = max(fwd_free, (cells[j - 1].out_bytes if j else 0) +
                   c.fwd_transient + free_ws)
    out_grad = 0 if a + j == len(costs.cells) - 1 else c.out_bytes
    bwd_work = max(bwd_work, res + inputs + c.bwd_peak + out_grad + bwd_ws)
    res += c.residual_bytes + inputs
  return {'input_bytes': costs.input_bytes if a == 0 else
                         costs.cells[a - 1].out_bytes,
          'output_bytes': cells[-1].out_bytes,
          'residual_bytes': res,
          'weight_input_bytes': sum(c.weight_input_bytes for c in cells),
          'weight_grad_bytes': sum(c.param_bytes for c in cells),
          'forward_work_bytes': max(fwd_work, res),
          'forward_free_bytes': fwd_free,
          'backward_work_bytes': max(bwd_work, res)}


def ChunkStatic(costs, a: int, b: int, opt: Optimizer) -> dict:
  cells = costs.cells[a:b]
  w = sum(c.param_bytes for c in cells)
  return {'cells': [c.name for c in cells],
          'params': sum(c.params for c in cells),
          'weight_bytes': w + sum(c.state_bytes for c in cells),
          'slot_bytes': w * opt.slots_per_weight,
          'accumulator_bytes': w,
          'decay_bytes': (sum(c.regularized_bytes for c in cells)
                          if opt.weight_decay else 0)}


def ChunkTimes(costs, a, b, flops_per_s=None):
  """(F, B, W) seconds of cells [a, b) for one micro-batch: measured
  per-cell times when the costs have them, else FLOPs at flops_per_s. B is
  the input-gradient part of the backward, W the weight-gradient part."""
  cells = costs.cells[a:b]
  if all(c.fwd_s is not None for c in cells):
    f = sum(c.fwd_s for c in cells)
    w = sum(c.bwd_w_s or 0.0 for c in cells)
    return f, sum(c.bwd_s for c in cells) - w, w
  if not flops_per_s:
    return None, None, None
  w = sum(c.bwd_w_flops for c in cells)
  return (sum(c.fwd_flops for c in cells) / flops_per_s,
          (sum(c.bwd_flops for c in cells) - w) / flops_per_s,
          w / flops_per_s)


def _ActionWork(a: schedule_view.Action, act: dict, remat) -> int:
  """Bytes an action holds beyond the buffers (which the counts cover)."""
  if a.kind == F:
    return (act['forward_free_bytes'] if remat[a.mb] else
            act['forward_work_bytes'] - act['residual_bytes'])
  if a.kind == B:
    return act['backward_work_bytes'] - (0 if remat[a.mb] else
                                         act['residual_bytes'])
  return act['weight_grad_bytes']  # W: its inputs are in the buffer


def TickMemory(table, acts: Sequence[dict], remat: Sequence[bool],
               chunks: Optional[Sequence[int]] = None,
               execution: str = 'ticks'):
  """Per tick, per device: (buffered bytes, working bytes).

  acts: ChunkActivations per chunk; chunks: only these chunks' buffers and
  actions (default all); execution: how buffers are held (BufferCounts)."""
  chunks = range(table.num_chunks) if chunks is None else chunks
  dev = table.chunk_device
  buffered = [[0] * table.num_devices for _ in range(table.num_ticks)]
  # Under 'ticks', a slot written again holds its old entry while the
  # writer makes the new one: on top of that device's work in the tick.
  rewritten = [[0] * table.num_devices for _ in range(table.num_ticks)]
  for c in chunks:
    counts = BufferCounts(table, c, remat, execution)
    again = RewriteCounts(table, c, remat, execution)
    nxt = dev[min(c + 1, table.num_chunks - 1)]
    where = {'inputs': (dev[c], 'input_bytes'),
             'grads': (nxt, 'output_bytes'),  # on the next chunk's device
             'residuals': (dev[c], 'residual_bytes'),
             'weight_inputs': (dev[c], 'weight_input_bytes')}
    for name, (d, key) in where.items():
      for t, n in enumerate(counts[name]):
        buffered[t][d] += n * acts[c][key]
      for t, n in enumerate(again[name]):
        rewritten[t][d] += n * acts[c][key]
  out = []
  for t, row in enumerate(table.ticks):
    per_device = []
    for d, actions in enumerate(row):
      mine = [a for a in actions if a.chunk in chunks]
      work = max([_ActionWork(a, acts[a.chunk], remat) for a in mine] or [0])
      per_device.append((buffered[t][d], work + rewritten[t][d]))
    out.append(per_device)
  return out


def _Entries(table, chunk: int, remat: Sequence[bool]):
  """(bytes key, writer device, reader device, write tick, last-read
  tick) of each entry of a chunk's buffers under execution='dataflow'."""
  dev, last = table.chunk_device, table.num_chunks - 1
  where = {'inputs': ('input_bytes', dev[max(chunk - 1, 0)]),
           'grads': ('output_bytes', dev[min(chunk + 1, last)]),
           'residuals': ('residual_bytes', dev[chunk]),
           'weight_inputs': ('weight_input_bytes', dev[chunk])}
  fused = schedule_lib.FusedBackwards(table)
  for name, lifetimes in table.BufferLifetimes(chunk, remat).items():
    key, writer = where[name]
    for i, life in enumerate(lifetimes or []):
      if life is None or (name == 'weight_inputs' and (chunk, i) in fused):
        continue
      yield key, writer, dev[chunk], life[0], life[1]


def OrderedHostPeak(table, acts: Sequence[dict],
                    remat: Sequence[bool]) -> int:
  """DataflowHostPeak when the host runs every action in schedule.DeviceOrder
  (tick by tick, devices in turn; executor action_order 'host'): while an
  action runs, the host holds the entries written before it and not yet
  read for the last time, what it writes, and its working bytes."""
  fused = schedule_lib.FusedBackwards(table)
  order = [(t, d, a) for t, d, a in schedule_lib.DeviceOrder(table)
           if not (a.kind == W and (a.chunk, a.mb) in fused)]
  first, last = {}, {}
  for j, (t, d, _) in enumerate(order):
    first.setdefault((t, d), j)
    last[(t, d)] = j
  entries = [(acts[c][key], first[(w, writer)], last[(r, reader)])
             for c in range(table.num_chunks)
             for key, writer, reader, w, r in _Entries(table, c, remat)]
  peak = 0
  for j, (_, _, a) in enumerate(order):
    held = sum(n for n, wj, rj in entries if wj <= j <= rj)
    peak = max(peak, held + _ActionWork(a, acts[a.chunk], remat) -
               _ReadInWork(table, a, acts))
  return peak


def DataflowHostPeak(table, acts: Sequence[dict],
                     remat: Sequence[bool]) -> int:
  """Peak bytes of a host that runs the actions one at a time under
  execution='dataflow', above the persistent bytes.

  The actions of one tick (one device's each) run one after another in an
  order the plan does not know. While a device's actions of tick t run,
  the host holds the entries live at the start of t, what that device
  writes, and, of each other device's actions of t, what they write less
  what they free (entries they read last) when that adds: the worst
  order. The tick view (TickMemory) counts every write of the tick and no
  free. A B's working bytes hold the gradient of its chunk's output
  (ChunkActivations), which is the entry it reads: counted once."""
  written = [[0] * table.num_devices for _ in range(table.num_ticks)]
  freed = [[0] * table.num_devices for _ in range(table.num_ticks)]
  live = [0] * table.num_ticks
  for c in range(table.num_chunks):
    for key, writer, reader, w, r in _Entries(table, c, remat):
      n = acts[c][key]
      written[w][writer] += n
      freed[r][reader] += n
      for t in range(w + 1, r + 1):
        live[t] += n
  peak = 0
  for t, row in enumerate(table.ticks):
    net = [max(0, written[t][d] - freed[t][d]) for d in range(len(row))]
    for d, actions in enumerate(row):
      if not actions:
        continue
      work = max(_ActionWork(a, acts[a.chunk], remat) -
                 _ReadInWork(table, a, acts) for a in actions)
      peak = max(peak, live[t] + written[t][d] + work +
                 sum(net) - net[d])
  return peak


def _ReadInWork(table, a: schedule_view.Action, acts) -> int:
  """Bytes of the entries `a` reads that its working bytes count too: a
  B's output gradient, which arrives from the next chunk's B (the
  network's last chunk makes its own)."""
  if a.kind != B or a.chunk == table.num_chunks - 1:
    return 0
  return acts[a.chunk]['output_bytes']


def BufferCounts(table, chunk: int, remat: Sequence[bool],
                 execution: str = 'dataflow') -> Dict[str, List[int]]:
  """Per buffer of `chunk`, per tick: entries held.

  'ticks': the executor's TensorArray slots keep an entry until the slot is
  written again (schedule_view.BufferCounts). 'dataflow': entries are graph
  edges the runtime frees after their last reader, so an entry is held
  from the tick it is written through the tick of its last read; a W fused
  with its B stashes nothing."""
  if execution == 'ticks':
    return schedule_view.BufferCounts(table, chunk, remat)
  fused = schedule_lib.FusedBackwards(table)
  out = {}
  for name, lifetimes in table.BufferLifetimes(chunk, remat).items():
    counts = [0] * table.num_ticks
    for i, life in enumerate(lifetimes or []):
      if life is None or (name == 'weight_inputs' and (chunk, i) in fused):
        continue
      for t in range(life[0], life[1] + 1):
        counts[t] += 1
    out[name] = counts
  return out


def RewriteCounts(table, chunk: int, remat: Sequence[bool],
                  execution: str = 'dataflow') -> Dict[str, List[int]]:
  """Per buffer of `chunk`, per tick: entries written into a slot that
  still holds an earlier one ('ticks': schedule_view.RewriteCounts; none
  under 'dataflow', whose entries are graph edges)."""
  if execution == 'ticks':
    return schedule_view.RewriteCounts(table, chunk, remat)
  return {name: [0] * table.num_ticks
          for name in table.BufferLifetimes(chunk, remat)}


def DataflowTimeline(table, cost, remat: Sequence[bool],
                     host_parallelism: Optional[float] = None,
                     action_overhead: float = 0.0
                     ) -> 'schedule_lib.Timeline':
  """Start and end of every action under execution='dataflow': each
  device runs its actions in the table's order, each as soon as the device
  is free and its inputs exist (F after the previous chunk's F, B after its
  own F and the next chunk's B, W after its B); no ticks, no lockstep.

  cost(kind, chunk): seconds of an action (B: input-gradient part, W:
  weight-gradient part; a fused B+W costs both). host_parallelism: None,
  devices compute on their own; p <= 1: the devices share one host that
  runs one action at a time (the earliest startable next, device order on
  ties); p > 1: the step lasts at least its total work / p.
  action_overhead: seconds each action adds (its calls and gates)."""
  base = table._CostFn(cost, remat)  # pylint: disable=protected-access
  fused = schedule_lib.FusedBackwards(table)
  last = table.num_chunks - 1
  queues = [[a for a in acts if not (a.kind == W and (a.chunk, a.mb) in fused)]
            for acts in table.actions]

  def Deps(a):
    if a.kind == F:
      return [schedule_view.Action(F, a.chunk - 1, a.mb)] if a.chunk else []
    if a.kind == B:
      return [schedule_view.Action(F, a.chunk, a.mb)] + (
          [schedule_view.Action(B, a.chunk + 1, a.mb)]
          if a.chunk < last and not table.forward_only else [])
    return [schedule_view.Action(B, a.chunk, a.mb)]

  def Duration(a):
    extra = (base(schedule_view.Action(W, a.chunk, a.mb))
             if a.kind == B and (a.chunk, a.mb) in fused else 0.0)
    return base(a) + extra + action_overhead

  serial = host_parallelism is not None and host_parallelism <= 1
  done, events = {}, []
  pos, free, host = [0] * table.num_devices, [0.0] * table.num_devices, 0.0
  while True:
    best = None
    for d, q in enumerate(queues):
      if pos[d] == len(q):
        continue
      a = q[pos[d]]
      deps = Deps(a)
      if any(x not in done for x in deps):
        continue
      start = max([free[d], host if serial else 0.0] +
                  [done[x] for x in deps])
      if best is None or start < best[0]:
        best = (start, d, a)
    if best is None:
      break
    start, d, a = best
    end = start + Duration(a)
    done[a], free[d], pos[d] = end, end, pos[d] + 1
    host = end if serial else host
    events.append(schedule_lib.TimelineEvent(
        d, table.Tick(a.kind, a.chunk, a.mb), a, start, end))
  duration = max([e.end for e in events] or [0.0])
  if host_parallelism is not None and not serial:
    duration = max(duration, sum(e.end - e.start for e in events) /
                   host_parallelism)
  return schedule_lib.Timeline(events, duration, [])


def StaticBytes(s: dict) -> int:
  """Bytes held between steps: weights, slots, gradient sums."""
  return s['weight_bytes'] + s['slot_bytes'] + s['accumulator_bytes']


def MakePlan(costs, ranges, pipe: Pipeline, opt: Optimizer = Optimizer(),
             budgets: Optional[Sequence[float]] = None,
             shared_host: bool = True, host_parallelism: float = 1.0,
             flops_per_s: Optional[float] = None,
             overheads: Overheads = Overheads(),
             prefetch_bytes: int = 0, allocator: bool = False,
             allocator_max_ops: int = allocator_lib.MAX_STEP_OPS) -> dict:
  """The plan of one configuration (see the module docstring).

  costs: NetworkCosts at the micro-batch size; ranges: [(start, end)] per
  chunk; budgets: bytes per device. shared_host: all devices on one host
  allocator (logical CPU devices); host_parallelism: how many actions the
  host runs at once at full speed (1 when every op already uses all cores).
  prefetch_bytes: host bytes the input pipeline fills while a step runs
  (the next training batches), on top of the step's own. allocator: on a
  shared host under execution='dataflow', also replay the step's ops
  through a simulated BFC allocator (allocator.StepBlocks, when the
  costs hold the cells' programs and the step runs at most
  allocator_max_ops ops): the host's peak is then at least the
  blocks it hands out. With budgets, a shared host's plan fits only if
  the host's peak is within their sum too (host_fits). (The tick loop's
  buffers hold
  entries until their slot is written again, which the op replay does not
  model.)
  """
  table = pipe.Table()
  remat = list(pipe.remat)
  chunks = []
  for c, (a, b) in enumerate(ranges):
    ch = ChunkStatic(costs, a, b, opt)
    ch.update(ChunkActivations(costs, a, b), device=table.chunk_device[c])
    ch['forward_s'], ch['backward_s'], ch['weight_s'] = ChunkTimes(
        costs, a, b, flops_per_s)
    chunks.append(ch)
  mem = TickMemory(table, chunks, remat, execution=pipe.execution)
  peak_stash = table.PeakStash()
  stages = [_Device(d, chunks, mem, peak_stash[d], opt)
            for d in range(pipe.num_stages)]
  for d, st in enumerate(stages):
    if budgets is not None:
      st['budget_bytes'] = budgets[d]
  # One action runs at a time on a shared host: working bytes do not add
  # up. After the loop its buffers are gone and the update runs.
  if pipe.execution == 'dataflow' and pipe.host_order:
    busiest = OrderedHostPeak(table, chunks, remat)
  elif pipe.execution == 'dataflow':
    busiest = DataflowHostPeak(table, chunks, remat)
  else:
    busiest = max(sum(s for s, _ in row) + max(w for _, w in row)
                  for row in mem)
  blocks = None
  if allocator and shared_host and pipe.execution == 'dataflow':
    blocks = allocator_lib.StepBlocks(table, costs.cells, ranges, remat,
                                      costs.batch, allocator_max_ops)
    if blocks is not None:
      busiest = max(busiest, blocks[0])
  host_step = (max(busiest, sum(s['update_bytes'] for s in stages)) +
               sum(s['decay_bytes'] for s in stages) + prefetch_bytes)
  plan = {
      'schedule': pipe.schedule, 'num_stages': pipe.num_stages,
      'virtual_stages': pipe.virtual_stages,
      'num_micro_batches': pipe.num_micro_batches,
      'micro_batch_size': costs.batch,
      'batch_size': costs.batch * pipe.num_micro_batches,
      'remat': remat, 'partition': partition_lib.Counts(ranges),
      'chunk_device': list(table.chunk_device),
      'stages': stages, 'chunks': chunks,
      'step_activation_peak_bytes': host_step if shared_host else None,
      'host_peak_bytes': (sum(StaticBytes(s) for s in stages) + host_step
                          if shared_host else None),
      'prefetch_bytes': prefetch_bytes, 'execution': pipe.execution,
      'allocator_blocks_bytes': None if blocks is None else blocks[0],
      'allocator_asked_bytes': None if blocks is None else blocks[1],
      'ticks': table.num_ticks, 'host_parallelism': host_parallelism,
      'overheads': dataclasses.asdict(overheads),
  }
  plan.update(_TimeEstimate(table, chunks, remat, host_parallelism,
                            overheads, pipe.execution))
  plan['host_fits'] = _HostFits(plan, budgets)
  plan['fits'] = plan['host_fits'] and (budgets is None or all(
      s['peak_bytes'] <= s['budget_bytes'] for s in stages))
  return plan


def _HostFits(plan: dict, budgets: Optional[Sequence[float]]) -> bool:
  """Whether a shared host holds its peak (weights, slots, accumulators,
  the step, the prefetched batches; with the replay, the blocks the
  allocator hands out) within the devices' budgets summed: its devices
  draw on one allocator, so what it holds counts against all of them at
  once. True without a budget or a shared host."""
  if budgets is None or plan['host_peak_bytes'] is None:
    return True
  return plan['host_peak_bytes'] <= sum(budgets)


def PeakBytes(static: dict, per_tick: Sequence[int], opt: Optimizer) -> int:
  """A device's peak: persistent bytes, the weight decay's gradients
  (held through the step), plus the larger of its busiest tick and the
  update after the loop (gradient copies)."""
  return StaticBytes(static) + static['decay_bytes'] + max(
      max(per_tick), opt.update_copies * static['accumulator_bytes'])


def _Device(d, chunks, mem, peak_stash, opt: Optimizer) -> dict:
  """Device d's part of the plan: its chunks summed, its peaks."""
  mine = [ch for ch in chunks if ch['device'] == d]
  st = {'chunks': [c for c, ch in enumerate(chunks) if ch['device'] == d],
        'cells': [n for ch in mine for n in ch['cells']]}
  for key in ('params', 'weight_bytes', 'slot_bytes', 'accumulator_bytes',
              'decay_bytes'):
    st[key] = sum(ch[key] for ch in mine)
  for key in ('forward_s', 'backward_s', 'weight_s'):
    st[key] = (None if mine[0][key] is None else
               sum(ch[key] for ch in mine))
  st['stash_peak_bytes'] = max(row[d][0] for row in mem)
  st['working_peak_bytes'] = max(row[d][1] for row in mem)
  st['update_bytes'] = opt.update_copies * st['accumulator_bytes']
  st['peak_bytes'] = PeakBytes(st, [sum(row[d]) for row in mem], opt)
  st['stashed_chunk_activations'] = peak_stash
  return st


def _TimeEstimate(table, chunks, remat, host_parallelism, overheads,
                  execution='ticks'):
  """The execution's simulator on the chunk times: the engine's tick
  loop (TickTable.Timeline) or per-device chains (DataflowTimeline)."""
  if any(ch['forward_s'] is None for ch in chunks):
    return {'timeline': None, 'bubble': None, 'step_s': None,
            'examples_per_s': None}
  key = {F: 'forward_s', B: 'backward_s', W: 'weight_s'}

  def Cost(kind, c):
    return chunks[c][key[kind]]

  if execution == 'dataflow':
    tl = DataflowTimeline(table, Cost, remat, host_parallelism,
                          overheads.action_s)
    own = DataflowTimeline(table, Cost, remat,
                           action_overhead=overheads.action_s)
  else:
    tl = table.Timeline(Cost, remat=remat, host_parallelism=host_parallelism,
                        tick_overhead=overheads.tick_s)
    # The schedule's own bubble: devices computing on their own.
    own = table.Timeline(Cost, remat=remat, tick_overhead=overheads.tick_s)
  def Box(e):
    a = e.action
    rerun = a.kind == B and remat[a.mb]
    return [e.device, a.kind, a.chunk, a.mb, e.start, e.end,
            e.start + chunks[a.chunk]['forward_s'] if rerun else None]

  return {'timeline': [Box(e) for e in tl.events],
          'bubble': own.BubbleFraction(table.num_devices),
          'step_s': tl.duration + overheads.step_s}


def FormatTable(plan: dict) -> str:
  """Per-device text table of a plan (what --mode=plan prints)."""
  mib = lambda n: '-' if n is None else f'{n / 2**20:.1f}'
  ms = lambda s: '-' if s is None else f'{s * 1e3:.1f}'
  chunks = plan['chunks']
  head = ('| device | chunks | cells | params | weights+slots+acc MiB | '
          'boundary in/out MiB | stashed MiB (chunk activations) | peak MiB '
          '| F ms | B ms | W ms |')
  lines = [head, '|' + '---|' * 11]
  for d, s in enumerate(plan['stages']):
    bounds = ', '.join(f"{mib(chunks[c]['input_bytes'])}/"
                       f"{mib(chunks[c]['output_bytes'])}"
                       for c in s['chunks'])
    lines.append(
        f"| {d} | {', '.join(map(str, s['chunks']))} | {len(s['cells'])} "
        f"({s['cells'][0]}..{s['cells'][-1]}) | {s['params']:,} | "
        f"{mib(StaticBytes(s))} | {bounds} | {mib(s['stash_peak_bytes'])} "
        f"({s['stashed_chunk_activations']}) | {mib(s['peak_bytes'])} | "
        f"{ms(s['forward_s'])} | {ms(s['backward_s'])} | "
        f"{ms(s['weight_s'])} |")
  return '\n'.join(lines)


def StageBytesFn(costs, pipe: Pipeline, opt: Optimizer = Optimizer()):
  """stage_bytes(k, a, b): peak bytes of device k if it held cells [a, b)
  as its one chunk (v = 1), for partition.Balance. Device k also holds the
  gradient of chunk k-1's outputs, whose size is its own input's."""
  table = pipe.Table()
  remat = list(pipe.remat)

  def StageBytes(k, a, b):
    act = ChunkActivations(costs, a, b)
    # Chunk k-1 as far as device k sees it: the gradient of its outputs.
    prev = {**dict.fromkeys(act, 0), 'output_bytes': act['input_bytes']}
    acts = [act if c == k else prev for c in range(table.num_chunks)]
    rows = TickMemory(table, acts, remat,
                      chunks=[c for c in (k - 1, k) if c >= 0],
                      execution=pipe.execution)
    return PeakBytes(ChunkStatic(costs, a, b, opt),
                      [sum(row[k]) for row in rows], opt)

  return StageBytes


def CostVector(costs, mode: str, num_micro_batches: int = 1,
               opt: Optimizer = Optimizer()) -> List[float]:
  """Per-cell cost the balancer equalises for partition `mode`."""
  cells = costs.cells
  if mode == 'params':
    return [float(c.param_bytes) for c in cells]
  if mode == 'flops':
    return [float(c.fwd_flops + c.bwd_flops) for c in cells]
  if mode == 'time':
    if any(c.fwd_s is None for c in cells):
      raise PlanError("partition 'time' needs measured cell times "
                      '(costs.TraceNetwork(..., measure=True)).')
    return [c.fwd_s + c.bwd_s for c in cells]
  if mode == 'memory':
    # Persistent bytes plus the activations a stage keeps per micro-batch
    # in flight (its residuals, at most M of them).
    return [float(c.param_bytes * (2 + opt.slots_per_weight) +
                  c.state_bytes +
                  num_micro_batches * (c.residual_bytes +
                                       c.input_residual_bytes))
            for c in cells]
  raise PlanError(f'unknown partition mode {mode!r}; use one of '
                  f'{partition_lib.COST_MODES}.')


def BalancedPartition(costs, mode: str, pipe: Pipeline,
                      opt: Optimizer = Optimizer(),
                      budgets: Optional[Sequence[float]] = None,
                      explain: bool = True):
  """Exact min-max cut of the cells into the pipeline's chunks by `mode`.

  One chunk per device (v = 1): only cuts whose every device fits its
  budget are searched. Several chunks per device (v > 1): the cut that
  minimises the most expensive chunk is chosen, then each device's bytes
  (the sum of its chunks') are checked against its budget. A cut that
  cannot fit raises PlanError naming the least budget that would fit and
  (explain) what else would (more stages, more micro-batches, remat)."""
  vec = CostVector(costs, mode, pipe.num_micro_batches, opt)
  if pipe.virtual_stages == 1:
    fn = None if budgets is None else StageBytesFn(costs, pipe, opt)
    try:
      return partition_lib.Balance(vec, pipe.num_chunks, fn, budgets)
    except partition_lib.BudgetError as e:
      if not explain:
        raise PlanError(str(e)) from None
      raise PlanError(f'{e}. {_LeastFit(costs, pipe, opt)} '
                      f'{Suggest(costs, mode, pipe, opt, budgets)}') from None
  ranges = partition_lib.Balance(vec, pipe.num_chunks)
  if budgets is not None:
    need = _DeviceBytes(costs, ranges, pipe, opt)
    over = [d for d in range(pipe.num_stages) if need[d] > budgets[d]]
    if over:
      d = max(over, key=lambda x: need[x] / budgets[x])
      msg = (f'the cut of {len(costs.cells)} cells into {pipe.num_chunks} '
             f'chunks balanced as {partition_lib.Counts(ranges)} does not '
             f'fit the memory budget: device {d} needs '
             f'{partition_lib.FormatBytes(need[d])}, over its budget of '
             f'{partition_lib.FormatBytes(budgets[d])}')
      if explain:
        msg += (f'; it fits a budget of {partition_lib.FormatBytes(max(need))}'
                f' per device. {Suggest(costs, mode, pipe, opt, budgets)}')
      raise PlanError(msg)
  return ranges


def _DeviceBytes(costs, ranges, pipe, opt) -> List[float]:
  return [s['peak_bytes'] for s in MakePlan(costs, ranges, pipe, opt)['stages']]


def LeastBudget(costs, pipe: Pipeline, opt: Optimizer = Optimizer()):
  """(bytes, ranges): the least budget per device under which a cut of the
  cells fits this pipeline, and that cut. v = 1: exact over every
  contiguous cut (min over cuts of the largest device's peak, a min-max
  dynamic program on StageBytesFn); v > 1: the flops-balanced cut's."""
  n, k = len(costs.cells), pipe.num_chunks
  if k > n:
    return math.inf, None
  if pipe.virtual_stages > 1:
    ranges = partition_lib.Balance(CostVector(costs, 'flops'), k)
    return max(_DeviceBytes(costs, ranges, pipe, opt)), ranges
  fn = StageBytesFn(costs, pipe, opt)
  inf = math.inf
  best = [[inf] * (n + 1) for _ in range(k)]
  back = [[0] * (n + 1) for _ in range(k)]
  for j in range(1, n - k + 2):
    best[0][j] = fn(0, 0, j)
  for s in range(1, k):
    for j in range(s + 1, n - k + s + 2):
      for i in range(s, j):
        if best[s - 1][i] < best[s][j]:
          cand = max(best[s - 1][i], fn(s, i, j))
          if cand < best[s][j]:
            best[s][j], back[s][j] = cand, i
  ranges, j = [], n
  for s in range(k - 1, -1, -1):
    i = back[s][j] if s else 0
    ranges.append((i, j))
    j = i
  return best[-1][n], ranges[::-1]


def _LeastFit(costs, pipe, opt) -> str:
  """What would fit this very configuration: the least budget, and the
  cell that alone sets it when its stage holds nothing else."""
  least, ranges = LeastBudget(costs, pipe, opt)
  fn = StageBytesFn(costs, pipe, opt)
  need = [fn(s, a, b) for s, (a, b) in enumerate(ranges)]
  s = max(range(len(ranges)), key=lambda x: need[x])
  a, b = ranges[s]
  msg = (f'The least budget per device that fits K={pipe.num_stages}, '
         f'M={pipe.num_micro_batches} is {partition_lib.FormatBytes(least)} '
         f'(cut {partition_lib.Counts(ranges)})')
  if b - a == 1:
    msg += (f'; cell {costs.cells[a].name!r} alone needs it on stage {s}, '
            'so no cut of these cells fits less')
  return msg + '.'


def Suggest(costs, mode, pipe: Pipeline, opt: Optimizer, budgets):
  """What would fit: re-materialization, more micro-batches (same batch),
  or more stages, each tried with the same budget per device (the least
  budget of each, LeastBudget: one dynamic program per candidate)."""
  tips = []
  per_device = max(budgets)
  m, k = pipe.num_micro_batches, pipe.num_stages
  batch = costs.batch * m
  remat_all = all(pipe.remat)

  def Fits(kk, mm, flags):
    if kk * pipe.virtual_stages > len(costs.cells):
      return False
    try:
      schedule_view.CheckConfig(pipe.schedule, kk, mm, pipe.virtual_stages)
    except schedule_view.ScheduleError:
      return False
    scaled = costs if mm == m else costs.Scaled(batch // mm)
    least, _ = LeastBudget(scaled, pipe.Replace(
        num_stages=kk, num_micro_batches=mm, remat=tuple(flags)), opt)
    return least <= per_device

  if not remat_all and Fits(k, m, [True] * m):
    tips.append("remat 'always'")
  for mm in range(m + 1, batch + 1):
    if batch % mm == 0 and Fits(k, mm, [remat_all] * mm):
      tips.append(f'num_micro_batches={mm}')
      break
  for kk in range(k + 1, min(len(costs.cells), 4 * k) + 1):
    if Fits(kk, m, pipe.remat):
      tips.append(f'num_stages={kk}')
      break
  if not tips:
    return ('Nothing tried fits (more stages, more micro-batches, remat); '
            'raise the budget or shrink the model.')
  return 'Would fit with ' + ' or '.join(tips) + '.'
