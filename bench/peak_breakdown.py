"""What is live at a training step's allocator peak, against the plan.

The plan counts the bytes each tensor asks for. The BFC allocator hands out
blocks and counts whole blocks in use: a free block smaller than twice a
request is given whole, not split. This script profiles one step of a
registered model at (K, M) and prints, at the moment the allocator's bytes
in use peak: the bytes the live tensors asked for, the blocks they hold,
and the plan's prediction (`--mode=plan --plan_measure` costs), then the
live bytes by action, by kind (recomputed forward, backward, made outside
the actions, ...) and the largest live tensors. Usage:

  python bench/peak_breakdown.py --model=cifar10.AmoebaNetD_6_32 --k=4 --m=4
  python bench/peak_breakdown.py --model=freebible.TransformerLmPipelined \
      --k=2 --m=4 --data_dir=D   # D: python -m tasks.prepare_data

The step is bench/planner_bench.py's (one fixed batch, one inter-op thread,
the BFC allocator on the CPU), run twice before the profiled step. The
plan's figure is without the input pipeline's prefetched batches (the
harness has none); beside it, the plan's own allocator simulation
(planning/allocator.py on the traced ops) and the same simulator fed the
profiled step's real requests.
"""
import argparse
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2.0**20


def _ProfiledStep(step_fn):
  """(bytes in use before the step, measure.PeakLive of the step, the
  step's allocator events)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
  base = tf.config.experimental.get_memory_info('CPU:0')['current']
  _, xspace = measure.ProfiledXSpace(step_fn)
  return base, measure.HighestPeak(xspace), measure.AllocatorEvents(xspace)


def _Replayed(events) -> float:
  """Peak blocks of the profiled step's own requests replayed through
  planning/allocator.py (ReplayTwice, as the plan replays its step): does
  the simulated allocator reproduce the real one on the real sequence?
  Frees of blocks taken before the profile are skipped; what the step
  leaves allocated stays."""
  from gpipe_lingvo.planning import allocator  # pylint: disable=import-outside-toplevel
  seq, live = [], set()
  for _, name, st in events:
    addr = st.get('addr')
    if name == 'MemoryAllocation':
      live.add(addr)
      seq.append(('a', addr, st.get('requested_bytes', 0)))
    elif addr in live:
      live.discard(addr)
      seq.append(('f', addr, 0))
  return allocator.ReplayTwice(seq)[0]


def _Kind(op: str) -> str:
  """What made a live tensor, from its op's name: the executor's actions
  are scoped action_<chunk><kind>/mb<i>/ (pipeline/dataflow.py), a
  recomputing B reruns the forward under recompute/, tf.gradients names
  its ops gradients/; anything else ran outside the pipeline's actions
  (the step's own ops: the weight decay's gradients among them)."""
  if not op.startswith('action_'):
    return 'outside the actions (' + op.split('/')[0].rstrip('_0123456789') + ')'
  if '/recompute/' in op:
    return 'recomputed forward'
  if '/gradients/' in op:
    return 'backward'
  if 'AssignAddVariableOp' in op:
    return 'accumulator update (a copy when its buffer is shared)'
  return 'forward and other action ops'


def _Totals(live, key_fn):
  """{key_fn(op name): [bytes asked, bytes held, tensors]} over the live
  tensors' allocation records."""
  out = collections.defaultdict(lambda: [0, 0, 0])
  for s in live.values():
    t = out[key_fn(str(s.get('tf_op', '')))]
    t[0] += s.get('requested_bytes', 0)
    t[1] += s.get('allocation_bytes', 0)
    t[2] += 1
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--model', required=True)
  ap.add_argument('--k', type=int, required=True)
  ap.add_argument('--m', type=int, required=True)
  ap.add_argument('--top', type=int, default=12)
  ap.add_argument('--data_dir', default='',
                  help='a token task reads one real batch from here')
  args = ap.parse_args(argv)
  sys.path.insert(0, ROOT)
  sys.path.insert(0, os.path.join(ROOT, 'bench'))
  from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
  measure.ConfigureTensorFlow(args.k)
  import params as _  # pylint: disable=import-outside-toplevel,unused-import
  import planner_bench  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import resolve  # pylint: disable=import-outside-toplevel
  p = planner_bench._Params({'model': args.model}, args.k, args.m)  # pylint: disable=protected-access
  if args.data_dir:
    p.train.data_dir = args.data_dir
  b = p.train.batch_size
  costs = resolve.ModelCosts(p, b // args.m, measure=True)
  plan = model_plan.PlanModel(p, costs=costs)
  planned = plan['step_activation_peak_bytes'] - plan['prefetch_bytes']
  simulated = plan['allocator_blocks_bytes']
  step_fn = planner_bench._StepFn(p, b)  # pylint: disable=protected-access
  step_fn()
  step_fn()
  base, peak_live, events = _ProfiledStep(step_fn)
  peak, asked, held, live = peak_live
  mib = lambda n: '-' if n is None else f'{n / MIB:.1f}'
  print(f'{args.model} K={args.k} M={args.m} batch {b}')
  print('| planned MiB | the plan\'s simulated allocator blocks MiB | '
        'peak above the pre-step level MiB | live tensors asked MiB | '
        'blocks they hold MiB | the step\'s requests replayed through the '
        'simulated allocator MiB |')
  print('|---|---|---|---|---|---|')
  print(f'| {mib(planned)} | {mib(simulated)} | {mib(peak - base)} | '
        f'{mib(asked)} | {mib(held)} | {mib(_Replayed(events))} |')
  by_action = _Totals(live, lambda op: op.split('/')[0])
  print('\nlive at the peak by action (asked / held MiB):')
  for key, (a, h, _) in sorted(by_action.items(), key=lambda kv: -kv[1][1])[
      :args.top]:
    print(f'  {a / MIB:8.2f} {h / MIB:8.2f}  {key}')
  by_kind = _Totals(live, _Kind)
  print('\nlive at the peak by kind (asked / held MiB, tensors):')
  for key, (a, h, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
    print(f'  {a / MIB:8.2f} {h / MIB:8.2f} {n:6d}  {key}')
  print('\nlargest live tensors (asked / held MiB):')
  for s in sorted(live.values(), key=lambda s: -s.get('allocation_bytes', 0))[
      :args.top]:
    print(f"  {s.get('requested_bytes', 0) / MIB:8.2f} "
          f"{s.get('allocation_bytes', 0) / MIB:8.2f}  {s.get('tf_op')} "
          f"{s.get('shape')} {s.get('region_type')}")


if __name__ == '__main__':
  main()
