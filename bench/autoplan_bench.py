"""The configuration search against measurement.

For each model, on 2 logical CPU devices: every configuration of a grid
(K in {1, 2}; M; schedules with their virtual stages; remat 'never' /
'always'; the exact cut of each under the budget) is planned and measured
as the trainer runs it (task.TrainStep in a tf.function, default threads,
the network's default execution; the BFC allocator only to read the
peak). At three budgets (none, tight, very tight) the bench reports the
search's choice against the best measured configuration that fits, the
Spearman rank correlation of predicted and measured throughput over the
configurations that fit, the choice's measured peak against the budget,
and the speedup over a Megatron-style default (M = 4K, 1f1b, recompute
only if it would not fit otherwise, cut balancing parameters).

Throughput on a shared host: its load drifts over minutes, so measuring
the configurations one after another measures the drift (the same work,
K=2 M=1 under four schedules, once spanned 237-422 examples/s). Every
configuration's step is built (and traced) first and kept alive, then all
are measured in --rounds interleaved rounds, each in a fresh random order
(fixed seed), --steps steps per configuration a round; a configuration's
step time is the median over rounds of its round's median
(measure.InterleavedSteps), its peak the largest over all its steps (as
bench/planner_bench.py reads a peak: a budget must hold every step). With
--batch_configs=N (models too large to hold every step at once) the
configurations are built and interleaved N at a time: batches are measured
one after another, so drift between batches is not removed. Per model the
table's last lines give the host's split ratio the search breaks ties
with (auto.SplitRatio: the trainer's step at M=1 on two devices over one)
and the measured spread of identical work (K=2 M=1 over the schedules)
as a noise figure.

Each model runs in its own subprocess. Usage (from the repository root):

  python bench/autoplan_bench.py --models=cifar10.ResNet20 --rounds=5 \
      --steps=2
  python bench/autoplan_bench.py --models=cifar10.AmoebaNetD_6_32 \
      --rows --rounds=3 --batch_configs=10 --grid_m=1,4
  python bench/autoplan_bench.py --sections=search_time
  python bench/autoplan_bench.py --sections=steps \
      --models=cifar10.ResNet20,cifar10.AmoebaNetD_6_32

The steps section times what the search scales its cell times to: the
trainer's step with the network on one stage, one micro-batch
(planning/resolve.TrainStepAt) beside a plain forward and backward of the
same batch, at both sizes the search traces, and the line through them
(auto.StepFit).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ('grid', 'search_time', 'steps')
DEVICES = 2
# (schedule, v) pairs of the grid at K = 2; K = 1 runs gpipe only.
GRID_SCHEDULES = (('gpipe', 1), ('1f1b', 1), ('zb_h1', 1),
                  ('interleaved_1f1b', 2), ('zb_v', 2))
GRID_M = (1, 2, 4, 8, 16)


def Spearman(xs, ys) -> float:
  """Rank correlation (average ranks for ties)."""
  def Ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
      j = i
      while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
        j += 1
      for t in range(i, j + 1):
        ranks[order[t]] = (i + j) / 2
      i = j + 1
    return ranks
  rx, ry = Ranks(xs), Ranks(ys)
  mx, my = statistics.mean(rx), statistics.mean(ry)
  cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
  vx = sum((a - mx) ** 2 for a in rx) ** 0.5
  vy = sum((b - my) ** 2 for b in ry) ** 0.5
  return cov / (vx * vy) if vx and vy else float('nan')


# -- worker: plans and measures one model -------------------------------------

def _Key(p):
  return json.dumps([p.num_stages, p.num_micro_batches, p.schedule,
                     p.virtual_stages,
                     p.remat if isinstance(p.remat, str) else list(p.remat),
                     list(p.partition)])


class _Measurer:
  """Measures configurations of one model, each once, interleaved."""

  def __init__(self, model, data_dir, cfg, execution=''):
    self.model, self.data_dir, self.execution = model, data_dir, execution
    self.rounds, self.steps = cfg.get('rounds', 5), cfg['steps']
    self.batch_configs = cfg.get('batch_configs', 0)
    self.seed = cfg.get('seed', 0)
    self.done = {}

  def Params(self, point=None):
    from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
    import params as _  # pylint: disable=import-outside-toplevel,unused-import
    p = model_registry.GetParams(self.model)
    if self.data_dir:
      for split in ('train', 'test', 'dev'):
        if split in dict(p.IterParams()) and 'data_dir' in dict(
            p.Get(split).IterParams()):
          p.Get(split).data_dir = self.data_dir
    if point is not None:
      net = p.task.network
      net.num_stages, net.num_micro_batches = (point.num_stages,
                                               point.num_micro_batches)
      net.schedule, net.virtual_stages = point.schedule, point.virtual_stages
      net.remat = (point.remat if isinstance(point.remat, str)
                   else [bool(f) for f in point.remat])
      net.partition = list(point.partition)
      if self.execution:
        net.execution = self.execution
    return p

  def MeasureAll(self, points):
    """Measures the points not measured yet (build all, or batch_configs
    at a time, then interleaved rounds)."""
    todo = {}
    for pt in points:
      if _Key(pt) not in self.done:
        todo.setdefault(_Key(pt), pt)
    keys = list(todo)
    n = self.batch_configs or len(keys) or 1
    for i in range(0, len(keys), n):
      self._MeasureBatch({k: todo[k] for k in keys[i:i + n]})

  def _MeasureBatch(self, points):
    import gc  # pylint: disable=import-outside-toplevel
    from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import planner_bench  # pylint: disable=import-outside-toplevel
    step_fns, batch = {}, {}
    for key, point in points.items():
      p = self.Params(point)
      batch[key] = p.train.batch_size
      step_fns[key] = planner_bench._StepFn(p, batch[key])  # pylint: disable=protected-access
      step_fns[key]()  # traces; the warm-up step
    got = measure.InterleavedSteps(step_fns, self.rounds, self.steps,
                                   self.seed)
    for key, r in got.items():
      self.done[key] = (batch[key] / r.seconds, r.peak_bytes, r.seconds,
                        r.round_seconds)
    del step_fns
    gc.collect()

  def Measure(self, point):
    """(examples/s, step peak bytes above the pre-step level, seconds,
    seconds per round)."""
    self.MeasureAll([point])
    return self.done[_Key(point)]


def _Grid(searcher, num_cells, grid_m=GRID_M):
  """Every grid configuration, each with its exact cut under the budget
  (None where it does not fit)."""
  out = []
  for k in (1, 2):
    for m in grid_m:
      scheds = GRID_SCHEDULES if k == 2 else (('gpipe', 1),)
      for sched, v in scheds:
        if k * v > num_cells:
          continue
        try:
          from gpipe_lingvo.planning import schedule_view  # pylint: disable=import-outside-toplevel
          schedule_view.CheckConfig(sched, k, m, v)
        except schedule_view.ScheduleError:
          continue
        for remat in ('never', 'always'):
          out.append(((1, k, m, sched, v, remat),
                      searcher.Evaluate(1, k, m, sched, v, remat)))
  return out


def _Megatron(searcher, costs_fn):
  """M = 4K (K = all devices), 1f1b, recompute only if needed, the cut
  balancing parameters (under the budget)."""
  from gpipe_lingvo.planning import search  # pylint: disable=import-outside-toplevel
  k = DEVICES
  m = 4 * k
  space = searcher.space
  sub = search.Searcher(costs_fn, search.dataclasses.replace(
      space, partition='params'), searcher.opt, searcher.host_parallelism,
                        shared_host=searcher.shared_host,
                        overheads=searcher.overheads,
                        flops_per_s=searcher.flops_per_s)
  for remat in ('never', 'always'):
    p = sub.Evaluate(1, k, m, '1f1b', 1, remat)
    if p is not None:
      return p
  return None


def Worker(cfg):
  sys.path.insert(0, ROOT)
  os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from gpipe_lingvo.planning import plan as plan_lib  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import auto  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import search  # pylint: disable=import-outside-toplevel
  meas = _Measurer(cfg['model'], cfg.get('data_dir'), cfg,
                   cfg.get('execution', ''))
  p = meas.Params()
  p.task.network.topology.num_logical_devices = DEVICES
  # The devices and threads as trainer.py sets them from the topology.
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  devices.ConfigureFromParams(p.task)
  t0 = time.perf_counter()
  costs_at = auto.CostsAt(p, cfg['cache_dir'], print_fn=lambda *_: None)
  trace_s = time.perf_counter() - t0
  execution = cfg.get('execution') or p.task.network.execution
  action_s = auto.ActionSeconds(execution, cfg['cache_dir'])
  opt = plan_lib.Optimizer.FromTask(p.task)
  hp = auto._HostParallelism(p.task.network.topology)  # pylint: disable=protected-access
  # Sequence inputs are planned on FLOPs at the host's matmul rate.
  rate = auto.FlopsPerSecond(costs_at, p.train.batch_size, cfg['cache_dir'])
  _, step_s = auto.StepOverheads(p, cfg['cache_dir'])
  split = auto.SplitRatio(p, cfg['cache_dir'])
  more_first = auto.MoreDevicesFirst(p, cfg['cache_dir'])  # cached split

  def MakeSearcher(budget):
    space = search.Space(DEVICES, p.train.batch_size, budget,
                         schedules=tuple(s for s, _ in GRID_SCHEDULES) +
                         ('1f1b_classic',),
                         execution=execution)
    return search.Searcher(costs_at, space, opt, hp, flops_per_s=rate,
                           overheads=plan_lib.Overheads(
                               action_s=action_s, step_s=step_s),
                           more_devices_first=more_first)

  grid_m = tuple(cfg.get('grid_m') or GRID_M)
  num_cells = len(costs_at(p.train.batch_size).cells)
  free = _Grid(MakeSearcher(None), num_cells, grid_m)
  peaks = sorted(pt.peak_bytes for _, pt in free if pt is not None)
  budgets = {'none': None,
             'tight': float(peaks[len(peaks) // 2]),
             'very tight': float(peaks[len(peaks) // 5])}
  planned = []  # (budget name, bytes, grid, chosen, Megatron, search s)
  for name, budget in budgets.items():
    if cfg.get('budgets') and name not in cfg['budgets']:
      continue
    searcher = MakeSearcher(budget)
    t0 = time.perf_counter()
    chosen = searcher.Search(1)
    search_s = time.perf_counter() - t0
    grid = [pt for _, pt in _Grid(searcher, num_cells, grid_m)
            if pt is not None]
    planned.append((name, budget, grid, chosen,
                    _Megatron(searcher, costs_at), search_s))
  # Every budget's configurations measured together, each once.
  meas.MeasureAll([pt for _, _, grid, chosen, mega, _ in planned
                   for pt in grid + chosen + ([mega] if mega else [])])
  for name, budget, grid, chosen, mega, search_s in planned:
    rows = [_Row(pt, meas.Measure(pt))
            for pt in grid + chosen + ([mega] if mega else [])]
    for row in rows:
      print('ROW ' + json.dumps({'budget': name, **row}), flush=True)
    n_grid = len(grid)
    result = {'model': cfg['model'], 'budget': name, 'budget_bytes': budget,
              'grid': rows[:n_grid], 'chosen': rows[n_grid],
              'megatron': rows[n_grid + 1] if mega else None,
              'search_s': search_s, 'trace_s': trace_s,
              'split_ratio': split, 'more_devices_first': more_first}
    print('RESULT ' + json.dumps(result), flush=True)


def _Row(pt, measured):
  """A configuration's prediction beside its measurement."""
  from gpipe_lingvo.planning import plan as plan_lib  # pylint: disable=import-outside-toplevel
  ex, peak, secs, round_s = measured
  return {'config': pt.Overrides(), 'key': _Key(pt),
          'remat': pt.RematText(), 'K': pt.num_stages,
          'M': pt.num_micro_batches, 'schedule': pt.schedule,
          'v': pt.virtual_stages, 'partition': pt.partition,
          'predicted_ex_s': pt.examples_per_s,
          'predicted_peak': pt.peak_bytes,
          'predicted_step_act': pt.plan.get('step_activation_peak_bytes'),
          'static': sum(plan_lib.StaticBytes(s) for s in pt.plan['stages']),
          'measured_ex_s': ex, 'measured_step_peak': peak,
          'measured_s': secs, 'measured_round_s': round_s}


def IdenticalWorkSpread(grid):
  """[(remat, schedules, min, max measured examples/s)] over the grid rows
  at K=2 M=1 (one micro-batch: every schedule runs the same F then B, so
  the spread is measurement noise), per remat with two or more rows."""
  groups = {}
  for g in grid:
    if g['K'] == 2 and g['M'] == 1:
      groups.setdefault(g['remat'], []).append(g)
  return [(remat, [g['schedule'] for g in rows],
           min(g['measured_ex_s'] for g in rows),
           max(g['measured_ex_s'] for g in rows))
          for remat, rows in groups.items() if len(rows) > 1]


# -- driver ---------------------------------------------------------------------

def _Run(cfg, timeout=7200, prefix='RESULT '):
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(cfg)],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out, err = proc.communicate(timeout=timeout)
  if proc.returncode:
    raise RuntimeError(f'worker failed:\n{err[-3000:]}')
  return [json.loads(l[len(prefix):]) for l in out.splitlines()
          if l.startswith(prefix)]


def GridSection(args):
  print('\n### Search against a measured grid (2 logical CPU devices; '
        f'per configuration the median over {args.rounds} interleaved '
        f"rounds of {args.steps} steps; M in {','.join(map(str, args.grid_m))}"
        '; execution '
        f"{args.execution or 'default'})\n")
  print('| model | budget | configs that fit | chosen (predicted) | '
        'chosen/best measured | Spearman | chosen peak / budget | '
        'speedup over Megatron-style | search s |')
  print('|' + '---|' * 9)
  for model in args.models.split(','):
    cfg = {'model': model, 'steps': args.steps, 'rounds': args.rounds,
           'batch_configs': args.batch_configs, 'seed': args.seed,
           'cache_dir': args.cache_dir,
           'data_dir': args.data_dir, 'execution': args.execution,
           'grid_m': list(args.grid_m),
           'budgets': args.budgets.split(',') if args.budgets else None}
    results = _Run(cfg)
    for r in results:
      grid = r['grid']
      best = max(g['measured_ex_s'] for g in grid)
      ch = r['chosen']
      rho = Spearman([g['predicted_ex_s'] for g in grid],
                     [g['measured_ex_s'] for g in grid])
      if r['budget_bytes']:
        used = ch['static'] + ch['measured_step_peak']
        over = f"{used / (ch['K'] * r['budget_bytes']):.2f}"
      else:
        over = '-'
      mega = r['megatron']
      speed = (f"{ch['measured_ex_s'] / mega['measured_ex_s']:.2f}"
               if mega else 'does not fit')
      desc = (f"K={ch['K']} M={ch['M']} {ch['schedule']} v={ch['v']} "
              f"{ch['remat']} {ch['partition']}")
      print(f"| {model} | {r['budget']} | {len(grid)} | {desc} | "
            f"{ch['measured_ex_s'] / best:.2f} | {rho:.2f} | {over} | "
            f"{speed} | {r['search_s']:.2f} |", flush=True)
      if args.rows:
        for g in sorted(grid, key=lambda g: -g['measured_ex_s']):
          print(f"|  | {g['remat']} K={g['K']} M={g['M']} {g['schedule']} "
                f"v={g['v']} {g['partition']} | | predicted "
                f"{g['predicted_ex_s']:.0f} ex/s | measured "
                f"{g['measured_ex_s']:.0f} ex/s | | | | |")
    _PrintNoise(model, results)


def _PrintNoise(model, results):
  """The measured spread of identical work, from the largest grid."""
  if not results:
    return
  grid = max((r['grid'] for r in results), key=len)
  split = results[0].get('split_ratio')
  if split is not None:
    more = results[0]['more_devices_first']
    print(f'| {model} | the trainer\'s step, M=1: two devices / one '
          f'(auto.SplitRatio; ties go to {"more" if more else "fewer"}'
          f' devices) | | {split:.2f} | | | | | |', flush=True)
  for remat, scheds, lo, hi in IdenticalWorkSpread(grid):
    print(f"| {model} | identical work: K=2 M=1 {remat} over "
          f"{', '.join(scheds)} | | measured {lo:.0f}-{hi:.0f} ex/s "
          f"(max/min {hi / lo:.2f}) | | | | | |", flush=True)


def SearchTimeSection(args):
  """Search seconds for every registered model on FLOP-rate costs (the
  trace without timing; the search does the same work on timed costs)."""
  sys.path.insert(0, ROOT)
  from gpipe_lingvo import model_registry  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import resolve  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import search  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import costs as costs_lib  # pylint: disable=import-outside-toplevel
  import params as _  # pylint: disable=import-outside-toplevel,unused-import
  print('\n### Search time (cost trace cached; FLOPs at 1e10 FLOP/s; '
        'devices that compute in parallel)\n')
  print('| model | cells | devices | budget | plans evaluated | pruned | '
        'search s | choice |')
  print('|' + '---|' * 8)
  for name in args.search_models.split(','):
    p = model_registry.GetParams(name)
    if 'num_stages' not in dict(p.task.network.IterParams()):
      continue
    b = p.train.batch_size
    path = os.path.join(args.cache_dir, name + '_flops.json')
    costs = costs_lib.CachedCosts(path, name, lambda: resolve.ModelCosts(
        p, b, measure=False))
    for n in (8, 64):
      for budget in (None, 'tight'):
        bb = None
        if budget:
          w = sum(c.param_bytes for c in costs.cells) * 4
          bb = w / n * 2 + 2 * max(c.residual_bytes for c in costs.cells)
        space = search.Space(n, b, bb)
        s = search.Searcher(costs.Scaled, space, flops_per_s=1e10,
                            host_parallelism=lambda k: k)
        # Each search on its own: no tables left by the one before.
        search.ClearCaches()
        t0 = time.perf_counter()
        top = s.Search(10)
        secs = time.perf_counter() - t0
        choice = (f'K={top[0].num_stages} M={top[0].num_micro_batches} '
                  f'{top[0].schedule} {top[0].RematText()}' if top else
                  'none fits')
        print(f"| {name} | {len(costs.cells)} | {n} | "
              f"{'-' if bb is None else f'{bb / 2**20:.0f} MiB'} | "
              f'{s.evaluated} | {s.bounded} | {secs:.2f} | {choice} |',
              flush=True)


def StepsWorker(cfg):
  """auto.StepTimesAt at the search's sizes: the trainer's step on one
  stage beside a plain forward and backward, and their StepFit."""
  sys.path.insert(0, ROOT)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  from gpipe_lingvo.planning import auto  # pylint: disable=import-outside-toplevel
  p = _Measurer(cfg['model'], cfg.get('data_dir'), cfg).Params()
  p.task.network.topology.num_logical_devices = DEVICES
  devices.ConfigureFromParams(p.task)
  sizes = auto._Sizes(p)  # pylint: disable=protected-access
  times = auto.StepTimesAt(p, sizes, cfg['rounds'])
  a, c = auto.StepFit(times['plain'], times['trainer'])
  print('STEPS ' + json.dumps({'sizes': sizes, 'a': a, 'c': c, **times}),
        flush=True)


def StepsSection(args):
  print('\n### What the search scales its cell times to: the trainer\'s '
        'step on one stage (resolve.TrainStepAt) beside a plain forward and '
        f'backward, each the median of {args.rounds} interleaved rounds; '
        'the fit trainer = a * plain + c (auto.StepFit)\n')
  print('| model | examples | plain forward+backward ms | trainer\'s step, '
        'one stage ms | ratio | a | c ms |')
  print('|' + '---|' * 7)
  for model in args.models.split(','):
    cfg = {'model': model, 'section': 'steps', 'rounds': args.rounds,
           'steps': 1, 'data_dir': args.data_dir}
    for r in _Run(cfg, prefix='STEPS '):
      for b, pl, tr in zip(r['sizes'], r['plain'], r['trainer']):
        print(f"| {model} | {b} | {pl * 1e3:.1f} | {tr * 1e3:.1f} | "
              f"{tr / pl:.2f} | {r['a']:.3f} | {r['c'] * 1e3:.1f} |",
              flush=True)


def _MicroBatchCounts(text):
  """--grid_m: '1,2,4' -> (1, 2, 4), parsed and checked once."""
  if not all(x.isdigit() and int(x) > 0 for x in text.split(',')):
    raise argparse.ArgumentTypeError(
        f'{text!r}: give positive integers separated by commas, e.g. '
        '--grid_m=1,2,4')
  return tuple(int(x) for x in text.split(','))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--worker', help=argparse.SUPPRESS)
  ap.add_argument('--sections', default='grid')
  ap.add_argument('--models', default='cifar10.ResNet20')
  ap.add_argument('--search_models',
                  default='cifar10.ResNet20,cifar10.ResNet56,'
                          'cifar10.AmoebaNetD_6_32,cifar10.AmoebaNetA_18_36')
  ap.add_argument('--budgets', default='',
                  help="comma-separated subset of 'none,tight,very tight'")
  ap.add_argument('--rounds', type=int, default=5,
                  help='interleaved rounds over every configuration; a '
                  "configuration's step time is the median over rounds")
  ap.add_argument('--steps', type=int, default=2,
                  help='measured steps per configuration in each round')
  ap.add_argument('--batch_configs', type=int, default=0,
                  help='build and interleave this many configurations at a '
                  'time (0: all; for models too large to hold every step)')
  ap.add_argument('--seed', type=int, default=0,
                  help="seed of the rounds' orders")
  ap.add_argument('--grid_m', type=_MicroBatchCounts, default=GRID_M,
                  help='micro-batch counts of the grid (a smaller set '
                  'builds faster; the Megatron-style default and the '
                  "search's choice are measured whatever it holds)")
  ap.add_argument('--rows', action='store_true',
                  help='also print every grid row')
  ap.add_argument('--data_dir', default='')
  ap.add_argument('--execution', default='',
                  help="'dataflow' or 'ticks' for every configuration "
                       "('': the network's default)")
  ap.add_argument('--cache_dir',
                  default=os.path.join(tempfile.gettempdir(),
                                       'autoplan_bench_costs'))
  args = ap.parse_args()
  if args.worker:
    cfg = json.loads(args.worker)
    (StepsWorker if cfg.get('section') == 'steps' else Worker)(cfg)
    return
  if args.rounds < 1 or args.steps < 1 or args.batch_configs < 0:
    ap.error('--rounds and --steps must be >= 1, --batch_configs >= 0')
  print(f"autoplan_bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f", {platform.machine()} {os.cpu_count()}-core, python "
        f"{platform.python_version()}")
  for section in args.sections.split(','):
    {'grid': GridSection, 'search_time': SearchTimeSection,
     'steps': StepsSection}[section](args)


if __name__ == '__main__':
  main()
