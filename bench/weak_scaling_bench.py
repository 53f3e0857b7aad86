"""Weak scaling of data-parallel replicas: R worker processes on this
machine, each training the whole K-stage pipeline on the same per-replica
batch (so the global batch grows with R), started by the local launcher.

    python bench/weak_scaling_bench.py [--quick] [--workers=1,2]

Examples/s are the chief's training rate (global examples per second),
measured over the log windows after the first (which includes tracing).
R=1 is the plain single-process trainer. All workers share this machine's
cores: on a machine with few cores the replicas compete for them, so the
table measures the overhead of the distribution machinery, not the speed-up
separate machines would give.
"""
import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RATE = re.compile(r'^\[w0\] step +(\d+) .* ([\d.]+) examples/s')


def Run(workers, args, logdir):
  """Chief's examples/s per log window of one launcher run."""
  text = (f'train.batch_size = {workers * args.per_replica_batch}; '
          f'task.train.log_interval_steps = {args.log_every}; '
          f'task.train.save_interval_steps = {10 * args.steps}')
  cmd = [sys.executable, '-m', 'gpipe_lingvo.distribute.launch',
         f'--workers={workers}', '--', f'--model={args.model}',
         f'--logdir={logdir}', '--mode=train', f'--max_steps={args.steps}',
         f'--model_params_override={text}']
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                     timeout=3600, env=dict(os.environ, PYTHONUNBUFFERED='1'))
  if r.returncode:
    sys.exit(f'{" ".join(cmd)} failed:\n{r.stdout[-3000:]}')
  rates = [float(m.group(2)) for m in map(_RATE.match, r.stdout.splitlines())
           if m]
  world = [l[5:] for l in r.stdout.splitlines() if l.startswith('[w0]   ')]
  return rates, world


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='digits.ConvNetPipelined')
  parser.add_argument('--per_replica_batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=120)
  parser.add_argument('--log_every', type=int, default=20)
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--quick', action='store_true',
                      help='A short run that only checks the script works.')
  args = parser.parse_args()
  if args.quick:
    args.steps, args.log_every = 30, 10
  tmp = tempfile.mkdtemp(prefix='weak_scaling_')
  rows = []
  try:
    for r in [int(w) for w in args.workers.split(',')]:
      rates, world = Run(r, args, os.path.join(tmp, f'r{r}'))
      timed = rates[1:]  # the first window includes tracing
      if not timed:
        sys.exit('Too few log windows; raise --steps or lower --log_every.')
      # Windows hold equal numbers of examples: the overall rate is the
      # harmonic mean of the window rates.
      rate = len(timed) / sum(1.0 / x for x in timed)
      rows.append((r, rate, world))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  base = rows[0][1] / rows[0][0]
  print(f'# weak scaling, {args.model}, per-replica batch '
        f'{args.per_replica_batch}, {args.steps} steps '
        f'({datetime.date.today()}, {platform.node()}, {os.cpu_count()} '
        f'cores, python {platform.python_version()})')
  print(f'# command: python bench/weak_scaling_bench.py '
        f'{" ".join(sys.argv[1:])}')
  for line in rows[-1][2]:
    print(f'# largest world: {line.strip()}')
  print('| workers R | global batch | examples/s | per replica | '
        'efficiency vs R=1 |')
  print('|---|---|---|---|---|')
  for r, rate, _ in rows:
    print(f'| {r} | {r * args.per_replica_batch} | {rate:.1f} | '
          f'{rate / r:.1f} | {rate / r / base:.2f} |')
  print(f'# {os.cpu_count()} cores shared by all workers: with more '
        'workers than cores allow, efficiency < 1 measures core contention '
        'plus the cross-worker sums, not what separate machines would give.')


if __name__ == '__main__':
  main()
