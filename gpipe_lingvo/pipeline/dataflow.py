"""Runs a tick table as one unrolled dataflow graph (execution='dataflow').

The tick loop (executor._StepGraph) moves every device in lockstep: a tick
lasts as long as its slowest action, and each tick pays for a loop
iteration and a switch over the actions a device may run. Here every action
of the table is one call of its chunk's function (the function bodies are
traced once per chunk; only the call sites repeat). A device's actions are
chained in the table's order by control dependencies, so a device runs one
action at a time, in the schedule's order, and starts the next as soon as
its inputs exist: devices drift apart as far as the data allows, with no
clock between them. The tensors between actions are plain graph edges,
freed by the runtime after their last reader, so what is held at once
follows from the same per-device order the tick table's stash analysis
reads.

Weight gradients are added into the executor's accumulator variables in
each chunk's action order, as in the tick loop.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from gpipe_lingvo.pipeline import schedule as schedule_lib

F, B, W = schedule_lib.F, schedule_lib.B, schedule_lib.W
RECOMPUTE_SCOPE = 'recompute'  # inside a B's scope: the forward it reruns


def DeviceOrder(table: schedule_lib.TickTable
                ) -> List[Tuple[int, schedule_lib.Action]]:
  """(device, action) in an order that builds every action after the ones
  it reads: tick by tick, devices in turn, a device's actions of one tick in
  their order."""
  return [(d, a) for t in range(table.num_ticks)
          for d in range(table.num_devices) for a in table.ticks[t][d]]


def ActionScope(kind: str, chunk: int) -> str:
  """Name scope of one action's ops in either execution, e.g. `action_2F`:
  profiles show it, so a measured timeline can find every action
  (planning/measure.py)."""
  return f'action_{chunk}{kind}'


def MicroBatchScope(outer: str, a: schedule_lib.Action) -> str:
  """Absolute name scope of one dataflow action's ops, e.g.
  `.../action_2F/mb5/`: a profile then names the micro-batch of every op
  too, with no loop iteration to map it through."""
  return (f'{outer + "/" if outer else ""}{ActionScope(a.kind, a.chunk)}'
          f'/mb{a.mb}/')


def _Done(results) -> list:
  """Ops that finish when an action's results exist. A control edge from
  a call op is not enough: where TensorFlow inlines a function it keeps such
  edges only on the function's side effects (its variable reads), which
  happen first. Identities read the results themselves; an op (an
  accumulator update) is its own."""
  return [r if isinstance(r, tf.Operation) else tf.identity(r).op
          for r in results]


def ZeroAccumulators(fns, accs, scope) -> List[list]:
  """Per chunk, the ops setting its variables' accumulators to zero (each
  where the chunk lives); both executions start a step with them."""
  out = []
  for c, fn in enumerate(fns):
    with scope(c):
      out.append([accs[v.ref()].assign(tf.zeros_like(accs[v.ref()]),
                                       read_value=False)
                  for v in fn.variables])
  return out


def FusedBackwards(table: schedule_lib.TickTable) -> set:
  """(chunk, micro-batch) of each W that its device runs right after the
  B of the same chunk and micro-batch. Such a pair runs as one fused
  backward: the same work in the same order, without stashing W's inputs
  or paying for the split (as PyTorch's pipelining merges them)."""
  fused = set()
  for order in table.actions:  # each device's list, in the order it runs
    for a, nxt in zip(order, order[1:]):
      if a.kind == B and nxt == schedule_lib.Action(W, a.chunk, a.mb):
        fused.add((a.chunk, a.mb))
  return fused


class DataflowStep:
  """The graph of one call: every action of the table, chained per device.

  fns: each chunk's stage_function.StageFunction; scope(c): chunk c's
  placement scope; remat: per micro-batch, whether its forwards are
  recomputed in the backward; accumulators: variable.ref() -> the variable
  its gradient is summed in (training tables only). host_order: chain
  every action, whatever its device, in DeviceOrder (devices on one host
  that runs one op at a time): each starts once the one before it is done,
  so the host holds what the plan counts, not whatever the executor's pick
  among the ready ops of two actions happens to keep alive.
  """

  def __init__(self, fns, scope, table: schedule_lib.TickTable,
               remat: Sequence[bool], x_mb, labels_mb, step,
               accumulators=None, host_order: bool = False):
    self.fns, self.scope, self.table = fns, scope, table
    self.host_order = host_order
    self.accs = accumulators
    self.remat = list(remat)
    self.c_all = len(fns)
    self.x_flat = tf.nest.flatten(x_mb)
    self.labels_flat = (None if labels_mb is None else
                        tf.nest.flatten(labels_mb))
    self.step = step
    self.inputs: Dict[Tuple[int, int], list] = {}     # (chunk, mb)
    self.out_grads: Dict[Tuple[int, int], list] = {}  # (chunk, mb)
    self.residuals: Dict[Tuple[int, int], list] = {}
    self.weight_inputs: Dict[Tuple[int, int], list] = {}
    self.aux: List[Optional[list]] = [None] * self.c_all
    self.loss = None
    self.outputs: Dict[int, list] = {}
    self._after: list = []  # what the action being built must wait for
    self._fused = FusedBackwards(table)

  def Run(self) -> 'DataflowStep':
    act = {F: self._Forward, B: self._Backward, W: self._Weight}
    last = [[] for _ in range(self.table.num_devices)]
    if self.accs is not None:
      zeroed = ZeroAccumulators(self.fns, self.accs, self.scope)
      for c, ops in enumerate(zeroed):
        last[self.table.chunk_device[c]] += ops
    outer = tf.compat.v1.get_default_graph().get_name_scope()
    prev = [x for ops in last for x in ops]  # host_order: the action before
    for d, a in DeviceOrder(self.table):
      if a.kind == W and (a.chunk, a.mb) in self._fused:
        continue  # ran with its B
      self._after = prev if self.host_order else last[d]
      with tf.name_scope(MicroBatchScope(outer, a)):
        with self.scope(a.chunk):
          last[d] = prev = _Done(act[a.kind](a.chunk, a.mb))
    self.last_ops = [x for ops in last for x in ops]
    return self

  def _Gate(self, tensors, after=()) -> list:
    """The tensors through identities that wait for the device's previous
    action (and `after`). Every argument of a call goes through one, and
    each identity carries the control edges itself (TensorFlow leaves them
    off ops whose inputs already come from inside the same block)."""
    with tf.control_dependencies(list(self._after) + list(after)):
      return [tf.identity(t) for t in tensors]

  # -- one action ----------------------------------------------------------------

  def _Args(self, c, i, xs):
    labels = []
    if c == self.c_all - 1 and self.labels_flat is not None:
      labels = [t[i] for t in self.labels_flat]
    return list(xs) + labels + [self.step, tf.constant(i, tf.int32)]

  def _Inputs(self, c, i):
    if c == 0:
      return [t[i] for t in self.x_flat]
    return self.inputs[(c, i)]

  def _Forward(self, c: int, i: int) -> list:
    fn = self.fns[c]
    args = self._Gate(self._Args(c, i, self._Inputs(c, i)))
    if self.remat[i] or self.table.forward_only:
      outs, res = fn.ForwardOutputs(args), []
    else:
      outs, res = fn.Forward(args)
    aux = outs[fn.num_diff:]
    self.aux[c] = aux if self.aux[c] is None else [
        a + o for a, o in zip(self.aux[c], aux)]
    diff = outs[:fn.num_diff]
    if c < self.c_all - 1:
      self.inputs[(c + 1, i)] = diff
    elif self.table.forward_only:
      self.outputs[i] = diff
    else:
      self.loss = diff[0] if self.loss is None else self.loss + diff[0]
    self.residuals[(c, i)] = res
    # The running sums too: every op of the action is done before the
    # device's next one starts.
    return outs + res + self.aux[c] + (
        [self.loss] if c == self.c_all - 1 and self.loss is not None else [])

  def _Backward(self, c: int, i: int) -> list:
    fn = self.fns[c]
    if c == self.c_all - 1:
      dys = [tf.ones([], fn.output_specs[0].dtype)]
    else:
      dys = self._Gate(self.out_grads.pop((c, i)))
    if self.remat[i]:
      # The recompute waits for the output gradient too: run early, it
      # would hold its activations until the backward.
      args = self._Gate(self._Args(c, i, self._Inputs(c, i)), after=dys)
      with tf.name_scope(RECOMPUTE_SCOPE):
        res = fn.Forward(args)[1]
    else:
      res = self._Gate(self.residuals.pop((c, i)))
    if self.table.split_backward and (c, i) not in self._fused:
      in_grads, w_in = fn.BackwardInput(res, dys, input_grads=c > 0)
      self.weight_inputs[(c, i)] = w_in
      done = list(w_in)
    else:
      in_grads, var_grads = fn.Backward(res, dys, input_grads=c > 0)
      done = self._Accumulate(var_grads)
    if c > 0:
      done += self._PassInputGrads(c, i, in_grads)
    return done

  def _Weight(self, c: int, i: int) -> list:
    w_in = self._Gate(self.weight_inputs.pop((c, i)))
    return self._Accumulate(self.fns[c].BackwardWeights(
        w_in, input_grads=c > 0))

  def _PassInputGrads(self, c, i, in_grads) -> list:
    prev = self.fns[c - 1]
    specs = [s for s, tr in zip(prev.output_specs[:prev.num_diff],
                                prev.diff_trainable) if tr]
    gin = [g for g, tr in zip(in_grads, prev.diff_trainable) if tr]
    gin = [g if g is not None else tf.zeros(s.shape, s.dtype)
           for g, s in zip(gin, specs)]
    self.out_grads[(c - 1, i)] = gin
    return gin

  def _Accumulate(self, var_grads) -> list:
    return [self.accs[v.ref()].assign_add(g, read_value=False)
            for v, g in var_grads]

  # -- results ---------------------------------------------------------------------

  def Aux(self) -> list:
    """Each chunk's summed aux outputs."""
    return [a if a is not None else [] for a in self.aux]

  def StackedOutputs(self) -> list:
    m = self.table.num_micro_batches
    with self.scope(self.c_all - 1):
      return [tf.stack(t) for t in zip(*[self.outputs[i] for i in range(m)])]
