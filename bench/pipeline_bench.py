"""GPipe engine benchmarks: schedules, overlap, memory, overhead, graph build.

Each configuration runs in its own subprocess, because threading and logical
devices must be configured before TensorFlow initialises. Prints markdown
tables. Usage (from the repository root):

  python bench/pipeline_bench.py                 # everything
  python bench/pipeline_bench.py --sections=bubble,schedules
  python bench/pipeline_bench.py --sections=graph --model=cifar.AmoebaNetD

Sections: bubble (simulated from the tick tables with measured per-cell F,
B, W costs), schedules (measured step time and peak memory of every
schedule at K=2 and K=4), stage (stage functions against tf.GradientTape on
the same cells), overlap, memory, overhead, graph.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ('bubble', 'schedules', 'stage', 'overlap', 'memory', 'overhead',
            'graph')
# Every schedule with its chunks per device (virtual_stages).
SCHEDULE_ROWS = (('gpipe', 1), ('1f1b', 1), ('1f1b_classic', 1),
                 ('interleaved_1f1b', 2), ('zb_h1', 1), ('zb_v', 2))


# -- worker (one configuration per process) ------------------------------------


def _DenseCells(num_cells, width):
  from gpipe_lingvo import layers  # pylint: disable=g-import-not-at-top
  return [layers.FullyConnected.Params().Set(
      name=f'fc{i}', input_dim=width, output_dim=width, activation='tanh')
          for i in range(num_cells)]


def _DeepConvCells(num_blocks, channels):
  """A deep conv net (conv-BN-relu blocks) standing in for AmoebaNet."""
  from gpipe_lingvo import layers  # pylint: disable=g-import-not-at-top
  cells = [layers.Conv2D.Params().Set(name='stem', input_dim=3,
                                      output_dim=channels, filter_shape=3)]
  for i in range(num_blocks):
    cells.append(layers.Sequential.Params().Set(name=f'block{i}', cells=[
        layers.Conv2D.Params().Set(name='conv', input_dim=channels,
                                   output_dim=channels, filter_shape=3),
        layers.BatchNorm.Params().Set(name='bn', dim=channels),
        layers.Activation.Params().Set(name='relu'),
        layers.DepthwiseConv2D.Params().Set(name='dw', input_dim=channels),
        layers.BatchNorm.Params().Set(name='bn2', dim=channels),
    ]))
  cells.append(layers.Sequential.Params().Set(name='head', cells=[
      layers.GlobalPool.Params().Set(name='pool'),
      layers.FullyConnected.Params().Set(name='logits', input_dim=channels,
                                         output_dim=10)]))
  return cells


def _ModelCells(name, image_shape=None):
  """(cells, image shape, num classes) of a registered model's network."""
  from gpipe_lingvo import model_registry  # pylint: disable=g-import-not-at-top
  p = model_registry.GetParams(name)
  net = p.task.network
  if 'cells' not in dict(net.IterParams()):
    raise SystemExit(f'{name}: its network params have no `cells`.')
  shape = list(image_shape) if image_shape else None
  for split in ('train', 'test') if shape is None else ():
    try:
      shape = list(p.Get(split).Instantiate().ImageShape())
      break
    except Exception:  # pylint: disable=broad-except
      continue
  if shape is None:
    raise SystemExit(f'{name}: cannot get the image shape from its input '
                     'generator (dataset not prepared?); pass --image_shape.')
  return list(net.cells), shape, p.task.num_classes


def _IsSequenceModel(name):
  """Whether a registered model is a Transformer (token ids in, no image)."""
  if name in ('dense', 'deepconv'):
    return False
  from gpipe_lingvo import model_registry  # pylint: disable=g-import-not-at-top
  return model_registry.GetParams(name).task.cls.__name__ == 'SequenceTask'


def _SequenceInputs(name, batch):
  """(cells, input nest, labels) of a registered Transformer: random ids,
  one sequence per row of the model's length (no data needed)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from gpipe_lingvo import model_registry  # pylint: disable=g-import-not-at-top
  p = model_registry.GetParams(name)
  cells = list(p.task.network.cells)
  emb = cells[0]
  t = p.train.Instantiate().length
  sides = {'tgt': emb.target_vocab_size}
  if emb.source_vocab_size:
    sides['src'] = emb.source_vocab_size
  x = {}
  for i, (side, vocab) in enumerate(sorted(sides.items())):
    x[f'{side}_ids'] = tf.random.stateless_uniform([batch, t], [5, i], 4,
                                                   vocab, tf.int32)
    if emb.packed_input:
      x[f'{side}_segment_ids'] = tf.ones([batch, t], tf.int32)
      x[f'{side}_positions'] = tf.tile(tf.range(t)[None], [batch, 1])
  y = tf.random.stateless_uniform([batch, t], [6, 7], 4,
                                  emb.target_vocab_size, tf.int32)
  return cells, x, y


def _Interleaved(fns, reps):
  """Median seconds per call of each function, calling them in turn in
  every round so that load changes affect all alike. (A tf.function call
  on CPU returns when its ops are done.)"""
  for fn in fns.values():
    fn()  # trace and warm up
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


def StagePieces(cfg, cells, x, y, loss_fn):
  """Milliseconds per call of a chunk's pieces at micro-batch size
  batch/M. kind 'costs': one cell (F, B, W, fused backward). kind 'stage':
  the first `cells` cells through the stage functions against
  tf.GradientTape on the same cells, kept and recomputed."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from gpipe_lingvo import context  # pylint: disable=g-import-not-at-top
  from gpipe_lingvo import layers  # pylint: disable=g-import-not-at-top
  from gpipe_lingvo.pipeline import stage_function  # pylint: disable=g-import-not-at-top
  del y, loss_fn
  n_cells = 1 if cfg['kind'] == 'costs' else cfg['cells']
  net = layers.Sequential.Params().Set(name='net',
                                       cells=cells[:n_cells]).Instantiate()
  variables = net.TrainableVariables()
  xb = x[:cfg['batch'] // cfg['m']]

  def Body(x):
    with context.Scope(training=True, step=0, micro_batch=0, stats={}):
      return [net.FProp(x)], []

  fn = stage_function.StageFunction(Body, [tf.TensorSpec(xb.shape, xb.dtype)],
                                    variables)
  dy = tf.ones(fn.output_specs[0].shape, fn.output_specs[0].dtype)
  _, res0 = fn.Forward([xb])
  _, win0 = fn.BackwardInput(res0, [dy])
  # Every piece returns input and weight gradients (a middle chunk's job).
  grads = lambda out: [g for g in out[0] if g is not None] + [
      g for _, g in out[1]]

  def Jit(f, *args):
    # Inputs are arguments, not captured constants that grappler could fold.
    g = tf.function(f, autograph=False)
    return lambda: g(*args)

  pieces = {
      'F': Jit(lambda x: fn.ForwardOutputs([x]), xb),
      'F_res': Jit(lambda x: fn.Forward([x]), xb),
      'B': Jit(lambda r, d: fn.BackwardInput(r, [d]), res0, dy),
      'W': Jit(lambda w: [g for _, g in fn.BackwardWeights(w)], win0),
      'BW': Jit(lambda r, d: grads(fn.Backward(r, [d])), res0, dy),
      'keep': Jit(lambda x, d: grads(fn.Backward(fn.Forward([x])[1], [d])),
                  xb, dy),
      'recompute': Jit(lambda x, d: (fn.ForwardOutputs([x]), grads(
          fn.Backward(fn.Forward([x])[1], [d]))), xb, dy),
  }

  def Tape(recompute):
    def Fn(x, d):
      with tf.GradientTape() as tape:
        tape.watch(x)
        out = Body(x)[0][0]
      g = tape.gradient(out, [x] + variables, output_gradients=d)
      return (Body(x)[0], g) if recompute else g
    return Jit(Fn, xb, dy)

  pieces['tape_keep'] = Tape(False)
  pieces['tape_recompute'] = Tape(True)
  times = _Interleaved(pieces, cfg.get('reps', 20))
  return {name: 1e3 * t for name, t in times.items()}


def Worker(cfg):
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
  if cfg.get('memory'):
    # CPU allocator statistics (get_memory_info) need TensorFlow's BFC
    # allocator on the CPU; it must be chosen before TensorFlow starts.
    os.environ['TF_CPU_ALLOCATOR_USE_BFC'] = 'true'
  sys.path.insert(0, ROOT)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if cfg.get('intra'):
    tf.config.threading.set_intra_op_parallelism_threads(cfg['intra'])
  if cfg.get('inter'):
    tf.config.threading.set_inter_op_parallelism_threads(cfg['inter'])
  from gpipe_lingvo import devices  # pylint: disable=g-import-not-at-top
  devices.EnsureDevices('cpu', max(1, cfg.get('k', 1)))
  from gpipe_lingvo import context  # pylint: disable=g-import-not-at-top
  from gpipe_lingvo import layers  # pylint: disable=g-import-not-at-top
  from gpipe_lingvo.pipeline import pipelined_network  # pylint: disable=g-import-not-at-top

  net_kind = cfg['net']
  if net_kind == 'dense':
    cells = _DenseCells(cfg['cells'], cfg['width'])
    x_shape, classes = [cfg['batch'], cfg['width']], cfg['width']
  elif net_kind == 'deepconv':
    cells = _DeepConvCells(cfg['cells'], cfg['width'])
    x_shape, classes = [cfg['batch'], 16, 16, 3], 10
  elif not _IsSequenceModel(net_kind):
    cells, shape, classes = _ModelCells(net_kind, cfg.get('image_shape'))
    x_shape = [cfg['batch']] + shape
  if _IsSequenceModel(net_kind):
    cells, x, y = _SequenceInputs(net_kind, cfg['batch'])
  else:
    x = tf.random.stateless_normal(x_shape, [1, 2])
    y = tf.random.stateless_uniform([cfg['batch']], [3, 4], 0, classes,
                                    tf.int32)
  n = cfg['batch']

  def LossFn(logits, labels):
    if isinstance(logits, dict):
      logits = logits['logits']
    per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                         logits=logits)
    return tf.reduce_sum(per) / n, {}

  if cfg['kind'] in ('costs', 'stage'):
    print('RESULT ' + json.dumps(StagePieces(cfg, cells, x, y, LossFn)),
          flush=True)
    return
  if cfg['kind'] == 'plain':
    net = layers.Sequential.Params().Set(name='net', cells=cells).Instantiate()
    variables = net.TrainableVariables()

    @tf.function
    def Step(x, y):
      with context.Scope(training=True, step=0, stats={}):
        with tf.GradientTape() as tape:
          loss, _ = LossFn(net.FProp(x), y)
      grads = tape.gradient(loss, variables)
      _Apply(variables, grads)
      return loss
  else:
    net = pipelined_network.PipelinedNetwork.Params().Set(
        name='net', cells=cells, num_stages=cfg['k'],
        num_micro_batches=cfg['m'], schedule=cfg.get('schedule', 'gpipe'),
        virtual_stages=cfg.get('v', 1), remat=cfg.get('remat', 'never'),
        parallel_iterations=cfg.get('parallel_iterations', 1),
        execution=cfg.get('execution', 'ticks')).Instantiate()
    net.CreateGradientAccumulators()
    variables = net.TrainableVariables()

    @tf.function
    def Step(x, y):
      loss, _, grads, _ = net.ComputeLossAndGradients(
          x, y, LossFn, tf.constant(0, tf.int64))
      _Apply(variables, grads)
      return loss

  out = {'rss0_mib': _MaxRssMiB()}
  t0 = time.perf_counter()
  graph = Step.get_concrete_function(x, y).graph
  out['trace_s'] = time.perf_counter() - t0
  out['trace_rss_mib'] = _MaxRssMiB()
  out['graph_nodes'] = len(graph.as_graph_def().node) + sum(
      len(f.node_def) for f in graph.as_graph_def().library.function)
  Step(x, y).numpy()
  out['build_s'] = time.perf_counter() - t0
  out['build_rss_mib'] = _MaxRssMiB()
  if not (cfg.get('reps') or cfg.get('memory')):
    t1 = time.perf_counter()
    Step(x, y).numpy()
    out['second_run_s'] = time.perf_counter() - t1
  if cfg.get('memory'):
    Step(x, y).numpy()
    tf.config.experimental.reset_memory_stats('CPU:0')
    before = tf.config.experimental.get_memory_info('CPU:0')['current']
    Step(x, y).numpy()
    peak = tf.config.experimental.get_memory_info('CPU:0')['peak']
    out['peak_mib'] = (peak - before) / 2**20
    out['params_mib'] = sum(int(tf.size(v)) * 4 for v in variables) / 2**20
  reps = cfg.get('reps', 0)
  if reps:
    Step(x, y).numpy()
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
      t0 = time.perf_counter()
      Step(x, y).numpy()
      times.append(time.perf_counter() - t0)
    out['step_s'] = statistics.median(times)
    # Cores busy on average: process CPU time over wall time. On a shared
    # machine this shows whether stages ran concurrently even when the
    # wall-clock times are disturbed.
    out['cores_busy'] = ((time.process_time() - cpu0) /
                         (time.perf_counter() - wall0))
  if 'table' in cfg and cfg['kind'] != 'plain':
    tab = net.schedule_table
    out['bubble'] = tab.BubbleFraction()
    out['peak_stash'] = tab.PeakStash()
  print('RESULT ' + json.dumps(out), flush=True)


# -- driver --------------------------------------------------------------------


def _MaxRssMiB() -> float:
  """The process's resident high-water mark (graph, functions, buffers)."""
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _Apply(variables, grads):
  """A plain SGD update (embedding gradients come as IndexedSlices;
  a variable no loss reaches, e.g. an aux head's, has none)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for v, g in zip(variables, grads):
    if g is not None:
      v.assign_sub(1e-4 * tf.convert_to_tensor(g))


def Run(cfg, timeout=300):
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(cfg)]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                     cwd=ROOT, check=False)
  for line in r.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  raise RuntimeError(f'config {cfg} failed:\n{r.stderr[-3000:]}')


def _ChunkCosts(cell_costs, num_cells, num_chunks):
  """Per-chunk (kind, chunk) -> ms for a uniform partition of identical
  cells (earlier chunks take the remainder, as partition.Partition)."""
  base, extra = divmod(num_cells, num_chunks)
  costs = {}
  for c in range(num_chunks):
    n = base + (1 if c < extra else 0)
    for kind in ('F', 'B', 'W'):
      costs[(kind, c)] = n * cell_costs[kind]
  return costs


def Bubble(args):
  """Simulated bubble of every schedule from its tick table, with F, B and
  W of one dense cell measured at the micro-batch size (one thread)."""
  sys.path.insert(0, ROOT)
  from gpipe_lingvo.pipeline import schedule  # pylint: disable=g-import-not-at-top  (pure Python)
  cells = 16
  print('\n### Simulated bubble per schedule (tick tables, measured costs)\n')
  print(f'Network: {cells} dense {args.width}x{args.width} tanh cells, batch '
        f'{args.batch}, one intra-op thread; F, B (input gradient) and W '
        '(weight gradient) of one cell measured at the micro-batch size '
        '(median of 20 calls) and summed per chunk; a chunk on the same '
        'device costs the same. Bubble = idle fraction of device-time when '
        'each tick lasts as long as its busiest device; remat never.\n')
  for m in (8, 32):
    cost = Run(dict(net='dense', cells=1, width=args.width, batch=args.batch,
                    m=m, kind='costs', intra=1, inter=1, reps=20))
    print(f'M={m} (micro-batch {args.batch // m}): one cell F {cost["F"]:.2f} '
          f'ms, B {cost["B"]:.2f} ms, W {cost["W"]:.2f} ms (fused backward '
          f'{cost["BW"]:.2f} ms).\n')
    print('| K | schedule | v | ticks | bubble (F=B=W) | bubble (measured) | '
          'simulated step (ms) | peak stash per device (chunks) |')
    print('|---|---|---|---|---|---|---|---|')
    for k in (4, 8):
      for name, v in SCHEDULE_ROWS:
        try:
          tab = schedule.Build(name, k, m, v)
        except schedule.ScheduleError as e:
          print(f'| {k} | {name} | {v} | - | - | - | - | {e} |')
          continue
        costs = _ChunkCosts(cost, cells, tab.num_chunks)
        tl = tab.Timeline(costs)
        print(f'| {k} | {name} | {v} | {tab.num_ticks} | '
              f'{tab.BubbleFraction():.3f} | '
              f'{tl.BubbleFraction(k):.3f} | {tl.duration:.1f} | '
              f'{tab.PeakStash()} |')
    print()


def Schedules(args):
  """Measured step time and peak memory of every schedule under each
  execution. Times come from processes with TensorFlow's default CPU
  allocator (what training uses), `--rounds` per row, all rows alternating
  within a round so that a slow spell of a shared machine hits them all;
  the table gives medians, the spread, and the ratio to 1f1b under the same
  execution. Peak bytes come from one more process per row with the BFC
  allocator, which keeps statistics but changes the timings."""
  base = dict(net='dense', cells=8, width=args.width, batch=args.batch,
              table=True, intra=1, m=8, remat=args.remat)
  timed, mem = dict(base, reps=args.reps), dict(base, memory=True)
  executions = args.executions.split(',')
  plain = Run(dict(timed, kind='plain', inter=1))
  plain_mem = Run(dict(mem, kind='plain', inter=1))
  print('\n### Step time and peak memory per schedule and execution (8 dense '
        f'{args.width}x{args.width} tanh cells, batch {args.batch}, M=8, '
        f'remat {args.remat}, one intra-op thread, median of {args.rounds} '
        'alternating runs)\n')
  print(f'Un-pipelined step (one thread): {plain["step_s"]*1e3:.0f} ms, '
        f'peak {plain_mem["peak_mib"]:.1f} MiB.\n')
  print('| K | schedule | v | execution | step (ms) | runs (ms) | vs 1f1b | '
        'cores busy | peak (MiB) | simulated bubble (F=B=W) | peak stash per '
        'device (chunks) |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  med = statistics.median
  rows = [(name, v, ex) for ex in executions for name, v in SCHEDULE_ROWS]
  for k in (2, 4):
    runs = {row: [] for row in rows}
    for _ in range(args.rounds):
      for name, v, ex in rows:
        runs[(name, v, ex)].append(Run(dict(
            timed, kind='pipe', k=k, schedule=name, v=v, execution=ex)))
    for (name, v, ex), rs in runs.items():
      ref = med(r['step_s'] for r in runs[('1f1b', 1, ex)])
      m = Run(dict(mem, kind='pipe', k=k, schedule=name, v=v, execution=ex))
      steps = sorted(r['step_s'] * 1e3 for r in rs)
      print(f'| {k} | {name} | {v} | {ex} | {med(steps):.0f} | '
            f'{", ".join(f"{t:.0f}" for t in steps)} | '
            f'{med(steps) / 1e3 / ref:.2f}x | '
            f'{med(r["cores_busy"] for r in rs):.2f} | '
            f'{m["peak_mib"]:.1f} | {m["bubble"]:.3f} | '
            f'{m["peak_stash"]} |', flush=True)


def Stage(args):
  """Stage functions against tf.GradientTape on the same cells."""
  cfg = dict(net='dense', cells=4, width=args.width, batch=args.batch, m=8,
             kind='stage', reps=20)
  print('\n### Stage functions against tf.GradientTape (4 dense '
        f'{args.width}x{args.width} tanh cells, micro-batch '
        f'{args.batch // 8}, default threads, median ms per call)\n')
  print('| threads | F | F with residuals | B | W | B+W fused | keep: F+BW | '
        'tape: forward+gradient | recompute: F, F+BW | tape: forward, '
        'forward+gradient | keep vs tape | recompute vs tape |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for intra in (1, 0):
    r = Run(dict(cfg, intra=intra))
    print(f'| {intra or "default"} | {r["F"]:.2f} | {r["F_res"]:.2f} | '
          f'{r["B"]:.2f} | {r["W"]:.2f} | {r["BW"]:.2f} | {r["keep"]:.2f} | '
          f'{r["tape_keep"]:.2f} | {r["recompute"]:.2f} | '
          f'{r["tape_recompute"]:.2f} | {r["keep"]/r["tape_keep"]:.2f}x | '
          f'{r["recompute"]/r["tape_recompute"]:.2f}x |')


def Overlap(args):
  base = dict(net='dense', cells=8, width=512, batch=args.batch, reps=args.reps)
  what = f'8 dense 512x512 tanh cells, batch {args.batch}'
  if args.overlap_model:
    base = dict(base, net=args.overlap_model)
    what = f'the cells of `{args.overlap_model}`, batch {args.batch}'
  one = Run(dict(base, kind='plain', intra=1, inter=1))['step_s']
  inter2 = Run(dict(base, kind='plain', intra=1, inter=2))['step_s']
  default = Run(dict(base, kind='plain'))['step_s']
  best = min(inter2, default)
  print('\n### 1. Pipeline overlap (K=2 on 2 logical CPU devices, one '
        'intra-op thread, remat never)\n')
  print(f'Network: {what}. '
        f'Un-pipelined step: {one*1e3:.0f} ms with one thread; '
        f'{inter2*1e3:.0f} ms with intra=1/inter=2; {default*1e3:.0f} ms '
        'with default threads.\n')
  print('| M | schedule | step (ms) | speed-up vs 1 thread | ideal '
        'K*M/(M+K-1) | % of ideal | vs best un-pipelined | cores busy |')
  print('|---|---|---|---|---|---|---|---|')
  for m in [int(v) for v in args.overlap_m.split(',')]:
    for sched in ('gpipe', '1f1b'):
      if m == 1 and sched == '1f1b':
        continue  # the same ticks as gpipe
      r = Run(dict(base, kind='pipe', k=2, m=m, intra=1, schedule=sched))
      s = r['step_s']
      ideal = 2 * m / (m + 1)
      sp = one / s
      print(f'| {m} | {sched} | {s*1e3:.0f} | {sp:.2f}x | {ideal:.2f}x | '
            f'{100*sp/ideal:.0f}% | {best/s:.2f}x | {r["cores_busy"]:.2f} |')


def Memory(args):
  base = dict(net='dense', cells=8, width=512, batch=args.batch, memory=True,
              table=True, intra=1)
  print('\n### 2. Memory: peak allocator bytes of one training step above '
        'the pre-step level\n')
  print(f'Network: 8 dense 512x512 tanh cells, batch {args.batch} '
        '(tf.config.experimental.get_memory_info("CPU:0"), which covers '
        'all logical CPU devices).\n')
  plain = Run(dict(base, kind='plain'))
  print(f'Un-pipelined (tape) step: {plain["peak_mib"]:.1f} MiB.\n')
  print('| K | M | schedule | remat | peak (MiB) | stashed micro-batches per '
        'stage (from the table) | bubble (table) |')
  print('|---|---|---|---|---|---|---|')
  rows = [(2, 8, 'gpipe', 'never'), (2, 8, 'gpipe', 'always')]
  for k in (2, 4):
    for sched in ('gpipe', '1f1b', '1f1b_classic'):
      for remat in ('never', 'always'):
        rows.append((k, 16, sched, remat))
  for k, m, sched, remat in rows:
    r = Run(dict(base, kind='pipe', k=k, m=m, schedule=sched, remat=remat))
    print(f'| {k} | {m} | {sched} | {remat} | {r["peak_mib"]:.1f} | '
          f'{r["peak_stash"]} | {r["bubble"]:.3f} |')


def Overhead(args):
  base = dict(net='dense', cells=8, width=512, batch=args.batch,
              reps=args.reps * 2)
  print('\n### 3. Overhead at K=1, M=1 (default threads)\n')
  res = {}
  for name, cfg in (('plain tf.function step (tape)', dict(kind='plain')),
                    ('pipeline, remat never', dict(kind='pipe', k=1, m=1,
                                                   remat='never')),
                    ('pipeline, remat always', dict(kind='pipe', k=1, m=1,
                                                    remat='always'))):
    res[name] = Run(dict(base, **cfg))['step_s']
  plain = res['plain tf.function step (tape)']
  never = res['pipeline, remat never']
  print('| step | ms | vs plain | vs remat never |')
  print('|---|---|---|---|')
  for name, s in res.items():
    print(f'| {name} | {s*1e3:.1f} | {100*(s/plain-1):+.1f}% | '
          f'{100*(s/never-1):+.1f}% |')


def Graph(args):
  print('\n### 4. Graph build: trace + first run of the training step\n')
  if args.model:
    base = dict(net=args.model, batch=args.graph_batch)
    if args.image_shape:
      base['image_shape'] = [int(d) for d in args.image_shape.split(',')]
    what = f'registered model {args.model}'
  else:
    base = dict(net='deepconv', cells=args.conv_blocks, width=32,
                batch=args.graph_batch)
    what = (f'deep conv net ({args.conv_blocks} conv-BN-relu-depthwise-BN '
            'blocks, 16x16x3 input)')
  print(f'Network: {what}, batch {args.graph_batch}, remat always.\n')
  print('| K | M | trace (s) | trace + first run (s) | ratio | second run (s) '
        '| graph nodes (incl. functions) |')
  print('|---|---|---|---|---|---|---|')
  first = None
  for k, m in ((1, 1), (4, 32)):
    r = Run(dict(base, kind='pipe', k=k, m=m, remat='always'), timeout=600)
    s = r['build_s']
    first = first or s
    print(f'| {k} | {m} | {r["trace_s"]:.1f} | {s:.1f} | {s/first:.2f}x | '
          f'{r["second_run_s"]:.1f} | {r["graph_nodes"]} |')


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--worker', help=argparse.SUPPRESS)
  ap.add_argument('--sections', default=','.join(SECTIONS))
  ap.add_argument('--batch', type=int, default=2048)
  ap.add_argument('--reps', type=int, default=5)
  ap.add_argument('--executions', default='ticks,dataflow',
                  help='schedules section: executions to measure, '
                  'comma-separated')
  ap.add_argument('--rounds', type=int, default=3,
                  help='alternating runs per schedule (section schedules)')
  ap.add_argument('--width', type=int, default=512,
                  help='width of the dense cells (bubble, schedules, stage)')
  ap.add_argument('--remat', default='never',
                  help='remat policy of the schedules section')
  ap.add_argument('--model', default='',
                  help='registered model whose network cells the graph '
                  'section uses (e.g. a model with an AmoebaNet network)')
  ap.add_argument('--graph_batch', type=int, default=64)
  ap.add_argument('--image_shape', default='',
                  help='H,W,C for --model when its input generator cannot '
                  'be built here (e.g. 224,224,3)')
  ap.add_argument('--conv_blocks', type=int, default=24)
  ap.add_argument('--overlap_model', default='',
                  help='overlap section: a registered model\'s cells '
                  '(image or Transformer) instead of the dense cells; '
                  'random inputs of its shapes, set --batch')
  ap.add_argument('--overlap_m', default='1,2,4,8,16',
                  help='overlap section: micro-batch counts')
  args = ap.parse_args()
  if args.worker:
    Worker(json.loads(args.worker))
    return
  print(f'# GPipe engine benchmarks — {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, '
        f'{platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}')
  t0 = time.time()
  for sec in args.sections.split(','):
    {'bubble': Bubble, 'schedules': Schedules, 'stage': Stage,
     'overlap': Overlap, 'memory': Memory, 'overhead': Overhead,
     'graph': Graph}[sec](args)
    sys.stdout.flush()
  print(f'\nTotal benchmark time: {time.time() - t0:.0f} s')


if __name__ == '__main__':
  main()
