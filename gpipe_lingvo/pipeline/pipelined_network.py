"""PipelinedNetwork: a sequence of cells trained with GPipe.

Params declare the cells, the number of stages K and micro-batches M, the
schedule, the re-materialization policy, the partition and the device
topology. Cells are direct children named as in layers.Sequential, so
checkpoints do not depend on K or M; each is created on its stage's device.
"""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo import devices
from gpipe_lingvo import hyperparams
from gpipe_lingvo.layers import normalization
from gpipe_lingvo.layers import sequential
from gpipe_lingvo.pipeline import balance
from gpipe_lingvo.pipeline import executor as executor_lib
from gpipe_lingvo.pipeline import microbatch
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.pipeline import partition as partition_lib
from gpipe_lingvo.pipeline import schedule as schedule_lib


def _OverrideBatchNormMode(params, mode):
  """Copy of a params tree with every BatchNorm's mode set to `mode`."""
  p = params.Copy()

  def Visit(q):
    if isinstance(q, hyperparams.InstantiableParams) and issubclass(
        q.cls, normalization.BatchNorm):
      q.mode = mode
    for _, v in q.IterParams():
      if isinstance(v, hyperparams.Params):
        Visit(v)
      elif isinstance(v, (list, tuple)):
        for e in v:
          if isinstance(e, hyperparams.Params):
            Visit(e)
  Visit(p)
  return p


class _StageBody:
  """The Python forward of one stage (cells, and the loss on the last)."""

  def __init__(self, cells, loss_fn):
    self.cells = cells
    self.loss_fn = loss_fn
    self.out_struct = None
    self._metric_struct = None
    self._stats_layout = []

  def MakeBody(self, in_struct, num_in, first, last, label_struct):
    n_lab = len(tf.nest.flatten(label_struct)) if last else 0

    def Body(*args):
      xs = list(args[:num_in])
      labels = list(args[num_in:num_in + n_lab])
      step, mb = args[-2], args[-1]
      if first:
        xs = [tf.stop_gradient(x) for x in xs]
      x = tf.nest.pack_sequence_as(in_struct, xs)
      stats = {}
      with context.Scope(training=True, step=step, micro_batch=mb,
                         stats=stats):
        for cell in self.cells:
          x = cell.FProp(x)
        if last:
          lab = tf.nest.map_structure(
              tf.stop_gradient,
              tf.nest.pack_sequence_as(label_struct, labels))
          loss, sums = self.loss_fn(x, lab)
      self._stats_layout = [(p, len(stats[p])) for p in sorted(stats)]
      stats_flat = []
      for p in sorted(stats):
        for tup in stats[p]:
          stats_flat.extend(tup)
      if last:
        self._metric_struct = sums
        return [loss], tf.nest.flatten(sums) + stats_flat
      self.out_struct = tf.nest.map_structure(lambda t: None, x)
      return tf.nest.flatten(x), stats_flat

    return Body

  def UnpackAux(self, aux):
    aux = list(aux)
    sums = None
    if self._metric_struct is not None:
      n = len(tf.nest.flatten(self._metric_struct))
      sums = tf.nest.pack_sequence_as(self._metric_struct, aux[:n])
      aux = aux[n:]
    stats, pos = {}, 0
    for path, count in self._stats_layout:
      stats[path] = []
      for _ in range(count):
        stats[path].append(tuple(aux[pos:pos + 3]))
        pos += 3
    return sums, stats


class _Untracked:
  """Holds state that must not become part of checkpoints or variables."""

  def __init__(self):
    self.table = {}


class PipelinedNetwork(base_layer.BaseLayer):
  """A sequential network cut into K stages, trained on M micro-batches."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('cells', [], 'List of layer params (any sequential network); '
             'activations between cells may be any nest of tensors.')
    p.Define('num_stages', 1, 'Pipeline stages K (one device group each).')
    p.Define('topology', devices.TopologyParams(),
             'Device type and devices per stage.')
    p.Define('num_micro_batches', 1, 'Micro-batches M per mini-batch.')
    p.Define('schedule', 'gpipe',
             f'One of {schedule_lib.SCHEDULES}: fill-drain, or one-forward-'
             'one-backward (fewer stashed micro-batches).')
    p.Define('remat', 'always',
             f'Re-materialization policy, one of '
             f'{executor_lib.REMAT_POLICIES}.')
    p.Define('partition', 'uniform',
             "'uniform' (by cell count), a list of cell counts per stage, or "
             "a cost to balance exactly: 'params', 'flops', 'memory' or "
             "'time' (pipeline/balance.py; within topology."
             'memory_budget_bytes if set).')
    p.Define('input_shape', None,
             'Shape [batch, ...] of the network input; cost partitions '
             'trace the cells at its micro-batch shape (the trainer fills '
             'it from the training input).')
    p.Define('cell_costs_path', '',
             'JSON file caching the traced (and, for time, measured) cell '
             'costs; the trainer sets <logdir>/cell_costs.json.')
    p.Define('batch_norm_mode', '',
             f'If set, one of {normalization.MODES}, applied to every '
             "BatchNorm inside the cells ('' keeps each layer's own mode; a "
             'string default so that text overrides can set it).')
    p.Define('parallel_iterations', 1,
             'Ticks the step loop may run ahead; 1 keeps memory lowest.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if not p.cells:
      raise ValueError(f'{self.path}: cells is empty.')
    params_check.CheckPipelineParams(p, self.path)
    if not isinstance(p.num_micro_batches, int) or p.num_micro_batches < 1:
      raise ValueError(f'{self.path}: num_micro_batches must be a positive '
                       f'int, got {p.num_micro_batches!r}.')
    if p.schedule not in schedule_lib.SCHEDULES:
      raise ValueError(f'{self.path}: unknown schedule {p.schedule!r}; use '
                       f'one of {schedule_lib.SCHEDULES}.')
    if p.remat not in executor_lib.REMAT_POLICIES:
      raise ValueError(f'{self.path}: unknown remat policy {p.remat!r}; use '
                       f'one of {executor_lib.REMAT_POLICIES}.')
    if p.batch_norm_mode and p.batch_norm_mode not in normalization.MODES:
      raise ValueError(f'{self.path}: unknown batch_norm_mode '
                       f'{p.batch_norm_mode!r}; use one of '
                       f"{normalization.MODES} or '' (no override).")
    self._ranges = balance.Resolve(
        p, len(p.cells),
        1 if p.batch_norm_mode == 'full_batch' else p.num_micro_batches)
    self._devices = self._CheckDevices()
    cells = list(p.cells)
    if p.batch_norm_mode:
      cells = [_OverrideBatchNormMode(c, p.batch_norm_mode) for c in cells]
    names = sequential.CellNames(cells)
    self._cell_names = names
    for k, (a, b) in enumerate(self._ranges):
      with tf.device(self._devices[k]):
        for n, c in zip(names[a:b], cells[a:b]):
          self.CreateChild(n, c)
    # full_batch batch norm is exact only if every batch-norm layer sees the
    # whole mini-batch in its forward and its backward (the batch moments
    # and their gradient terms couple all examples), i.e. a barrier over
    # all micro-batches at each such layer. The engine implements it
    # honestly by running the step on the whole mini-batch as a single
    # micro-batch: normalisation and gradients equal un-pipelined batch
    # norm, at the price of all pipeline overlap (see docs/engine.md).
    self.full_batch_bn = any(
        isinstance(l, normalization.BatchNorm) and
        l.params.mode == 'full_batch'
        for c in self.cells for l in c.Layers())
    self.effective_micro_batches = (1 if self.full_batch_bn
                                    else p.num_micro_batches)
    self._accumulators = _Untracked()
    self.schedule_table = schedule_lib.Build(p.schedule, p.num_stages,
                                             self.effective_micro_batches)
    self._remat_flags = executor_lib.RematFlags(
        p.remat, self.effective_micro_batches)

  def _CheckDevices(self):
    p = self.params
    topo = p.topology
    devices.CheckTopology(topo, p.num_stages, f'{self.path}.topology')
    need = p.num_stages * topo.devices_per_stage
    have = len(tf.config.list_logical_devices(topo.device_type.upper()))
    if need > have:
      raise devices.DeviceError(
          f'{self.path}: num_stages={p.num_stages} x devices_per_stage='
          f'{topo.devices_per_stage} needs {need} {topo.device_type.upper()} '
          f'devices but only {have} exist. Lower num_stages, or create '
          'logical devices first (devices.ConfigureFromParams / '
          'EnsureDevices, as trainer.py does).')
    return devices.StageDevices(topo, p.num_stages)

  # -- structure ---------------------------------------------------------------

  @property
  def cells(self):
    return [getattr(self, n) for n in self._cell_names]

  def StageCells(self, k):
    a, b = self._ranges[k]
    return self.cells[a:b]

  @property
  def stage_devices(self):
    return list(self._devices)

  @property
  def num_stages(self):
    return self.params.num_stages

  def StageVariables(self, k):
    out = []
    for c in self.StageCells(k):
      out.extend(c.AllVariables())
    return out

  # -- forward -----------------------------------------------------------------

  def _RunStage(self, k, x):
    with tf.device(self._devices[k]):
      for cell in self.StageCells(k):
        x = cell.FProp(x)
    return x

  @tf.autograph.experimental.do_not_convert
  def FProp(self, inputs):
    """The network's forward. Evaluation runs the whole batch stage by
    stage; training runs the micro-batches through the stages in fill-drain
    order (a tick loop), so batch norm sees micro-batches and the result is
    differentiable under tf.GradientTape like any layer (without
    re-materialization: the tape keeps what it needs)."""
    ctx = context.Current()
    k_all, m = self.params.num_stages, self.effective_micro_batches
    if not ctx.training or m == 1:
      x = inputs
      for k in range(k_all):
        x = self._RunStage(k, x)
      return x
    return self._TickLoopForward(microbatch.Split(inputs, m))

  def _StageSpecs(self, k, in_specs):
    """Output TensorSpecs and batch-norm statistics layout of stage k for
    micro-batch input specs (a trace only; no data is computed)."""
    info = {}

    def Fn(*flat):
      stats = {}
      x = tf.nest.pack_sequence_as(in_specs, flat)
      with context.Scope(training=True, step=0, micro_batch=0, stats=stats):
        y = self._RunStage(k, x)
      info['stats'] = [(p, [[(v.shape, v.dtype) for v in tup]
                             for tup in stats[p]]) for p in sorted(stats)]
      return y

    out = tf.function(Fn, autograph=False).get_concrete_function(
        *tf.nest.flatten(in_specs)).structured_outputs
    return (tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                                  out), info['stats'])

  def _TickLoopForward(self, x_mb):
    """Fill-drain forward of M micro-batches as one while loop over clock
    ticks (stage k runs micro-batch t-k at tick t), so the graph does not
    grow with M; TensorFlow differentiates it like any other loop."""
    ctx = context.Current()
    k_all, m = self.params.num_stages, self.effective_micro_batches
    specs = [tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape[1:], t.dtype), x_mb)]
    layouts = []
    for k in range(k_all):
      out_specs, layout = self._StageSpecs(k, specs[-1])
      specs.append(out_specs)
      layouts.append(layout)
    tas = [None]
    for k in range(1, k_all + 1):
      with tf.device(self._devices[min(k, k_all - 1)]):
        tas.append([tf.TensorArray(s.dtype, size=m, element_shape=s.shape)
                    for s in tf.nest.flatten(specs[k])])
    stats0 = []
    for k in range(k_all):
      with tf.device(self._devices[k]):
        accs = []
        for _, tuples in layouts[k]:
          for tup in tuples:
            accs.append([tf.zeros(shape, dtype) for shape, dtype in tup])
        stats0.append(accs)
    x_flat = tf.nest.flatten(x_mb)

    def Body(t, tas_in, stats_in):
      tas_out, stats_out = list(tas_in), list(stats_in)
      for k in range(k_all):
        i = t - k

        def Run(k=k, i=i):
          with tf.device(self._devices[k]):
            if k == 0:
              xs = [tf.gather(v, i) for v in x_flat]
            else:
              xs = [ta.read(i) for ta in tas_in[k]]
            x = tf.nest.pack_sequence_as(specs[k], xs)
            local = {}
            with context.Scope(micro_batch=i, stats=local):
              y = self._RunStage(k, x)
            new_ta = [ta.write(i, v) for ta, v in
                      zip(tas_in[k + 1], tf.nest.flatten(y))]
            flat_stats = [tup for p in sorted(local) for tup in local[p]]
            new_stats = [[a + b for a, b in zip(acc, tup)]
                         for acc, tup in zip(stats_in[k], flat_stats)]
            return new_ta, new_stats

        new_ta, new_stats = tf.cond(
            tf.logical_and(i >= 0, i < m), Run,
            lambda k=k: (list(tas_in[k + 1]), list(stats_in[k])))
        tas_out[k + 1] = new_ta
        stats_out[k] = new_stats
      return t + 1, tas_out, stats_out

    loop_tas = [[]] + tas[1:]
    _, tas_end, stats_end = tf.while_loop(
        lambda t, *_: t < m + k_all - 1, Body,
        (tf.constant(0), loop_tas, stats0),
        parallel_iterations=self.params.parallel_iterations,
        maximum_iterations=m + k_all - 1)
    for k in range(k_all):
      pos = 0
      for path, tuples in layouts[k]:
        for _ in tuples:
          if ctx.stats is not None:
            context.AddStats(path, tuple(stats_end[k][pos]))
          pos += 1
    out = [ta.stack() for ta in tas_end[k_all]]
    return microbatch.Merge(tf.nest.pack_sequence_as(specs[-1], out))

  # -- training step -----------------------------------------------------------

  # Plain Python that builds graph ops: autograph conversion would only
  # slow down tracing (seconds for a deep network).
  @tf.autograph.experimental.do_not_convert
  def ComputeLossAndGradients(self, inputs, labels_nest, loss_fn, step):
    """Runs the schedule; returns (loss, metric_sums, grads, stats).

    loss_fn(net_output_mb, labels_mb) -> (loss contribution, metric sums) of
    one micro-batch; contributions add up to the mini-batch loss. grads are
    aligned with self.TrainableVariables(); stats map layer paths to the
    (count, sum, sum_sq) tuples batch norm recorded in the forwards.
    """
    if tf.executing_eagerly():
      return tf.function(self._Step, autograph=False)(
          inputs, labels_nest, loss_fn, step)
    return self._Step(inputs, labels_nest, loss_fn, step)

  def _GradAccumulator(self, var):
    """A persistent, untracked variable in which var's gradient is summed
    over micro-batches (created once, outside any function trace; not a
    checkpoint key)."""
    accs = self._accumulators.table
    if var.ref() not in accs:
      with tf.init_scope(), tf.device(var.device):
        accs[var.ref()] = tf.Variable(tf.zeros(var.shape, var.dtype),
                                      trainable=False)
    return accs[var.ref()]

  def _Step(self, inputs, labels_nest, loss_fn, step):
    p = self.params
    # The batch must divide into the declared micro-batches even when
    # full_batch batch norm runs it as one.
    microbatch.CheckDivisible(microbatch.StaticBatchSize(inputs),
                              p.num_micro_batches)
    m = self.effective_micro_batches
    x_mb = microbatch.Split(inputs, m)
    lab_mb = microbatch.Split(labels_nest, m)
    plan = executor_lib.Plan(self.schedule_table, self._remat_flags)
    bodies = [_StageBody(self.StageCells(k), loss_fn)
              for k in range(p.num_stages)]
    stage_vars = [[v for v in self.StageVariables(k) if v.trainable]
                  for k in range(p.num_stages)]
    ex = executor_lib.Executor(bodies, self._devices, stage_vars, plan,
                               self._GradAccumulator,
                               parallel_iterations=p.parallel_iterations)
    loss, sums, grads, stats = ex.Run(x_mb, lab_mb, step)
    out_grads = [grads.get(v.ref(), None) for v in self.TrainableVariables()]
    out_grads = [g if g is not None else tf.zeros_like(v)
                 for g, v in zip(out_grads, self.TrainableVariables())]
    return loss, sums, out_grads, stats
