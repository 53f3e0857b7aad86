"""Measuring a real training step to check a plan: peak memory, step time
and a per-action timeline from TensorFlow's profiler.

Memory: the allocator's peak bytes of one step above the bytes in use just
before it (`tf.config.experimental.get_memory_info`), the median of several
steps. Inter-op scheduling changes the order of independent ops and so the
peak; one inter-op thread makes it repeatable, and the CPU allocator only
keeps statistics when it is the BFC allocator (TF_CPU_ALLOCATOR_USE_BFC)
or oneDNN's; both must be set before TensorFlow starts, so
`python -m gpipe_lingvo.planning.measure` does it and runs each
configuration in this fresh process.

Timeline: the profiled step's op events are grouped by clock tick (the
executor loop's iteration number) and by the branch (`cond_N/then`) each
stage action runs in; in each tick the branches that ran, in their order
in the graph, are the tick table's forwards then backwards in stage order.
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys
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


def _StepFn(model_params, batch_size):
  """A compiled training step of the model on random data (no input
  pipeline), and the task."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  task = model_params.task.Instantiate()
  task.BuildOptimizer()
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  gen = model_params.train.Instantiate()
  shape = [batch_size] + list(gen.ImageShape())
  num_classes = model_params.task.num_classes
  batch = {'image': tf.random.stateless_normal(shape, [1, 2]),
           'label': tf.random.stateless_uniform(
               [batch_size], [3, 4], 0, num_classes, tf.int32),
           'weight': tf.ones([batch_size])}

  @tf.function
  def Step():
    return task.TrainStep(batch, step)[0]['total_loss']

  return lambda: Step().numpy(), task


def CheckConfigs(model, configs, batch_size=None, reps=3, timeline_dir=''):
  """Plans and measures `model` at each (K, M): a list of dicts. Runs in a
  process whose TensorFlow is configured by main()."""
  from gpipe_lingvo import hyperparams  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.pipeline import schedule_view  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import plot  # pylint: disable=import-outside-toplevel
  out = []
  costs_cache = {}
  for k, m in configs:
    p = model_registry.GetParams(model)
    text = f'task.network.num_stages = {k}\ntask.network.num_micro_batches = {m}'
    if batch_size:
      text += f'\ntrain.batch_size = {batch_size}'
    hyperparams.ApplyOverrides(p, text)
    b = p.train.batch_size
    if b // m not in costs_cache:
      costs_cache[b // m] = model_plan.ModelCosts(p, b // m, measure=True)
    plan = model_plan.PlanModel(p, costs=costs_cache[b // m])
    step_fn, _ = _StepFn(p, b)
    peak, secs = MeasureStep(step_fn, reps)
    row = {'model': model, 'k': k, 'm': m, 'batch': b,
           'predicted_bytes': plan['step_activation_peak_bytes'],
           'measured_bytes': peak, 'predicted_s': plan['step_s'],
           'measured_s': secs}
    if timeline_dir:
      view = schedule_view.ScheduleView(plan['schedule'], k, m)
      _, boxes = ProfileStep(step_fn, view)
      row['timeline'] = plot.Timeline(
          plan, os.path.join(timeline_dir, f'timeline_k{k}_m{m}.png'), boxes)
    out.append(row)
    print('RESULT ' + json.dumps(row), flush=True)
  return out


def ConfigureTensorFlow(num_devices):
  """Allocator statistics, one inter-op thread, logical CPU devices; call
  before TensorFlow initialises."""
  os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.threading.set_inter_op_parallelism_threads(1)
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  devices.EnsureDevices('cpu', num_devices)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--model', required=True)
  ap.add_argument('--configs', required=True, help='K:M,K:M,...')
  ap.add_argument('--batch_size', type=int, default=0)
  ap.add_argument('--reps', type=int, default=3)
  ap.add_argument('--timeline_dir', default='')
  args = ap.parse_args(argv)
  configs = [tuple(int(x) for x in c.split(':'))
             for c in args.configs.split(',')]
  ConfigureTensorFlow(max(k for k, _ in configs))
  CheckConfigs(args.model, configs, args.batch_size or None, args.reps,
               args.timeline_dir)


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))))
  main()
