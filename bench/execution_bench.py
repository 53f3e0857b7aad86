"""Graph build of the two executions as the actions per step grow.

`execution = 'auto'` runs `dataflow` (every action unrolled into one graph)
up to executor.AUTO_DATAFLOW_MAX_ACTIONS actions per step and the tick loop
above. This bench measures what sets that threshold: at K = 8 (8 logical
CPU devices), for M up to 32, the trace time, trace + first run, the graph
nodes, the process's resident high-water mark after the first run, and the
median step, of `dataflow` against `ticks`, each configuration in its own
process (bench/pipeline_bench.py's worker). Prints a markdown table.

  python bench/execution_bench.py
  python bench/execution_bench.py --schedules=1f1b,zb_h1 --m=4,8,16,32
"""
import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline_bench  # pylint: disable=g-import-not-at-top,wrong-import-position


def Actions(schedule: str, k: int, m: int) -> int:
  sys.path.insert(0, pipeline_bench.ROOT)
  from gpipe_lingvo.pipeline import schedule as schedule_lib  # pylint: disable=import-outside-toplevel
  return sum(len(a) for a in schedule_lib.Build(schedule, k, m, 1).actions)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--k', type=int, default=8)
  ap.add_argument('--m', default='4,8,16,32')
  ap.add_argument('--schedules', default='1f1b,zb_h1')
  ap.add_argument('--blocks', type=int, default=16,
                  help='conv blocks of the deep conv net (K <= blocks + 2)')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--reps', type=int, default=3)
  args = ap.parse_args()
  print(f"execution_bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f', {platform.machine()} {os.cpu_count()}-core, python '
        f'{platform.python_version()}; deep conv net ({args.blocks} '
        f'conv-BN-relu-depthwise-BN blocks, 16x16x3), batch {args.batch}, '
        f'K={args.k}, remat never\n')
  print('| schedule | M | actions | execution | trace s | trace + first run s '
        '| graph nodes | max RSS MiB (above start) | step ms |')
  print('|' + '---|' * 9)
  for sched in args.schedules.split(','):
    for m in (int(x) for x in args.m.split(',')):
      n = Actions(sched, args.k, m)
      for execution in ('dataflow', 'ticks'):
        r = pipeline_bench.Run(dict(
            net='deepconv', cells=args.blocks, width=32, batch=args.batch,
            kind='pipe', k=args.k, m=m, schedule=sched, remat='never',
            execution=execution, reps=args.reps), timeout=900)
        print(f"| {sched} | {m} | {n} | {execution} | {r['trace_s']:.1f} | "
              f"{r['build_s']:.1f} | {r['graph_nodes']} | "
              f"{r['build_rss_mib'] - r['rss0_mib']:.0f} | "
              f"{r['step_s'] * 1e3:.0f} |", flush=True)


if __name__ == '__main__':
  main()
