"""Measuring a real training step to check a plan: peak memory, step time
and a per-action timeline from TensorFlow's profiler.

Memory: the allocator's peak bytes of one step above the bytes in use just
before it (`tf.config.experimental.get_memory_info`), the median of several
steps. Inter-op scheduling changes the order of independent ops and so the
peak; one inter-op thread makes it repeatable, and the CPU allocator only
keeps statistics when it is the BFC allocator (TF_CPU_ALLOCATOR_USE_BFC)
or oneDNN's; both must be set before TensorFlow starts
(ConfigureTensorFlow), so bench/planner_bench.py measures in processes of
its own.

Timeline: the executor runs every action's ops under a name scope naming
its chunk and kind (`schedule.ActionScope`, e.g. `action_2B/`, with the
micro-batch in the dataflow execution, `action_2B/mb5/`; the forward a B
reruns under `recompute/` inside it), in the tick loop one loop iteration
per clock tick; `schedule.ParseActionScope` reads the names back. A
profiled step's op events are grouped by (tick, chunk, kind); the tick
table gives the micro-batch (unless the name does) and the device.
"""
import glob
import os
import random
import statistics
import tempfile
import time
from typing import Callable, Dict, Hashable, List, NamedTuple, Tuple

from gpipe_lingvo.pipeline import schedule

# TensorFlow is imported inside the functions: ConfigureTensorFlow must run
# before it starts.
# Bookkeeping ops left out of an action's box: variable reads and constants
# can run before the action starts (dataflow execution gates only the
# arguments of its calls), transfers between devices after it ends.
_NOT_WORK = (':ReadVariableOp', ':Const', ':_Send', ':_Recv', ':_HostSend',
             ':_HostRecv')


def MedianSeconds(fn, reps=5):
  """costs.MedianSeconds, imported when called (TensorFlow starts with it)."""
  from gpipe_lingvo.planning import costs  # pylint: disable=import-outside-toplevel
  return costs.MedianSeconds(fn, reps)


def StepPeakAndSeconds(step_fn: Callable[[], object]) -> Tuple[int, float]:
  """One step: (the allocator's peak bytes above the bytes in use just
  before it, its seconds)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.experimental.reset_memory_stats('CPU:0')
  before = tf.config.experimental.get_memory_info('CPU:0')['current']
  t0 = time.perf_counter()
  step_fn()
  secs = time.perf_counter() - t0
  return tf.config.experimental.get_memory_info('CPU:0')['peak'] - before, secs


def MeasureStep(step_fn, reps=3):
  """(median peak bytes above the pre-step level, median seconds)."""
  step_fn()
  rows = [StepPeakAndSeconds(step_fn) for _ in range(reps)]
  return (statistics.median(p for p, _ in rows),
          statistics.median(s for _, s in rows))


class Interleaved(NamedTuple):
  """What InterleavedSteps measured of one step function."""
  peak_bytes: float        # the largest over every measured step
  seconds: float           # median over rounds of each round's median
  round_seconds: List[float]


def InterleavedSteps(step_fns: Dict[Hashable, Callable[[], object]],
                     rounds: int = 5, steps: int = 2, seed: int = 0,
                     measure_fn: Callable = StepPeakAndSeconds
                     ) -> Dict[Hashable, Interleaved]:
  """Measures several (warmed-up) steps against each other on a host whose
  load drifts: in each of `rounds` rounds every step runs `steps` times, in
  an order shuffled afresh (random.Random(seed)), so a slow spell falls on
  a few steps of every one rather than on whichever was measured during
  it; a step's time is the median over rounds of its round's median, its
  peak the largest of all its steps (a budget must hold every step).
  measure_fn(step_fn) -> (peak bytes, seconds) of one step."""
  rng = random.Random(seed)
  order = list(step_fns)
  peaks = {k: [] for k in order}
  per_round = {k: [] for k in order}
  for _ in range(rounds):
    rng.shuffle(order)
    for k in order:
      rows = [measure_fn(step_fns[k]) for _ in range(steps)]
      peaks[k].extend(p for p, _ in rows)
      per_round[k].append(statistics.median(s for _, s in rows))
  return {k: Interleaved(max(peaks[k]),
                         statistics.median(per_round[k]), per_round[k])
          for k in step_fns}


def _Events(xspace):
  """Op events inside actions as (line, (chunk, kind), recompute, start_s,
  end_s, micro-batch or None), and the executor's Process spans as (line,
  start_s, end_s, iteration)."""
  ops, spans = [], []
  for plane in xspace.planes:
    md, sm = plane.event_metadata, plane.stat_metadata
    for line in plane.lines:
      base = line.timestamp_ns * 1e-9
      for ev in line.events:
        name = md[ev.metadata_id].name
        start = base + ev.offset_ps * 1e-12
        end = start + ev.duration_ps * 1e-12
        if name == 'ExecutorState::Process':
          for s in ev.stats:
            if sm[s.metadata_id].name == 'iter_num':
              spans.append((line.id, start, end, int(s.int64_value)))
        elif not name.endswith(_NOT_WORK):
          a = schedule.ParseActionScope(name)
          if a is not None:
            ops.append((line.id, (a.chunk, a.kind), a.recompute, start, end,
                        a.mb))
  return ops, spans


def TimelineFromTrace(xspace, table):
  """Boxes [device, kind, chunk, mb, start, end, recompute_end] (seconds
  from the first; recompute_end None unless a B reran its forward) of one
  profiled step, matched to the tick table: an op's tick is the loop
  iteration of the executor span around it, or (execution='dataflow',
  whose op names give the micro-batch) the tick of its action. A W run
  fused with its B has no box of its own: its time is in the B's."""
  ops, spans = _Events(xspace)
  by_line = {}
  for line, s, e, it in spans:
    by_line.setdefault(line, []).append((s, e, it))
  cols = {}

  def Mb(kind, c, t):
    if (kind, c) not in cols:
      cols[(kind, c)] = table.Column(kind, c)
    return cols[(kind, c)][t]

  groups = {}  # (tick, chunk, kind) -> [start, end, recompute_end]
  for line, (c, kind), recompute, s, e, mb in ops:
    if mb is not None:
      t = table.Tick(kind, c, mb)
      if t is None:
        continue
    else:
      ticks = [it for ps, pe, it in by_line.get(line, [])
               if ps <= s and e <= pe]
      if not ticks or not 0 <= ticks[-1] < table.num_ticks:
        continue
      t = ticks[-1]
    if Mb(kind, c, t) < 0:
      continue  # bookkeeping of a branch that did not run
    g = groups.setdefault((t, c, kind), [s, e, None])
    g[0], g[1] = min(g[0], s), max(g[1], e)
    if recompute:
      g[2] = max(g[2] or s, e)
  boxes = [[table.chunk_device[c], kind, c, Mb(kind, c, t), s, e, r] for (t, c, kind), (s, e, r) in sorted(groups.items())]
  if boxes:
    t0 = min(b[4] for b in boxes)
    for b in boxes:
      b[4] -= t0
      b[5] -= t0
      if b[6] is not None:
        b[6] -= t0
  return boxes


def ProfiledXSpace(step_fn):
  """(step_fn's result, the XSpace of TensorFlow's profile of it)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel,g-direct-tensorflow-import
  with tempfile.TemporaryDirectory() as tmp:
    tf.profiler.experimental.start(tmp)
    try:
      result = step_fn()
    finally:
      tf.profiler.experimental.stop()
    path = sorted(glob.glob(os.path.join(tmp, 'plugins', 'profile', '*',
                                         '*.xplane.pb')))[-1]
    xspace = xplane_pb2.XSpace()
    with open(path, 'rb') as f:
      xspace.ParseFromString(f.read())
  return result, xspace


def ProfileStep(step_fn, table):
  """Runs step_fn once under TensorFlow's profiler; returns (its result,
  its boxes)."""
  result, xspace = ProfiledXSpace(step_fn)
  return result, TimelineFromTrace(xspace, table)


class PeakLive(NamedTuple):
  """The tensors live when the allocator's bytes in use peaked."""
  in_use: int   # the allocator's bytes in use then
  asked: int    # what the live tensors asked for
  held: int     # the blocks they hold (BFC hands out a free block whole
                # when it is less than twice the request)
  live: Dict[int, dict]  # address -> the allocation event's stats


def _Stats(event, stat_metadata):
  out = {}
  for s in event.stats:
    which = s.WhichOneof('value')
    value = getattr(s, which) if which else None
    if which == 'ref_value':
      value = stat_metadata[value].name
    out[stat_metadata[s.metadata_id].name] = value
  return out


def AllocatorEvents(xspace):
  """(time ps, 'MemoryAllocation' | 'MemoryDeallocation', stats) of every
  allocator event of a profile, in time order."""
  events = []
  for plane in xspace.planes:
    for line in plane.lines:
      for ev in line.events:
        name = plane.event_metadata[ev.metadata_id].name
        if name in ('MemoryAllocation', 'MemoryDeallocation'):
          events.append((line.timestamp_ns * 1000 + ev.offset_ps, name,
                         _Stats(ev, plane.stat_metadata)))
  events.sort(key=lambda e: e[0])
  return events


def LiveAtPeak(events) -> PeakLive:
  """What is live when the allocator's bytes in use peak (the allocation
  that reached the peak included)."""
  live, best, snap = {}, -1, {}
  for _, name, st in events:
    if name == 'MemoryAllocation':
      live[st.get('addr')] = st
    else:
      live.pop(st.get('addr'), None)
    if st.get('bytes_allocated', 0) > best:
      best, snap = st.get('bytes_allocated', 0), dict(live)
  return PeakLive(max(best, 0),
                  sum(s.get('requested_bytes', 0) for s in snap.values()),
                  sum(s.get('allocation_bytes', 0) for s in snap.values()),
                  snap)


def HighestPeak(xspace) -> PeakLive:
  """PeakLive of the profile's allocator whose bytes in use peaked highest
  (each GPU has its own; logical CPU devices share the host's)."""
  per_allocator = {}
  for ev in AllocatorEvents(xspace):
    per_allocator.setdefault(ev[2].get('allocator_name'), []).append(ev)
  peaks = [LiveAtPeak(evs) for evs in per_allocator.values()]
  return max(peaks, key=lambda p: p.in_use, default=PeakLive(0, 0, 0, {}))


def ProfileStepMemory(step_fn, table):
  """Runs step_fn once under the profiler; returns (its result, its
  timeline boxes, its HighestPeak)."""
  result, xspace = ProfiledXSpace(step_fn)
  return result, TimelineFromTrace(xspace, table), HighestPeak(xspace)


def TinyStepSeconds(pipe, device_type: str = 'cpu', reps: int = 10):
  """(median seconds, tick table) of a training step of `pipe`'s tick table
  (plan.Pipeline) in `pipe.execution` whose chunks are one tiny dense layer
  each: the executor's own cost, as their work is negligible. Needs the
  pipeline's logical devices."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import layers  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.pipeline import pipelined_network  # pylint: disable=import-outside-toplevel
  m = pipe.num_micro_batches
  remat = ('always' if all(pipe.remat) else 'never' if not any(pipe.remat)
           else 'except_last')
  p = pipelined_network.PipelinedNetwork.Params().Set(
      name='overhead', num_stages=pipe.num_stages, num_micro_batches=m,
      schedule=pipe.schedule, virtual_stages=pipe.virtual_stages,
      remat=remat, execution=pipe.execution, cells=[layers.FullyConnected.Params().Set(
          name=f'fc{c}', input_dim=2, output_dim=2, activation='tanh')
                          for c in range(pipe.num_chunks)])
  p.topology.device_type = device_type
  net = p.Instantiate()
  net.CreateGradientAccumulators()
  x = tf.ones([m, 2])
  loss_fn = lambda out, labels: (tf.reduce_sum(out), {})
  step = tf.function(lambda: net.ComputeLossAndGradients(
      x, tf.zeros([m]), loss_fn, tf.constant(0, tf.int64))[0])
  return MedianSeconds(lambda: step().numpy(), reps), net.schedule_table


def ExecutorOverhead(pipe, device_type='cpu', reps=10):
  """plan.Overheads of the executor running `pipe`'s tick table on this
  host in `pipe.execution`: TinyStepSeconds spread over its ticks
  ('ticks') or its actions ('dataflow')."""
  from gpipe_lingvo.planning import plan as plan_lib  # pylint: disable=import-outside-toplevel
  secs, table = TinyStepSeconds(pipe, device_type, reps)
  if pipe.execution == 'dataflow':
    return plan_lib.Overheads(
        action_s=secs / sum(len(a) for a in table.actions))
  return plan_lib.Overheads(tick_s=secs / table.num_ticks)


def ConfigureTensorFlow(num_devices):
  """Allocator statistics, one inter-op thread, logical CPU devices; call
  before TensorFlow initialises."""
  os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.threading.set_inter_op_parallelism_threads(1)
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  devices.EnsureDevices('cpu', num_devices)
