"""PipelinedNetwork: a sequence of cells trained with GPipe.

Params declare the cells, the number of stages K, micro-batches M and chunks
per device v, the schedule, the re-materialization policy, the partition and
the device topology. The cells are cut into K*v chunks; chunk c lives where
the placement puts it (device chunk_device[c]). Cells are direct children
named as in layers.Sequential, so checkpoints depend on none of K, M, v.
Training steps and FProp both run through the executor.
"""
import contextlib
from typing import List

import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo import devices
from gpipe_lingvo import hyperparams
from gpipe_lingvo.layers import normalization
from gpipe_lingvo.layers import sequential
from gpipe_lingvo.layers import tied
from gpipe_lingvo.pipeline import executor as executor_lib
from gpipe_lingvo.pipeline import microbatch
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.planning import partition as partition_lib
from gpipe_lingvo.planning import resolve
from gpipe_lingvo.pipeline import placement as placement_lib
from gpipe_lingvo.pipeline import schedule as schedule_lib
from gpipe_lingvo.pipeline import stage_function


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


class _ChunkBody:
  """The Python forward of one chunk (its cells; the loss when it gets
  labels), in the step context of one micro-batch. Implements
  executor.StageBody."""

  def __init__(self, cells, loss_fn=None, training=True, recompute=None):
    self.cells = cells
    # Per cell: recomputed in the backward (stage_function.Recomputed).
    self.recompute = recompute or [False] * len(cells)
    self.loss_fn = loss_fn
    self.training = training
    self._metric_struct = None
    self._stats_layout = []

  def __call__(self, inputs, labels, step, micro_batch):
    stats = {}
    x = inputs
    with context.Scope(training=self.training, step=step,
                       micro_batch=micro_batch, stats=stats):
      for cell, again in zip(self.cells, self.recompute):
        with (stage_function.Recomputed() if again else
              contextlib.nullcontext()):
          x = cell.FProp(x)
      if labels is not None:
        x, sums = self.loss_fn(x, labels)
        self._metric_struct = sums
    self._stats_layout = [(p, len(stats[p])) for p in sorted(stats)]
    aux = [] if labels is None else tf.nest.flatten(self._metric_struct)
    for p in sorted(stats):
      for tup in stats[p]:
        aux.extend(tup)
    return x, aux

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
             f'One of {schedule_lib.SCHEDULES} (see docs/engine.md).')
    p.Define('virtual_stages', 1,
             'Model chunks per device v: the cells are cut into K*v chunks '
             'and device d holds chunks d, d+K, ... (interleaved_1f1b; '
             'zb_v needs 2; other schedules 1).')
    p.Define('remat', 'always',
             f'Re-materialization policy, one of '
             f'{executor_lib.REMAT_POLICIES} (whole micro-batches), or a '
             'list of booleans, one per cell: the cells marked True are '
             'recomputed in the backward, the others keep their '
             "activations; 'auto' lets the trainer choose.")
    p.Define('partition', 'uniform',
             "'uniform' (by cell count), a list of cell counts per chunk "
             "(per stage when virtual_stages is 1), or a cost to balance "
             "exactly over the chunks: 'params', 'flops', 'memory' or "
             "'time' (planning/resolve.py; within "
             'topology.memory_budget_bytes per device if set).')
    p.Define('input_shape', None,
             'Shape [batch, ...] of the network input: a network built '
             'outside the trainer traces its cells (float32, no loss) at '
             'its micro-batch shape for a cost partition (the trainer '
             'resolves the cut with the model instead).')
    p.Define('cell_costs_path', '',
             'JSON file caching the traced (and, for time, measured) cell '
             'costs; the trainer sets <logdir>/cell_costs.json.')
    p.Define('batch_norm_mode', '',
             f'If set, one of {normalization.MODES}, applied to every '
             "BatchNorm inside the cells ('' keeps each layer's own mode; a "
             'string default so that text overrides can set it).')
    p.Define('execution', 'dataflow',
             f'How the schedule runs, one of {executor_lib.EXECUTION_CHOICES}'
             ": 'dataflow' unrolls the table's actions, chained per device, "
             'so devices do not wait for each other at tick ends; '
             "'ticks' is one tf.while_loop over lockstep clock ticks (a "
             "graph of one copy of each chunk whatever K and M); 'auto' "
             'picks ticks above executor.AUTO_DATAFLOW_MAX_ACTIONS actions '
             'per step (see docs/engine.md).')
    p.Define('action_order', 'auto',
             "execution='dataflow': 'device' chains each device's actions "
             "in the table's order; 'host' chains every action in it, "
             'whatever its device (one op at a time: what the host holds is '
             "the plan's, not the executor's pick among ready ops); 'auto': "
             "'host' for logical CPU devices with topology.inter_op_threads "
             "= 1, else 'device' (docs/planner.md, Concurrency).")
    p.Define('parallel_iterations', 1,
             "Ticks the step loop may run ahead (execution='ticks'); 1 "
             'keeps memory lowest.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    self._CheckParams()
    # The cut --mode=plan prints (the trainer resolves a cost partition
    # with the model's loss and input first: resolve.PrepareNetworkParams).
    self._ranges = resolve.Resolve(p)
    self._chunk_device = schedule_lib.ChunkDevices(p.schedule, p.num_stages,
                                                   p.virtual_stages)
    self._placement = self._MakePlacement()
    cells = list(p.cells)
    if p.batch_norm_mode:
      cells = [_OverrideBatchNormMode(c, p.batch_norm_mode) for c in cells]
    names = sequential.CellNames(cells)
    self._cell_names = names
    for c, (a, b) in enumerate(self._ranges):
      with self._placement.VariableScope(c):
        for n, cell in zip(names[a:b], cells[a:b]):
          self.CreateChild(n, cell)
    # A tied variable lives where its owner's chunk is; every chunk that
    # uses it lists it (ChunkVariables), and its gradients from all of them
    # are summed in one accumulator.
    tied.Tie(self.cells)
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
    self._forward_fns = _Untracked()
    try:
      self.schedule_table = schedule_lib.Build(
          p.schedule, p.num_stages, self.effective_micro_batches,
          p.virtual_stages)
    except schedule_lib.ScheduleError as e:
      note = (' (batch_norm_mode full_batch runs the step as one '
              'micro-batch)' if self.full_batch_bn else '')
      raise schedule_lib.ScheduleError(f'{self.path}: {e}{note}') from None
    self._cell_remat = params_check.CellRemat(p.remat, len(p.cells),
                                              self.path)
    self._remat_flags = executor_lib.RematFlags(
        self._cell_remat or p.remat, self.effective_micro_batches)
    # The execution the step runs ('auto' resolved for this table).
    self.execution = executor_lib.ChooseExecution(
        p.execution, sum(len(a) for a in self.schedule_table.actions))
    self.host_order = executor_lib.HostOrder(p.action_order, p.topology)

  def _CheckParams(self):
    """Errors that name the fields, raised before anything is built."""
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
    if p.execution not in executor_lib.EXECUTION_CHOICES:
      raise ValueError(f'{self.path}: unknown execution {p.execution!r}; use '
                       f'one of {executor_lib.EXECUTION_CHOICES}.')
    if p.action_order not in executor_lib.ACTION_ORDERS:
      raise ValueError(f'{self.path}: unknown action_order '
                       f'{p.action_order!r}; use one of '
                       f'{executor_lib.ACTION_ORDERS}.')
    if (isinstance(params_check.ParseList(p.remat), str) and
        p.remat not in executor_lib.REMAT_POLICIES):
      raise ValueError(f'{self.path}: unknown remat policy {p.remat!r}; use '
                       f'one of {executor_lib.REMAT_POLICIES}.')
    if p.batch_norm_mode and p.batch_norm_mode not in normalization.MODES:
      raise ValueError(f'{self.path}: unknown batch_norm_mode '
                       f'{p.batch_norm_mode!r}; use one of '
                       f"{normalization.MODES} or '' (no override).")
    try:
      schedule_lib.CheckConfig(p.schedule, p.num_stages, p.num_micro_batches,
                               p.virtual_stages)
    except schedule_lib.ScheduleError as e:
      raise schedule_lib.ScheduleError(f'{self.path}: {e}') from None
    chunks = p.num_stages * p.virtual_stages
    if p.virtual_stages > 1 and chunks > len(p.cells):
      raise partition_lib.PartitionError(
          f'{self.path}: num_stages={p.num_stages} x virtual_stages='
          f'{p.virtual_stages} = {chunks} chunks but the network has '
          f'{len(p.cells)} cells: every chunk needs a cell. Lower '
          'virtual_stages or num_stages.')
    if (p.virtual_stages > 1 and isinstance(p.partition, (list, tuple)) and
        len(p.partition) != chunks):
      raise partition_lib.PartitionError(
          f'{self.path}: partition {list(p.partition)} has '
          f'{len(p.partition)} entries but num_stages x virtual_stages = '
          f'{chunks} chunks; give one cell count per chunk.')

  def _MakePlacement(self) -> placement_lib.Placement:
    """Device scopes or logical-core annotations, as the topology says."""
    p = self.params
    topo = p.topology
    devices.CheckTopology(topo, p.num_stages, f'{self.path}.topology')
    if devices.Placement(topo) == placement_lib.LOGICAL_CORES:
      # Built under a strategy's scope (TPUStrategy), its variables go where
      # the strategy puts them; no local device count applies.
      strategy = (tf.distribute.get_strategy() if tf.distribute.has_strategy()
                  else None)
      return placement_lib.LogicalCores(
          [cores[0] for cores in devices.StageIndices(
              p.num_stages, topo.devices_per_stage)],
          self._chunk_device, strategy)
    return placement_lib.DeviceScopes(self._CheckDevices(),
                                      self._chunk_device)

  def _CheckDevices(self):
    p = self.params
    topo = p.topology
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
  def cells(self) -> List[base_layer.BaseLayer]:
    return [getattr(self, n) for n in self._cell_names]

  @property
  def num_chunks(self) -> int:
    return len(self._ranges)

  @property
  def chunk_device(self) -> List[int]:
    return list(self._chunk_device)

  @property
  def placement(self) -> placement_lib.Placement:
    return self._placement

  def _ChunkRemat(self, c: int):
    """Per cell of chunk c: recomputed in the backward (per-cell remat)."""
    a, b = self._ranges[c]
    return None if self._cell_remat is None else self._cell_remat[a:b]

  def ChunkCells(self, c: int) -> List[base_layer.BaseLayer]:
    a, b = self._ranges[c]
    return self.cells[a:b]

  def StageCells(self, k: int) -> List[base_layer.BaseLayer]:
    """Cells of every chunk on device k, in chunk order."""
    return [cell for c in range(self.num_chunks)
            if self._chunk_device[c] == k for cell in self.ChunkCells(c)]

  @property
  def stage_devices(self) -> List[str]:
    """Where each stage runs: a device name, or 'logical core k'."""
    first = {}
    for c, k in enumerate(self._chunk_device):
      first.setdefault(k, c)
    return [self._placement.Name(first[k]) for k in range(self.num_stages)]

  def VariablePlacement(self) -> placement_lib.VariablePlacement:
    """Where optimizer slots of each variable are created and its update
    runs: the placement of its chunk."""
    return placement_lib.VariablePlacement(self._placement, {
        v.ref(): c for c in range(self.num_chunks)
        for v in self.ChunkVariables(c, include_borrowed=False)})

  @property
  def num_stages(self) -> int:
    return self.params.num_stages

  def ChunkVariables(self, c: int, include_borrowed: bool = True
                     ) -> List[tf.Variable]:
    """Variables chunk c's cells use, each once: a tied variable is listed
    by every chunk that uses it (include_borrowed=False: only by its
    owner's)."""
    out = {}
    for cell in self.ChunkCells(c):
      for v in cell.AllVariables(include_borrowed):
        out.setdefault(v.ref(), v)
    return list(out.values())

  def StageVariables(self, k: int) -> List[tf.Variable]:
    """Variables the cells of stage k own (a tied variable: its owner's)."""
    out = {}
    for cell in self.StageCells(k):
      for v in cell.AllVariables(include_borrowed=False):
        out.setdefault(v.ref(), v)
    return list(out.values())

  def _Executor(self, bodies) -> executor_lib.Executor:
    return executor_lib.Executor(
        bodies, self._placement,
        [[v for v in self.ChunkVariables(c) if v.trainable]
         for c in range(self.num_chunks)],
        self._GradAccumulator,
        parallel_iterations=self.params.parallel_iterations,
        execution=self.execution, host_order=self.host_order)

  # -- forward -----------------------------------------------------------------

  @tf.autograph.experimental.do_not_convert
  def FProp(self, inputs):
    """The network's forward, through the same executor and chunk functions
    as the training step, with a forward-only table. In training the
    micro-batches run fill-drain (batch norm sees micro-batches and records
    its statistics once per micro-batch); evaluation runs the whole batch as
    one micro-batch. Differentiable under tf.GradientTape like any layer
    (without re-materialization: the tape keeps what it needs)."""
    ctx = context.Current()
    training = bool(ctx.training)
    m = self.effective_micro_batches if training else 1
    if m > 1:
      x_mb = microbatch.Split(inputs, m)
    else:
      x_mb = tf.nest.map_structure(lambda t: t[tf.newaxis], inputs)
    step = tf.cast(ctx.step, tf.int64)
    if tf.executing_eagerly():
      fn = self._forward_fns.table.get(training)
      if fn is None:
        fn = tf.function(lambda x, s: self._ForwardMicroBatches(x, s, training),
                         autograph=False)
        self._forward_fns.table[training] = fn
      out_mb, stats = fn(x_mb, step)
    else:
      out_mb, stats = self._ForwardMicroBatches(x_mb, step, training)
    for path, tuples in stats.items():
      for tup in tuples:
        context.AddStats(path, tuple(tup))
    return microbatch.Merge(out_mb)

  def _ForwardMicroBatches(self, x_mb, step, training):
    m = tf.nest.flatten(x_mb)[0].shape[0]
    table = schedule_lib.BuildForwardOnly(self._chunk_device, m)
    bodies = [_ChunkBody(self.ChunkCells(c), training=training)
              for c in range(self.num_chunks)]
    return self._Executor(bodies).Forward(
        executor_lib.Plan(table, [True] * m), x_mb, step)

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
      self.CreateGradientAccumulators()
      return tf.function(self._Step, autograph=False)(
          inputs, labels_nest, loss_fn, step)
    return self._Step(inputs, labels_nest, loss_fn, step)

  def CreateGradientAccumulators(self) -> None:
    """Creates the variables gradients are summed in (one per trainable
    variable, where it lives). Call before tracing a training step (the
    task's BuildOptimizer does): a variable created during a tf.function
    trace makes TensorFlow trace the whole step twice."""
    for c in range(self.num_chunks):
      for v in self.ChunkVariables(c, include_borrowed=False):
        if v.trainable:
          self._GradAccumulator(v, c)

  def _GradAccumulator(self, var, chunk):
    """A persistent, untracked variable in which var's gradient is summed
    over micro-batches (created once, outside any function trace, where the
    chunk's variables live; not a checkpoint key)."""
    accs = self._accumulators.table
    if var.ref() not in accs:
      with tf.init_scope(), self._placement.VariableScope(chunk):
        accs[var.ref()] = tf.Variable(tf.zeros(var.shape, var.dtype),
                                      trainable=False)
    return accs[var.ref()]

  def _Step(self, inputs, labels_nest, loss_fn, step):
    p = self.params
    # The batch must divide into the declared micro-batches even when
    # full_batch batch norm runs it as one.
    params_check.MicroBatchSize(microbatch.StaticBatchSize(inputs),
                                p.num_micro_batches, self.path)
    m = self.effective_micro_batches
    last = self.num_chunks - 1
    bodies = [_ChunkBody(self.ChunkCells(c), loss_fn if c == last else None,
                         recompute=self._ChunkRemat(c))
              for c in range(self.num_chunks)]
    loss, sums, grads, stats = self._Executor(bodies).Train(
        executor_lib.Plan(self.schedule_table, self._remat_flags),
        microbatch.Split(inputs, m), microbatch.Split(labels_nest, m), step)
    out_grads = [grads.get(v.ref(), None) for v in self.TrainableVariables()]
    out_grads = [g if g is not None else tf.zeros_like(v)
                 for g, v in zip(out_grads, self.TrainableVariables())]
    return loss, sums, out_grads, stats
