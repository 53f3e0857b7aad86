"""Runs a tick table: one tf.while_loop over the pipeline's clock ticks.

Each tick, every chunk whose column of the table names a micro-batch runs
that action in a tf.cond under its placement scope: the forwards first, then
the backwards, then the weight-gradient passes, as the schedule's tick rule
says. The graph holds one copy of each chunk's functions whatever K, v and
M are. Activations and gradients move between chunks through TensorArray
ring buffers whose slots come from lifetimes in the table; forwards and
backwards read the buffers as they were at the start of the tick, so
devices do not wait for each other inside a tick. Weight gradients are
added in place into persistent accumulator variables as they are produced.

Re-materialization, per micro-batch:
- kept: the forward stashes the residuals its backward reads;
- recomputed: the forward keeps only the chunk input (in the input buffer
  anyway); the backward reruns the forward once the incoming gradient exists
  (a control dependency, so the runtime cannot run it early and keep its
  activations) and runs the backward on the fresh residuals.
With a split backward (B and W actions), B also stashes the tensors W needs
("weight inputs") until W runs; W never recomputes anything.
"""
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Protocol,
                    Sequence, Tuple)

import numpy as np
import tensorflow as tf

from gpipe_lingvo.pipeline import dataflow
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.pipeline import placement as placement_lib
from gpipe_lingvo.pipeline import schedule as schedule_lib
from gpipe_lingvo.pipeline import stage_function

REMAT_POLICIES = ('always', 'except_last', 'never')
# 'ticks': one tf.while_loop over the table's lockstep ticks (this module);
# 'dataflow': the table's actions unrolled, chained per device (dataflow.py).
EXECUTIONS = ('dataflow', 'ticks')
# 'auto' picks one of EXECUTIONS per table (ChooseExecution).
EXECUTION_CHOICES = EXECUTIONS + ('auto',)
# Above this many actions per step, 'auto' runs the tick loop: the
# unrolled graph's build time and memory grow with the actions (at K=8:
# 34 s and 2.2x the tick loop's memory at 256 actions, 76 s and 5x at
# 512; bench/execution_bench.py, README).
AUTO_DATAFLOW_MAX_ACTIONS = 256
F, B, W = schedule_lib.F, schedule_lib.B, schedule_lib.W


# Scopes both executions name their ops with: an action's (the micro-batch
# follows from the table and the loop iteration here), and inside a B's the
# forward it reruns.
ActionScope = dataflow.ActionScope
RECOMPUTE_SCOPE = dataflow.RECOMPUTE_SCOPE


def ChooseExecution(execution: str, num_actions: int) -> str:
  """The execution that runs a table of `num_actions` actions: 'auto' is
  'dataflow' (no lockstep waits, no per-tick cost, buffers freed after
  their last reader) unless its unrolled graph would hold more than
  AUTO_DATAFLOW_MAX_ACTIONS actions, then 'ticks' (one copy of each chunk's
  functions whatever K, v and M are)."""
  if execution != 'auto':
    return execution
  return 'dataflow' if num_actions <= AUTO_DATAFLOW_MAX_ACTIONS else 'ticks'


ACTION_ORDERS = ('auto', 'device', 'host')


def HostOrder(action_order: str, topology) -> bool:
  """Whether execution='dataflow' chains all actions in one order
  (DataflowStep's host_order): 'auto' does for logical CPU devices on a
  host running one op at a time, where a step's peak otherwise depends on
  which ready op of two actions the executor picks (docs/planner.md)."""
  if action_order != 'auto':
    return action_order == 'host'
  threads = dict(topology.IterParams()).get('inter_op_threads', 0)
  return topology.device_type == 'cpu' and threads == 1


def NumActions(schedule: str, num_stages: int, num_micro_batches: int,
               virtual_stages: int = 1) -> int:
  """Actions of a training step's table (pure: no TensorFlow)."""
  return sum(len(a) for a in schedule_lib.Build(
      schedule, num_stages, num_micro_batches, virtual_stages).actions)


def RematFlags(policy, num_micro_batches: int) -> List[bool]:
  """Per micro-batch: True where its chunk forwards are recomputed. A
  per-cell list (recompute some cells, every micro-batch) keeps whole
  micro-batches: the stage functions recompute the cells it marks."""
  if isinstance(params_check.ParseList(policy), (list, tuple)):
    return [False] * num_micro_batches
  if policy == 'always':
    return [True] * num_micro_batches
  if policy == 'never':
    return [False] * num_micro_batches
  if policy == 'except_last':
    # As torchgpipe: the last micro-batch's backward follows its forward at
    # once, so recomputing it would save nothing.
    return [True] * (num_micro_batches - 1) + [False]
  raise ValueError(f'Unknown remat policy {policy!r}; use one of '
                   f'{REMAT_POLICIES}.')


class StageBody(Protocol):
  """What the executor needs from the Python forward of one chunk."""

  def __call__(self, inputs: Any, labels: Any, step: tf.Tensor,
               micro_batch: tf.Tensor) -> Tuple[Any, List[tf.Tensor]]:
    """(outputs, aux): outputs is a nest of tensors (the loss contribution
    of the micro-batch for the last chunk of a training step); aux is a list
    of tensors summed over micro-batches (metrics, statistics). labels is
    None except for the last chunk of a training step."""

  def UnpackAux(self, aux: Sequence[tf.Tensor]) -> Tuple[Any, Dict[str, list]]:
    """(metric sums or None, {layer path: [statistics tuples]}) from the
    summed aux outputs."""


class StepResult(NamedTuple):
  loss: tf.Tensor
  metric_sums: Any
  grads: Dict[Any, tf.Tensor]  # variable.ref() -> gradient
  stats: Dict[str, list]


Slots = schedule_lib.Slots


class Plan:
  """Everything static about one step: the table, which micro-batches are
  recomputed, the per-tick columns the loop reads and the buffer slots."""

  def __init__(self, table: schedule_lib.TickTable, remat: Sequence[bool]):
    self.table = table
    self.remat = list(remat)
    # (kind, recompute) -> int32 [ticks, chunks]: the micro-batch of each
    # chunk's action of that kind and variant at each tick, or -1.
    self.columns = {(kind, recompute): self._Column(kind, recompute)
                    for kind in (F, B) for recompute in (False, True)}
    self.columns[(W, False)] = self._Column(W, None)
    self._AssignSlots()

  def _Column(self, kind, recompute):
    t = self.table
    return np.array(
        [[i if i >= 0 and (recompute is None or self.remat[i] == recompute)
          else -1 for i in t.Column(kind, c)] for c in range(t.num_chunks)],
        np.int32).T.reshape(t.num_ticks, t.num_chunks)

  def _AssignSlots(self):
    """Buffer slots of the table (TickTable.BufferSlots, as the planner
    counts them): inputs, gradients of outputs, kept residuals, weight
    inputs."""
    slots = [self.table.BufferSlots(c, self.remat)
             for c in range(self.table.num_chunks)]
    self.inputs = [x['inputs'] for x in slots]
    self.grads = [x['grads'] for x in slots]
    self.residuals = [x['residuals'] for x in slots]
    self.weight_inputs = [x['weight_inputs'] for x in slots]

  def Runs(self, kind: str, recompute: bool, chunk: int) -> bool:
    return bool((self.columns[(kind, recompute)][:, chunk] >= 0).any())


_WHOLE = -1  # in a (field, chunk) key: the whole field, not one chunk's


class _State(NamedTuple):
  """The while loop's variables (lists are per chunk)."""
  t: tf.Tensor
  acts: list           # TensorArrays of each chunk's inputs (none: chunk 0)
  grads: list          # TensorArrays of gradients of each chunk's outputs
  residuals: list      # TensorArrays of kept residuals
  weight_inputs: list  # TensorArrays B hands to W
  aux: list            # running sums of each chunk's aux outputs
  loss: tf.Tensor
  outputs: list        # forward only: TensorArrays of the last outputs


def _TensorArrays(specs, slots: Optional[Slots]):
  if slots is None or not slots.size:
    return []
  return [tf.TensorArray(s.dtype, size=slots.size, element_shape=s.shape,
                         clear_after_read=False) for s in specs]


def _Flat(nest) -> list:
  return [] if nest is None else tf.nest.flatten(nest)


def _Lookup(slots: Slots, i):
  return tf.gather(tf.constant(slots.slot, tf.int32), i)


class Executor:
  """Builds a pipeline's training step, or its forward, for fixed shapes.

  bodies: one per chunk; placement: where each chunk runs; variables: the
  trainable variables of each chunk; accumulator_fn(variable, chunk): a
  persistent variable of the same shape into which the gradient is summed
  (training only).
  """

  def __init__(self, bodies: Sequence[StageBody],
               placement: placement_lib.Placement,
               variables: Sequence[Sequence[tf.Variable]],
               accumulator_fn: Optional[Callable] = None,
               parallel_iterations: int = 1, execution: str = 'ticks',
               host_order: bool = False):
    if execution not in EXECUTIONS:
      raise ValueError(f'Unknown execution {execution!r}; use one of '
                       f'{EXECUTIONS}.')
    self.bodies = list(bodies)
    self.placement = placement
    self.variables = [list(v) for v in variables]
    self.accumulator_fn = accumulator_fn
    self.parallel_iterations = parallel_iterations
    self.execution = execution
    self.host_order = host_order  # dataflow.DataflowStep's

  @tf.autograph.experimental.do_not_convert
  def Train(self, plan: Plan, x_mb, labels_mb, step) -> StepResult:
    """x_mb, labels_mb: nests with leaves [M, b, ...]."""
    step = tf.cast(step, tf.int64)
    fns, _ = self.TraceStages(x_mb, labels_mb, backward=True)
    if self.execution == 'dataflow':
      return self._TrainDataflow(fns, plan, x_mb, labels_mb, step)
    run = _StepGraph(self, fns, plan, x_mb, labels_mb, step)
    state = run.Loop(run.AllocateBuffers())
    return run.CollectTraining(state)

  @tf.autograph.experimental.do_not_convert
  def Forward(self, plan: Plan, x_mb, step) -> Tuple[Any, Dict[str, list]]:
    """Outputs of the last chunk as a nest of [M, b, ...], and the
    statistics the forwards recorded."""
    step = tf.cast(step, tf.int64)
    fns, out_struct = self.TraceStages(x_mb, None, backward=False)
    if self.execution == 'dataflow':
      run = dataflow.DataflowStep(fns, self.placement.OpScope, plan.table,
                                  plan.remat, x_mb, None, step,
                                  host_order=self.host_order).Run()
      _, stats = self.UnpackAux(run.Aux())
      return tf.nest.pack_sequence_as(out_struct, run.StackedOutputs()), stats
    run = _StepGraph(self, fns, plan, x_mb, None, step)
    return run.CollectForward(run.Loop(run.AllocateBuffers()), out_struct)

  def _TrainDataflow(self, fns, plan: Plan, x_mb, labels_mb, step
                     ) -> StepResult:
    accs = self.Accumulators(fns)
    run = dataflow.DataflowStep(fns, self.placement.OpScope, plan.table,
                                plan.remat, x_mb, labels_mb, step,
                                accs, host_order=self.host_order).Run()
    grads = self.ReadGradients(fns, accs, run.last_ops)
    sums, stats = self.UnpackAux(run.Aux())
    return StepResult(run.loss, sums, grads, stats)

  def Accumulators(self, fns) -> Dict[Any, tf.Variable]:
    """variable.ref() -> the variable its gradient is summed in."""
    return {v.ref(): self.accumulator_fn(v, c) for c, fn in enumerate(fns)
            for v in fn.variables}

  def ReadGradients(self, fns, accs, after) -> Dict[Any, tf.Tensor]:
    """The summed gradients, read where each chunk lives once `after` ran."""
    grads = {}
    with tf.control_dependencies(after):
      for c, fn in enumerate(fns):
        with self.placement.OpScope(c):
          for v in fn.variables:
            grads[v.ref()] = accs[v.ref()].read_value()
    return grads

  def UnpackAux(self, aux_per_chunk) -> Tuple[Any, Dict[str, list]]:
    """(metric sums of the last chunk, {layer path: statistics}) from
    each chunk's summed aux outputs."""
    aux = [self.bodies[c].UnpackAux(a) for c, a in enumerate(aux_per_chunk)]
    stats = {}
    for _, chunk_stats in aux:
      for path, tuples in chunk_stats.items():
        stats.setdefault(path, []).extend(tuples)
    return aux[-1][0], stats

  def TraceStages(self, x_mb, labels_mb, backward: bool
                  ) -> Tuple[List[stage_function.StageFunction], Any]:
    """Each chunk traced at micro-batch shapes; chunk c's input structure is
    chunk c-1's output structure. The last chunk gets the labels. Returns
    the functions and the structure of the last chunk's outputs."""
    c_all = len(self.bodies)
    in_struct = tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape[1:], t.dtype), x_mb)
    lab_struct = None if labels_mb is None else tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape[1:], t.dtype), labels_mb)
    fns = []
    for c in range(c_all):
      labels = lab_struct if c == c_all - 1 else None
      body, info = self._FlatBody(c, in_struct, labels)
      specs = (tf.nest.flatten(in_struct) + _Flat(labels) +
               [tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32)])
      fn = stage_function.StageFunction(
          body, specs, self.variables[c],
          scope=lambda c=c: self.placement.OpScope(c),
          num_inputs=len(tf.nest.flatten(in_struct)), backward=backward)
      fns.append(fn)
      in_struct = tf.nest.pack_sequence_as(
          info['struct'], fn.output_specs[:fn.num_diff])
    return fns, info['struct']

  def _FlatBody(self, c, in_struct, label_struct):
    """Chunk c's body as a function of flat tensors (what StageFunction
    traces); records the structure of its outputs in `info`."""
    n_in = len(tf.nest.flatten(in_struct))
    n_lab = len(_Flat(label_struct))
    info = {}

    def Body(*args):
      x = tf.nest.pack_sequence_as(
          in_struct, self.placement.PinInputs(c, list(args[:n_in])))
      labels = None if label_struct is None else tf.nest.pack_sequence_as(
          label_struct, list(args[n_in:n_in + n_lab]))
      outputs, aux = self.bodies[c](x, labels, args[-2], args[-1])
      info['struct'] = tf.nest.map_structure(lambda _: None, outputs)
      return self.placement.PinOutputs(c, tf.nest.flatten(outputs)), aux

    return Body, info


class _StepGraph:
  """The graph of one call: buffers, one tick's actions, the results."""

  def __init__(self, ex: Executor, fns, plan: Plan, x_mb, labels_mb, step):
    self.ex, self.fns, self.plan = ex, fns, plan
    self.scope = ex.placement.OpScope
    self.c_all = len(fns)
    self.x_flat = tf.nest.flatten(x_mb)
    self.labels_flat = (None if labels_mb is None else
                        tf.nest.flatten(labels_mb))
    self.step = step
    self.chunk_device = plan.table.chunk_device
    self.k_all = plan.table.num_devices
    table = plan.table
    if table.one_action_per_tick:
      self.slots = [(F, B, W)]
    else:
      self.slots = [(F,), (B,), (W,)][:1 if table.forward_only else
                                      3 if table.split_backward else 2]
    self.accs = {}

  # -- buffers -----------------------------------------------------------------

  def AllocateBuffers(self) -> _State:
    plan, fns, c_all = self.plan, self.fns, self.c_all
    acts, grads, res, wins, aux = [[]], [], [], [], []
    for c in range(c_all):
      fn = fns[c]
      with self.scope(c):
        if c > 0:
          prev = fns[c - 1]
          acts.append(_TensorArrays(prev.output_specs[:prev.num_diff],
                                    plan.inputs[c]))
        res.append(_TensorArrays(fn.residual_specs, plan.residuals[c]))
        wins.append(_TensorArrays(
            fn.WeightInputSpecs(c > 0) if plan.weight_inputs[c] else [],
            plan.weight_inputs[c]))
        aux.append([tf.zeros(s.shape, s.dtype)
                    for s in fn.output_specs[fn.num_diff:]])
      with self.scope(min(c + 1, c_all - 1)):
        grads.append(_TensorArrays(
            [s for s, tr in zip(fn.output_specs[:fn.num_diff],
                                fn.diff_trainable) if tr], plan.grads[c]))
    last = fns[-1]
    outputs = []
    if self.plan.table.forward_only:
      m = self.plan.table.num_micro_batches
      with self.scope(c_all - 1):
        # Every micro-batch's output is held until the loop ends.
        outputs = _TensorArrays(last.output_specs[:last.num_diff],
                                schedule_lib.BufferSlots([(0, m)] * m))
    loss = tf.zeros([], last.output_specs[0].dtype)
    return _State(tf.constant(0), acts, grads, res, wins, aux, loss, outputs)

  def _Accumulators(self):
    """Zeroed accumulators; the loop starts after the zeroing."""
    self.accs = self.ex.Accumulators(self.fns)
    return [op for ops in dataflow.ZeroAccumulators(self.fns, self.accs,
                                                    self.scope)
            for op in ops]

  # -- the loop -------------------------------------------------------------------

  def Loop(self, state: _State) -> _State:
    deps = [] if self.plan.table.forward_only else self._Accumulators()
    with tf.control_dependencies(deps):
      state = tf.nest.map_structure(
          lambda t: tf.identity(t) if isinstance(t, tf.Tensor) else t, state)
    t_all = self.plan.table.num_ticks
    return tf.while_loop(
        lambda s: s.t < t_all, lambda s: [self.Tick(s)], [state],
        parallel_iterations=self.ex.parallel_iterations,
        maximum_iterations=t_all)[0]

  def Tick(self, s: _State) -> _State:
    """One clock tick. Each device runs its slots in the order of the
    tick rule (F, then B, then W; one slot for all three when the schedule
    runs one action per tick), each slot one tf.switch_case over the
    actions it may run. Actions read other chunks' buffers as they were at
    the start of the tick, so devices do not wait for each other."""
    start = s
    for kinds in self.slots:
      for d in range(self.k_all):
        s = self._Slot(kinds, d, s, start)
    return s._replace(t=s.t + 1)

  def _Slot(self, kinds, d, s: _State, start: _State) -> _State:
    variants = [(kind, c, recompute) for kind in kinds
                for c in range(self.c_all) if self.chunk_device[c] == d
                for recompute in ((False,) if kind == W else (False, True))
                if self.plan.Runs(kind, recompute, c)]
    if not variants:
      return s
    # Which variant runs at each tick (0: none) and on which micro-batch.
    which = np.zeros(self.plan.table.num_ticks, np.int32)
    mb = np.zeros(self.plan.table.num_ticks, np.int32)
    for j, (kind, c, recompute) in enumerate(variants):
      col = self.plan.columns[(kind, recompute)][:, c]
      assert not (which[col >= 0]).any(), 'two actions in one slot'
      which[col >= 0] = j + 1
      mb[col >= 0] = col[col >= 0]
    parts = {}
    for kind, c, _ in variants:
      parts.update(self._Touched(kind, c, s))
    i = tf.gather(tf.constant(mb), s.t)
    act = {F: self._Forward, B: self._Backward, W: self._Weight}

    def Run(kind, c, recompute):
      with tf.name_scope(ActionScope(kind, c)):
        return act[kind](c, i, recompute, dict(parts), start)

    branches = [lambda: dict(parts)] + [lambda v=v: Run(*v) for v in variants]
    return self._Put(s, tf.switch_case(tf.gather(tf.constant(which), s.t),
                                       branches))

  def _Touched(self, kind, c, s: _State) -> dict:
    """The parts of state s an action of `kind` on chunk c may change."""
    if kind == W:
      return {('weight_inputs', c): s.weight_inputs[c]}
    if kind == B:
      parts = {('residuals', c): s.residuals[c]}
      if c > 0:
        parts[('grads', c - 1)] = s.grads[c - 1]
      if self.plan.table.split_backward:
        parts[('weight_inputs', c)] = s.weight_inputs[c]
      return parts
    parts = {('aux', c): s.aux[c], ('residuals', c): s.residuals[c]}
    if c < self.c_all - 1:
      parts[('acts', c + 1)] = s.acts[c + 1]
    elif self.plan.table.forward_only:
      parts[('outputs', _WHOLE)] = s.outputs
    else:
      parts[('loss', _WHOLE)] = s.loss
    return parts

  @staticmethod
  def _Put(s: _State, parts: dict) -> _State:
    """s with `parts` replaced: keys are (field, chunk) for one chunk's
    entry of a per-chunk field, (field, _WHOLE) for a whole field."""
    fields = {}
    for (field, chunk), value in parts.items():
      if chunk == _WHOLE:
        fields[field] = value
      else:
        lst = list(fields.get(field, getattr(s, field)))
        lst[chunk] = value
        fields[field] = lst
    return s._replace(**fields)

  # -- one tick's actions ------------------------------------------------------------

  def _Args(self, c, i, xs):
    labels = []
    if c == self.c_all - 1 and self.labels_flat is not None:
      labels = [tf.gather(t, i) for t in self.labels_flat]
    return list(xs) + labels + [self.step, i]

  def _Inputs(self, c, i, acts_c):
    if c == 0:
      return [tf.gather(t, i) for t in self.x_flat]
    return [ta.read(_Lookup(self.plan.inputs[c], i)) for ta in acts_c]

  def _Forward(self, c, i, recompute, parts, start):
    """F of chunk c on micro-batch i: outputs to the next chunk's buffer (or
    the loss / the outputs), aux sums, and residuals unless recomputed."""
    fn, last = self.fns[c], self.c_all - 1
    with self.scope(c):
      args = self._Args(c, i, self._Inputs(c, i, start.acts[c]))
      if recompute:
        outs, res = fn.ForwardOutputs(args), []
      else:
        outs, res = fn.Forward(args)
      parts[('aux', c)] = [a + o for a, o in zip(parts[('aux', c)],
                                                 outs[fn.num_diff:])]
      outs = outs[:fn.num_diff]
      if c < last:
        slot = _Lookup(self.plan.inputs[c + 1], i)
        parts[('acts', c + 1)] = [ta.write(slot, o) for ta, o in
                                  zip(parts[('acts', c + 1)], outs)]
      elif self.plan.table.forward_only:
        parts[('outputs', _WHOLE)] = [
            ta.write(i, o) for ta, o in zip(parts[('outputs', _WHOLE)], outs)]
      else:
        parts[('loss', _WHOLE)] += outs[0]
      if res:
        slot = _Lookup(self.plan.residuals[c], i)
        parts[('residuals', c)] = [ta.write(slot, r) for ta, r in
                                   zip(parts[('residuals', c)], res)]
    return parts

  def _Backward(self, c, i, recompute, parts, start):
    """B of chunk c on micro-batch i: the gradient of its input to the
    previous chunk's buffer; weight gradients accumulated, or (split
    backward) the weight inputs stashed for W."""
    fn = self.fns[c]
    with self.scope(c):
      dys = self._OutputGrads(c, i, start.grads[c])
      if recompute:
        res = self._Recompute(c, i, dys, start.acts[c])
      else:
        slot = _Lookup(self.plan.residuals[c], i)
        res = [ta.read(slot) for ta in parts[('residuals', c)]]
      if self.plan.table.split_backward:
        in_grads, w_in = fn.BackwardInput(res, dys, input_grads=c > 0)
        slot = _Lookup(self.plan.weight_inputs[c], i)
        parts[('weight_inputs', c)] = [
            ta.write(slot, x) for ta, x in
            zip(parts[('weight_inputs', c)], w_in)]
      else:
        in_grads, var_grads = fn.Backward(res, dys, input_grads=c > 0)
        self._Accumulate(var_grads)
      if c > 0:
        parts[('grads', c - 1)] = self._WriteInputGrads(
            c, i, in_grads, parts[('grads', c - 1)])
    return parts

  def _Weight(self, c, i, recompute, parts, start):
    """W of chunk c on micro-batch i, from the weight inputs B stashed."""
    del recompute, start
    with self.scope(c):
      slot = _Lookup(self.plan.weight_inputs[c], i)
      w_in = [ta.read(slot) for ta in parts[('weight_inputs', c)]]
      self._Accumulate(self.fns[c].BackwardWeights(w_in, input_grads=c > 0))
    return parts

  def _OutputGrads(self, c, i, grads_c):
    if c == self.c_all - 1:
      return [tf.ones([], self.fns[c].output_specs[0].dtype)]
    slot = _Lookup(self.plan.grads[c], i)
    return [ta.read(slot) for ta in grads_c]

  def _Recompute(self, c, i, dys, acts_c):
    """Residuals of micro-batch i, recomputed once its output gradient
    exists. The recompute's aux outputs (statistics) are dropped: batch norm
    counts each micro-batch once, in its forward."""
    xs = self._Inputs(c, i, acts_c)
    with tf.control_dependencies(dys):
      xs = [tf.identity(x) for x in xs]
      i = tf.identity(i)
    with tf.name_scope(RECOMPUTE_SCOPE):
      return self.fns[c].Forward(self._Args(c, i, xs))[1]

  def _WriteInputGrads(self, c, i, in_grads, grads_prev):
    prev = self.fns[c - 1]
    gin = [g for g, tr in zip(in_grads, prev.diff_trainable) if tr]
    gin = [g if g is not None else tf.zeros(ta.element_shape, ta.dtype)
           for g, ta in zip(gin, grads_prev)]
    slot = _Lookup(self.plan.grads[c - 1], i)
    return [ta.write(slot, g) for ta, g in zip(grads_prev, gin)]

  def _Accumulate(self, var_grads):
    for v, g in var_grads:
      self.accs[v.ref()].assign_add(g, read_value=False)

  # -- results -----------------------------------------------------------------------

  def CollectTraining(self, state: _State) -> StepResult:
    grads = self.ex.ReadGradients(self.fns, self.accs, [state.loss])
    sums, stats = self.ex.UnpackAux(state.aux)
    return StepResult(state.loss, sums, grads, stats)

  def CollectForward(self, state: _State, out_struct):
    with self.scope(self.c_all - 1):
      flat = [ta.stack() for ta in state.outputs]
    _, stats = self.ex.UnpackAux(state.aux)
    return tf.nest.pack_sequence_as(out_struct, flat), stats
