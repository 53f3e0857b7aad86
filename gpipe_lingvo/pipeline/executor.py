"""The executor's front door: runs a training step, or a forward, of a
tick table.

`Plan` holds what is static about a step (the table, which micro-batches
are recomputed, the tick loop's columns and buffer slots); `Executor`
traces each chunk into a stage function, creates the accumulator variables
weight gradients are summed in, runs the table in one of two executions
and reads the results:
- 'ticks' (ticks.py): one tf.while_loop over the table's lockstep ticks;
- 'dataflow' (dataflow.py): every action unrolled, chained per device.
`ChooseExecution` picks one for execution='auto'.
"""
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Protocol,
                    Sequence, Tuple)

import numpy as np
import tensorflow as tf

from gpipe_lingvo.pipeline import actions
from gpipe_lingvo.pipeline import dataflow
from gpipe_lingvo.pipeline import params_check
from gpipe_lingvo.pipeline import placement as placement_lib
from gpipe_lingvo.pipeline import schedule as schedule_lib
from gpipe_lingvo.pipeline import stage_function
from gpipe_lingvo.pipeline import ticks

REMAT_POLICIES = ('always', 'except_last', 'never')
# 'ticks': one tf.while_loop over the table's lockstep ticks (ticks.py);
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


def _Flat(nest) -> list:
  return [] if nest is None else tf.nest.flatten(nest)


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
    accs = self.Accumulators(fns)
    zeroed = self.ZeroAccumulators(fns, accs)
    run = self._Run(actions.ActionBuilder(fns, accs), plan, x_mb, labels_mb,
                    step, zeroed)
    grads = self.ReadGradients(fns, accs, run.last_ops)
    sums, stats = self.UnpackAux(run.aux)
    return StepResult(run.loss, sums, grads, stats)

  @tf.autograph.experimental.do_not_convert
  def Forward(self, plan: Plan, x_mb, step) -> Tuple[Any, Dict[str, list]]:
    """Outputs of the last chunk as a nest of [M, b, ...], and the
    statistics the forwards recorded."""
    step = tf.cast(step, tf.int64)
    fns, out_struct = self.TraceStages(x_mb, None, backward=False)
    run = self._Run(actions.ActionBuilder(fns), plan, x_mb, None, step, [])
    _, stats = self.UnpackAux(run.aux)
    return tf.nest.pack_sequence_as(out_struct, run.outputs), stats

  def _Run(self, builder: actions.ActionBuilder, plan: Plan, x_mb,
           labels_mb, step, zeroed: List[list]) -> actions.StepOutputs:
    """The table's graph in this executor's execution, started after the
    per-chunk ops `zeroed`."""
    scope = self.placement.OpScope
    if self.execution == 'dataflow':
      return dataflow.DataflowStep(builder, scope, plan.table, plan.remat,
                                   x_mb, labels_mb, step, zeroed,
                                   host_order=self.host_order).Run()
    return ticks.TickStep(builder, scope, plan, x_mb, labels_mb, step,
                          [op for ops in zeroed for op in ops],
                          self.parallel_iterations).Run()

  def Accumulators(self, fns) -> Dict[Any, tf.Variable]:
    """variable.ref() -> the variable its gradient is summed in."""
    return {v.ref(): self.accumulator_fn(v, c) for c, fn in enumerate(fns)
            for v in fn.variables}

  def ZeroAccumulators(self, fns, accs) -> List[list]:
    """Per chunk, the ops setting its variables' accumulators to zero (each
    where the chunk lives); either execution starts a step after them."""
    out = []
    for c, fn in enumerate(fns):
      with self.placement.OpScope(c):
        out.append([accs[v.ref()].assign(tf.zeros_like(accs[v.ref()]),
                                         read_value=False)
                    for v in fn.variables])
    return out

  def ReadGradients(self, fns, accs, after) -> Dict[Any, tf.Tensor]:
    """The summed gradients, read where each chunk lives once `after` ran."""
    grads = {}
    with tf.control_dependencies(actions.Joined(after)):
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
      body = _FlatBody(self.bodies[c], self.placement, c, in_struct, labels)
      specs = (tf.nest.flatten(in_struct) + _Flat(labels) +
               [tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32)])
      fn = stage_function.StageFunction(
          body, specs, self.variables[c],
          scope=lambda c=c: self.placement.OpScope(c),
          num_inputs=len(tf.nest.flatten(in_struct)), backward=backward)
      fns.append(fn)
      in_struct = tf.nest.pack_sequence_as(
          body.out_struct, fn.output_specs[:fn.num_diff])
    return fns, body.out_struct


class _FlatBody:
  """Chunk c's body as a function of flat tensors (what StageFunction
  traces): inputs, labels (last chunk only), step, micro-batch. Tracing it
  records the structure of its outputs in `out_struct`."""

  def __init__(self, body: StageBody, placement: placement_lib.Placement,
               c: int, in_struct, label_struct):
    self.body, self.placement, self.c = body, placement, c
    self.in_struct, self.label_struct = in_struct, label_struct
    self.n_in = len(tf.nest.flatten(in_struct))
    self.n_lab = len(_Flat(label_struct))
    self.out_struct = None  # set when traced

  def __call__(self, *args):
    n_in, n_lab = self.n_in, self.n_lab
    x = tf.nest.pack_sequence_as(
        self.in_struct, self.placement.PinInputs(self.c, list(args[:n_in])))
    labels = None if self.label_struct is None else tf.nest.pack_sequence_as(
        self.label_struct, list(args[n_in:n_in + n_lab]))
    outputs, aux = self.body(x, labels, args[-2], args[-1])
    self.out_struct = tf.nest.map_structure(lambda _: None, outputs)
    return self.placement.PinOutputs(self.c, tf.nest.flatten(outputs)), aux
