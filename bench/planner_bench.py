"""Planner checks: predicted against measured step memory and time, the
schedule timeline pictures, and every registered model's partition.

Each model is measured in its own subprocess (allocator statistics and one
inter-op thread are set before TensorFlow starts: planning/measure.py).
Prints markdown tables. Usage (from the repository root):

  python bench/planner_bench.py                          # accuracy table
  python bench/planner_bench.py --models=cifar10.ResNet20 --configs=2:4
  python bench/planner_bench.py --timeline_dir=docs/images --configs=2:4
  python bench/planner_bench.py --sections=registry      # partitions
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ('accuracy', 'registry')


def _StepFn(model_params, batch_size):
  """A compiled training step of the model on random data (no input
  pipeline)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  task = model_params.task.Instantiate()
  task.BuildOptimizer()
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  gen = model_params.train.Instantiate()
  shape = [batch_size] + list(gen.ImageShape())
  batch = {'image': tf.random.stateless_normal(shape, [1, 2]),
           'label': tf.random.stateless_uniform(
               [batch_size], [3, 4], 0, model_params.task.num_classes,
               tf.int32),
           'weight': tf.ones([batch_size])}

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
  from gpipe_lingvo.pipeline import plan as plan_lib  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  costs = {}
  for k, m in configs:
    p = _Params(cfg, k, m)
    b = p.train.batch_size
    if b // m not in costs:
      costs[b // m] = model_plan.ModelCosts(p, b // m, measure=True)
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


def Registry(args):
  """Every registered model's partition (as configured; no trace)."""
  del args
  sys.path.insert(0, ROOT)
  from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.pipeline import partition  # pylint: disable=import-outside-toplevel
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
  ap.add_argument('--sections', default=','.join(SECTIONS))
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
  if args.worker:
    Worker(json.loads(args.worker))
    return
  print(f'# Planner checks — {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, '
        f'{platform.node()}, {os.cpu_count()} CPUs')
  t0 = time.time()
  for sec in args.sections.split(','):
    {'accuracy': Accuracy, 'registry': Registry}[sec](args)
  print(f'\nTotal time: {time.time() - t0:.0f} s')


if __name__ == '__main__':
  main()
