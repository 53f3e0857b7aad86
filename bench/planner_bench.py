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


def Worker(cfg):
  """Plans and measures one model at each (K, M); prints RESULT lines."""
  sys.path.insert(0, ROOT)
  from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
  configs = [tuple(c) for c in cfg['configs']]
  measure.ConfigureTensorFlow(max(k for k, _ in configs))
  from gpipe_lingvo import hyperparams  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import plot  # pylint: disable=import-outside-toplevel
  costs = {}
  for k, m in configs:
    p = model_registry.GetParams(cfg['model'])
    text = (f'task.network.num_stages = {k}\n'
            f'task.network.num_micro_batches = {m}')
    if cfg.get('batch'):
      text += f"\ntrain.batch_size = {cfg['batch']}"
    hyperparams.ApplyOverrides(p, text)
    b = p.train.batch_size
    if b // m not in costs:
      costs[b // m] = model_plan.ModelCosts(p, b // m, measure=True)
    plan = model_plan.PlanModel(p, costs=costs[b // m])
    step_fn = _StepFn(p, b)
    peak, secs = measure.MeasureStep(step_fn, cfg.get('reps', 3))
    row = {'model': cfg['model'], 'k': k, 'm': m, 'batch': b,
           'predicted_bytes': plan['step_activation_peak_bytes'],
           'measured_bytes': peak, 'predicted_s': plan['step_s'],
           'measured_s': secs}
    if cfg.get('timeline_dir'):
      _, boxes = measure.ProfileStep(step_fn, model_plan.Pipeline(p).Table())
      name = cfg['model'].replace('.', '_') + f'_k{k}_m{m}'
      row['pictures'] = [
          plot.Timeline(plan, os.path.join(cfg['timeline_dir'],
                                           f'{name}_timeline.png'), boxes),
          plot.MemoryAndTime(plan, os.path.join(cfg['timeline_dir'],
                                                f'{name}_memory.png'))]
    print('RESULT ' + json.dumps(row), flush=True)


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
  print('| model | K | M | batch | predicted MiB | measured MiB | ratio | '
        'predicted ms | measured ms | ratio |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for model in args.models.split(','):
    cfg = dict(model=model, configs=configs, batch=args.batch,
               timeline_dir=args.timeline_dir)
    for r in Collect(Run(cfg)):
      print(f"| {model} | {r['k']} | {r['m']} | {r['batch']} | "
            f"{r['predicted_bytes'] / 2**20:.1f} | "
            f"{r['measured_bytes'] / 2**20:.1f} | "
            f"{r['predicted_bytes'] / r['measured_bytes']:.2f} | "
            f"{r['predicted_s'] * 1e3:.0f} | {r['measured_s'] * 1e3:.0f} | "
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
