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

Timeline: the profiled step's op events are grouped by clock tick (the
executor loop's iteration number) and by the branch (`cond_N/then`) each
stage action runs in; in each tick the branches that ran, in their order
in the graph, are the tick table's forwards then backwards in stage order.
"""
import glob
import os
import re
import statistics
import tempfile
import time

_BRANCH_RE = re.compile(r'while/cond(?:_(\d+))?/then/')


def MeasureStep(step_fn, reps=3):
  """(median peak bytes above the pre-step level, median seconds)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  step_fn()
  peaks, times = [], []
  for _ in range(reps):
    tf.config.experimental.reset_memory_stats('CPU:0')
    before = tf.config.experimental.get_memory_info('CPU:0')['current']
    t0 = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - t0)
    peaks.append(tf.config.experimental.get_memory_info('CPU:0')['peak'] -
                 before)
  return statistics.median(peaks), statistics.median(times)


def _Events(xspace):
  """(thread events, iteration spans) of the host plane: ops as
  (name, start_s, end_s) and executor Process spans with iter_num."""
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
              it = int(s.int64_value or s.uint64_value or s.str_value or 0)
              spans.append((line.id, start, end, it))
        elif _BRANCH_RE.search(name) and 'PartitionedCall/' in name:
          # Ops of a stage function (forward or backward) in a branch.
          ops.append((line.id, name, start, end))
  return ops, spans


def TimelineFromTrace(xspace, view):
  """Boxes [stage, kind, mb, start, end] (seconds from the first) of one
  profiled step, matched to the tick table in `view` (ScheduleView)."""
  ops, spans = _Events(xspace)
  by_line = {}
  for line, s, e, it in spans:
    by_line.setdefault(line, []).append((s, e, it))
  groups = {}  # (tick, branch) -> [start, end, recompute_end]
  for line, name, s, e in ops:
    tick = None
    for ps, pe, it in by_line.get(line, []):
      if ps <= s and e <= pe:
        tick = it
    if tick is None:
      continue
    branch = int(_BRANCH_RE.search(name).group(1) or 0)
    g = groups.setdefault((tick, branch), [s, e, None, 0])
    g[0], g[1], g[3] = min(g[0], s), max(g[1], e), g[3] + 1
    if '/gradients/' not in name and 'StatefulPartitionedCall' in name:
      g[2] = max(g[2] or s, e)
  boxes = []
  for t in range(view.num_ticks):
    acts = [(kind, k, mb) for k in range(view.num_stages)
            for kind, mb in view.TickActions(t, k)]
    acts = sorted(acts, key=lambda a: (a[0] != 'F', a[1]))
    # Branches that did not run still show a few bookkeeping ops: the
    # ones that ran are those with the most ops.
    ran = sorted((b for tick, b in groups if tick == t),
                 key=lambda b: -groups[(t, b)][3])[:len(acts)]
    if len(ran) != len(acts):
      continue  # Cannot match this tick's branches to actions.
    for (kind, k, mb), b in zip(acts, sorted(ran)):
      s, e = groups[(t, b)][:2]
      boxes.append([k, kind, mb, s, e])
  if boxes:
    t0 = min(b[3] for b in boxes)
    for b in boxes:
      b[3] -= t0
      b[4] -= t0
  return boxes


def ProfileStep(step_fn, view):
  """Runs step_fn once under TensorFlow's profiler; returns (its result,
  its boxes)."""
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
  return result, TimelineFromTrace(xspace, view)


def ConfigureTensorFlow(num_devices):
  """Allocator statistics, one inter-op thread, logical CPU devices; call
  before TensorFlow initialises."""
  os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.threading.set_inter_op_parallelism_threads(1)
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  devices.EnsureDevices('cpu', num_devices)
