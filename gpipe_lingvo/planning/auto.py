"""'auto' pipeline fields, resolved by the configuration search.

A PipelinedNetwork's num_stages, num_micro_batches, schedule,
virtual_stages, remat, partition and execution may be 'auto': the trainer
calls `Resolve` at start, which searches (planning/search.py) over the auto
fields (the others stay as set) on the devices the topology gives and the
training batch, writes the choice into the params and prints it.
`trainer.py --mode=plan --search` runs the same search over every field
(`RunSearchMode`) and prints the top ten.

Costs: the cells are traced and timed once at two micro-batch sizes (the
whole batch and an eighth of it) and cached as JSON; cell times at other
sizes are interpolated linearly between them (a per-op overhead plus a
per-example cost), bytes scale with the micro-batch. Each size's cell
times add up to a plain forward and backward at that size times a factor,
and each step pays a constant besides: both from the line through the
trainer's step on one stage against the plain forward and backward at the
two sizes (`StepFit`), which are timed in interleaved rounds
(`StepTimesAt`), not one after the other. Where logical devices share a
host's cores, predictions within search.TIE_BAND of the fastest go to
more devices or to fewer as the host measured a step split over two
devices against one (`SplitRatio`).
"""
import dataclasses
import hashlib
import json
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from gpipe_lingvo import errors
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.planning import plan as plan_lib
from gpipe_lingvo.planning import resolve
from gpipe_lingvo.planning import search as search_lib

AUTO = params_check.AUTO
COSTS_FILE = 'search_costs.json'


class SearchError(errors.UserError, ValueError):
  """No configuration fits; the message says what was searched."""


def AutoFields(net) -> List[str]:
  values = dict(net.IterParams())
  return [f for f in params_check.AUTO_FIELDS if values.get(f) == AUTO]


def NumDevices(topology) -> int:
  """Devices the search may use: the topology's logical devices (CPU), the
  GPUs present (GPU), else 1."""
  if topology.num_logical_devices:
    return int(topology.num_logical_devices)
  if topology.device_type == 'gpu':
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return max(1, len(tf.config.list_physical_devices('GPU')))
  return 1


def Budget(topology) -> Optional[float]:
  b = topology.memory_budget_bytes
  if isinstance(b, (list, tuple)):
    b = min(b) if b else 0
  if b and b < 0:
    raise SearchError(f'topology.memory_budget_bytes must be >= 0, got {b}.')
  return float(b) if b else None


def _Interpolated(lo, hi, micro):
  """Costs at `micro` from traces at two micro-batch sizes: bytes and FLOPs
  scaled from the larger, times on the line through both."""
  out = hi.Scaled(micro)
  if lo.batch == hi.batch or hi.cells[0].fwd_s is None:
    return out
  t = (micro - lo.batch) / (hi.batch - lo.batch)
  cells = []
  for c, a, b in zip(out.cells, lo.cells, hi.cells):
    vals = {k: max(getattr(a, k) + t * (getattr(b, k) - getattr(a, k)),
                   getattr(a, k) * 0.5 if micro < lo.batch else 0.0)
            for k in ('fwd_s', 'bwd_s', 'bwd_w_s')}
    cells.append(dataclasses.replace(c, **vals))
  return dataclasses.replace(out, cells=cells)


def TimesCells(model_params) -> bool:
  """Whether the cells are timed on this host (on the input's
  StandInBatch: images or token rows). An input that gives batch shapes
  only (SHAPES_ONLY: the paper's Transformer sizes, built for accelerators
  this host does not have) is planned on FLOPs at the host's measured
  matmul rate."""
  return not model_params.train.cls.SHAPES_ONLY


def _Sizes(model_params) -> List[int]:
  """The micro-batch sizes the search traces: the batch and an eighth of
  it when the cells are timed, else the batch."""
  batch = model_params.train.batch_size
  return (sorted({batch, max(1, batch // 8)}) if TimesCells(model_params)
          else [batch])


def CostsAt(model_params, cache_dir: str = '',
            print_fn=print) -> Callable[[int], costs_lib.NetworkCosts]:
  """costs_at(micro_batch) for the search: two traces (timed unless the
  input gives shapes only), cached; their cell times scaled to a plain
  forward and backward at each size times StepFit's factor."""
  sizes = _Sizes(model_params)
  traced = [resolve.ModelCosts(
      model_params, b, measure=TimesCells(model_params),
      cache_path=os.path.join(cache_dir, f'{b}_' + COSTS_FILE)
      if cache_dir else '', print_fn=print_fn) for b in sizes]
  lo, hi = traced[0], traced[-1]
  if lo.batch != hi.batch:
    times = StepTimes(model_params, cache_dir)
    a, _ = StepFit(times['plain'], times['trainer'])
    lo = lo.TimesScaledTo(a * times['plain'][0])
    hi = hi.TimesScaledTo(a * times['plain'][-1])
  return lambda micro: _Interpolated(lo, hi, micro)


def StepTimes(model_params, cache_dir: str = '') -> Dict[str, List[float]]:
  """StepTimesAt at the search's sizes, cached in cache_dir."""
  sizes = _Sizes(model_params)
  return _HostValue(cache_dir, 'step_times', _StepKey(model_params, sizes),
                    lambda: StepTimesAt(model_params, sizes))


def _StepKey(model_params, *extra) -> str:
  """Cache key of a value measured on the trainer's one-stage step: what
  the step runs, not the pipeline fields (the same for every
  configuration, so a plan and the search share one measurement)."""
  one = resolve.OneStage(model_params, model_params.train.batch_size)
  return hashlib.sha1(str([one.task.ToText(), one.train.ToText(), *extra,
                           os.cpu_count()]).encode()).hexdigest()


def StepTimesAt(model_params, sizes: Sequence[int],
                rounds: int = 7) -> Dict[str, List[float]]:
  """Seconds of a plain forward and backward (resolve.ForwardBackwardStep,
  'plain') and of the trainer's step on one stage (resolve.TrainStepAt,
  'trainer') at each size of `sizes`, all timed in interleaved rounds
  (measure.InterleavedSteps): timed one after the other, a slow spell of
  a shared host falls on one of them and bends the line through the sizes
  (a 128-example ResNet-20 step once timed 1.55x its time on a quiet
  host, beside an undisturbed 16-example one, and the search predicted
  throughput rising with M where it falls)."""
  steps = {}
  for b in sizes:
    steps[('plain', b)] = resolve.ForwardBackwardStep(model_params, b)
    steps[('trainer', b)] = resolve.TrainStepAt(model_params, b)
  got = _InterleavedSeconds(steps, rounds)
  return {kind: [got[(kind, b)] for b in sizes]
          for kind in ('plain', 'trainer')}


def _InterleavedSeconds(steps: Dict[object, Callable[[], object]],
                        rounds: int) -> Dict[object, float]:
  """Each step's seconds (after one warm-up call that traces it), the
  median over `rounds` rounds that run every step once in a shuffled
  order (measure.InterleavedSteps)."""
  from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
  for fn in steps.values():
    fn()

  def Timed(fn):
    t0 = time.perf_counter()
    fn()
    return 0, time.perf_counter() - t0

  got = measure.InterleavedSteps(steps, rounds, 1, measure_fn=Timed)
  return {k: r.seconds for k, r in got.items()}


def StepFit(plain: Sequence[float], trainer: Sequence[float]
            ) -> Tuple[float, float]:
  """(a, c) with trainer = a * plain + c through the sizes' times: a is
  the cells' work as the trainer's step runs it (the pipeline's stage
  functions) against one plain forward and backward, c what a step pays
  once whatever M (what runs outside the cells: the update among it).
  One size, or a line with c < 0 (noise): c = 0 and a the mean ratio."""
  if len(plain) > 1 and plain[-1] != plain[0]:
    a = (trainer[-1] - trainer[0]) / (plain[-1] - plain[0])
    c = trainer[0] - a * plain[0]
    if a > 0 and c >= 0:
      return a, c
  return statistics.mean(t / p for t, p in zip(trainer, plain)), 0.0


def StepOverheads(model_params, cache_dir: str = '') -> Tuple[float, float]:
  """StepFit of the model on this host ((1, 0) when its cells are not
  timed, FLOPs having no such measure, or the network is not a
  pipeline)."""
  if not (TimesCells(model_params) and
          resolve.IsPipelined(model_params.task.network)):
    return 1.0, 0.0
  times = StepTimes(model_params, cache_dir)
  return StepFit(times['plain'], times['trainer'])


def SplitRatio(model_params, cache_dir: str = '') -> Optional[float]:
  """The trainer's step split over two logical CPU devices (one
  micro-batch of the full batch, the cells cut in two by count) over the
  same step on one, timed in interleaved rounds; cached in cache_dir.
  Above 1 the split costs on this host, below it the host overlaps the
  two devices' work. None where not measured: not a CPU topology, fewer
  than two cells or two logical devices, cells not timed."""
  net = model_params.task.network
  if (net.topology.device_type != 'cpu' or not resolve.IsPipelined(net)
      or len(net.cells) < 2 or not TimesCells(model_params) or
      len(tf.config.list_logical_devices('CPU')) < 2):
    return None
  batch = model_params.train.batch_size

  def _Measure(rounds=7):
    got = _InterleavedSeconds(
        {k: resolve.TrainStepAt(model_params, batch, k) for k in (1, 2)},
        rounds)
    return got[2] / got[1]

  return _HostValue(cache_dir, 'split_ratio', _StepKey(model_params),
                    _Measure)


def MoreDevicesFirst(model_params, cache_dir: str = '') -> bool:
  """Whether near-equal predictions go to more devices (search.Order):
  unless this host measured the step slower split over two devices
  (SplitRatio; the plan of a shared host sees neither the overlap nor
  the cost of the split, and hosts differ: docs/search.md)."""
  ratio = SplitRatio(model_params, cache_dir)
  return ratio is None or ratio < 1.0


# Values measured without a cache_dir, kept for the process.
_MEMO: Dict[Tuple[str, str], object] = {}


def _HostValue(cache_dir: str, name: str, key: str,
               measure_fn: Callable[[], object]) -> object:
  """A value measured on this host, cached in cache_dir/<name>.json under
  `key` (remeasured when the key differs: another host or setting), or
  for the process when cache_dir is empty."""
  if not cache_dir and (name, key) in _MEMO:
    return _MEMO[(name, key)]
  path = os.path.join(cache_dir, name + '.json') if cache_dir else ''
  if path and os.path.exists(path):
    with open(path) as f:
      d = json.load(f)
    if d.get('key') == key and 'value' in d:
      return d['value']
  value = measure_fn()
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    with open(path, 'w') as f:
      json.dump({'key': key, 'value': value}, f)
  else:
    _MEMO[(name, key)] = value
  return value


def FlopsPerSecond(costs_at, batch: int, cache_dir: str = ''
                   ) -> Optional[float]:
  """None when the costs carry measured times; else the host's matmul
  rate (model_plan.MatmulFlopsPerSecond, cached in cache_dir), which turns
  the cells' FLOPs into seconds."""
  if costs_at(batch).cells[0].fwd_s is not None:
    return None
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  return _HostValue(cache_dir, 'matmul_rate', f'matmul|{os.cpu_count()}',
                    model_plan.MatmulFlopsPerSecond)


def ActionSeconds(execution: str, cache_dir: str = '', reps: int = 10
                  ) -> float:
  """The executor's cost per action on this host (a call, its buffer
  reads and writes): a one-stage, 8-micro-batch training step of a tiny
  dense layer under `execution`, over its 16 actions (its own work is
  negligible). Cached in cache_dir."""
  def _Measure() -> float:
    from gpipe_lingvo.planning import measure  # pylint: disable=import-outside-toplevel
    m = 8
    pipe = plan_lib.Pipeline('gpipe', 1, m, (False,) * m, 1, execution)
    secs, table = measure.TinyStepSeconds(pipe, reps=reps)
    return secs / sum(len(a) for a in table.actions)

  return _HostValue(cache_dir, f'action_{execution}',
                    f'{execution}|{os.cpu_count()}', _Measure)


def _Fixed(value):
  return None if value == AUTO else (value,)


def SpaceOf(model_params, search_all: bool = False,
            num_devices: int = 0) -> search_lib.Space:
  """The search space of a model: every field when search_all, else the
  auto fields (the others fixed at their values)."""
  net = model_params.task.network
  topo = net.topology
  free = set(params_check.AUTO_FIELDS) if search_all else set(AutoFields(net))
  pick = lambda f: None if f in free else _Fixed(getattr(net, f))
  remat = (search_lib.POLICIES + (search_lib.CELLS,) if 'remat' in free
           else (params_check.ParseList(net.remat),))
  if remat and not isinstance(remat[0], str):
    remat = (tuple(remat[0]),)
  schedules = (tuple(search_lib.schedule_view.SCHEDULES)
               if 'schedule' in free else (net.schedule,))
  return search_lib.Space(
      num_devices=num_devices or NumDevices(topo),
      batch_size=model_params.train.batch_size,
      budget_bytes=Budget(topo),
      num_stages=pick('num_stages'),
      num_micro_batches=pick('num_micro_batches'),
      schedules=schedules,
      virtual_stages=pick('virtual_stages'),
      remat=remat,
      partition='auto' if 'partition' in free else net.partition,
      execution='auto' if 'execution' in free else net.execution)


def _HostParallelism(topo):
  cpu = topo.device_type == 'cpu'
  threads = topo.intra_op_threads
  return lambda k: (min(k, os.cpu_count() or 1) if cpu and threads == 1
                    else 1.0)


def _PrefetchBytes(model_params) -> int:
  """The input batches a CPU host holds during a step, as --mode=plan
  counts them."""
  from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
  if model_params.task.network.topology.device_type != 'cpu':
    return 0
  return model_plan.PREFETCHED_BATCHES * model_plan.InputBatchBytes(
      model_params)


def Execution(point: search_lib.Point) -> str:
  """The execution the point was planned for (the runtime's 'auto' rule:
  dataflow unless the unrolled graph would hold too many actions)."""
  return point.execution


def Search(model_params, cache_dir='', search_all=False, num_devices=0,
           top=10, print_fn=print):
  """(points fastest first, search seconds without the cost traces,
  the searcher)."""
  net = model_params.task.network
  space = SpaceOf(model_params, search_all, num_devices)
  costs_at = CostsAt(model_params, cache_dir, print_fn)
  opt = plan_lib.Optimizer.FromTask(model_params.task)
  _, step_s = StepOverheads(model_params, cache_dir)
  searcher = search_lib.Searcher(
      costs_at, space, opt, _HostParallelism(net.topology),
      overheads=plan_lib.Overheads(step_s=step_s),
      flops_per_s=FlopsPerSecond(costs_at, space.batch_size, cache_dir),
      shared_host=net.topology.device_type == 'cpu',
      action_s=ActionSeconds('dataflow', cache_dir),
      plan_kwargs={'prefetch_bytes': _PrefetchBytes(model_params)})
  if searcher.band and space.num_devices > 1 and space.num_stages is None:
    # Only here can near-equal predictions differ in their device count.
    searcher.more_devices_first = MoreDevicesFirst(model_params, cache_dir)
  t0 = time.perf_counter()
  points = searcher.Search(top)
  seconds = time.perf_counter() - t0
  if not points:
    budget = space.budget_bytes
    raise SearchError(
        f'no configuration of {model_params.model} fits {space.num_devices} '
        f'device(s)' + (f' of {budget / 2**20:.1f} MiB' if budget else '') +
        f' at batch {space.batch_size}: raise the budget or the device '
        'count, or lower train.batch_size.')
  return points, seconds, searcher


def Apply(net, point: search_lib.Point, fields) -> None:
  """Writes the point's values of `fields` into network params."""
  values = {
      'num_stages': point.num_stages,
      'num_micro_batches': point.num_micro_batches,
      'schedule': point.schedule,
      'virtual_stages': point.virtual_stages,
      'remat': (point.remat if isinstance(point.remat, str)
                else [bool(f) for f in point.remat]),
      'partition': list(point.partition),
      'execution': Execution(point),
  }
  for f in fields:
    setattr(net, f, values[f])


def _MakeDevices(topo, count: int, verify: bool = True) -> None:
  """The devices and threads training will have, made before the search
  times anything (timing starts TensorFlow, after which neither can be
  set): the steps it times run as the trainer's do. verify: as in
  devices.EnsureDevices."""
  if topo.device_type not in ('cpu', 'gpu'):
    return
  from gpipe_lingvo import devices  # pylint: disable=import-outside-toplevel
  devices.EnsureDevices(topo.device_type, count, topo.gpu_memory_limit_mb,
                        topo.intra_op_threads, verify,
                        inter_op_threads=dict(topo.IterParams()).get(
                            'inter_op_threads', 0))


def Resolve(model_params, logdir='', print_fn=print) -> Optional[
    search_lib.Point]:
  """Resolves the network's 'auto' fields in place (training start);
  prints the choice. None when no field is 'auto'."""
  net = dict(model_params.task.IterParams()).get('network')
  if net is None or 'num_stages' not in dict(net.IterParams()):
    return None
  fields = AutoFields(net)
  if not fields:
    return None
  _MakeDevices(net.topology, NumDevices(net.topology))
  points, seconds, _ = Search(model_params, logdir, print_fn=print_fn,
                              top=1)
  best = points[0]
  Apply(net, best, fields)
  print_fn(f"auto ({', '.join(fields)}): "
           + '; '.join(f'{f} = {getattr(net, f)!r}' for f in fields)
           + f' (predicted {best.examples_per_s:.1f} examples/s, step '
           f'{best.step_s * 1e3:.1f} ms, peak '
           f'{best.peak_bytes / 2**20:.1f} MiB per device; searched in '
           f'{seconds:.2f} s)')
  return best


def RunSearchMode(model_params, logdir='', print_fn=print, num_devices=0):
  """--mode=plan --search: the top ten, and plan.json of the choice."""
  topo = model_params.task.network.topology
  if topo.device_type == 'cpu':  # its threads; two devices for SplitRatio
    _MakeDevices(topo, min(2, num_devices or NumDevices(topo)),
                 verify=False)
  points, seconds, searcher = Search(model_params, logdir, search_all=True,
                                     num_devices=num_devices,
                                     print_fn=print_fn)
  space = searcher.space
  budget = space.budget_bytes
  print_fn(f'{model_params.model}: {space.num_devices} device(s)'
           + (f' of {budget / 2**20:.1f} MiB' if budget else
              ', no memory budget')
           + f', batch {space.batch_size}; {searcher.evaluated} plans '
           f'evaluated in {seconds:.2f} s ({searcher.bounded} '
           'configurations pruned by their bound)')
  print_fn(search_lib.FormatTop(points, budget))
  print_fn(search_lib.ReplayLine(points[0].plan, searcher.replay_dropped))
  if logdir:
    from gpipe_lingvo.planning import model_plan  # pylint: disable=import-outside-toplevel
    plan = dict(points[0].plan)
    plan['model'] = model_params.model
    plan['overrides'] = points[0].Overrides()
    plan['execution'] = Execution(points[0])
    plan.pop('timeline', None)
    print_fn(f'wrote {model_plan.WritePlan(plan, logdir)}')
  return points


def LargestModel(cls, knob: str, values, num_devices: int,
                 budget: Optional[float], overrides=(), print_fn=print):
  """The largest value of a registered model's size knob (an attribute of
  its params class `cls` that Task() reads, e.g. FILTERS) with which some
  configuration
  fits num_devices devices of `budget` bytes: (value, its best point), or
  (None, None). Fitting grows monotonically with the size, so the values
  are bisected; each is traced once without timing (FLOPs rank the
  configurations; only the fit matters)."""
  from gpipe_lingvo import hyperparams  # pylint: disable=import-outside-toplevel
  if not hasattr(cls, knob):
    raise SearchError(f'{cls.__name__} has no size knob {knob!r}; its class '
                      'attributes in capitals are the knobs its Task() may '
                      'read.')
  values = sorted(values)

  def Best(value):
    p = type(cls.__name__, (cls,), {knob: value})().Model()
    for text in overrides:
      hyperparams.ApplyOverrides(p, text)
    costs = resolve.ModelCosts(p, p.train.batch_size, measure=False)
    space = search_lib.Space(num_devices, p.train.batch_size, budget)
    opt = plan_lib.Optimizer.FromTask(p.task)
    points = search_lib.Searcher(costs.Scaled, space, opt,
                                 flops_per_s=1e10).Search(1)
    print_fn(f'{knob} = {value}: '
             + (f'fits ({points[0].Overrides()})' if points else
                'does not fit'))
    return points[0] if points else None

  lo, hi, found = 0, len(values) - 1, (None, None)
  while lo <= hi:
    mid = (lo + hi) // 2
    point = Best(values[mid])
    if point is None:
      hi = mid - 1
    else:
      found, lo = (values[mid], point), mid + 1
  return found
