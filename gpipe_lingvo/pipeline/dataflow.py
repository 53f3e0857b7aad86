"""Runs a tick table as one unrolled dataflow graph (execution='dataflow').

The tick loop (ticks.py) moves every device in lockstep: a tick
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
each chunk's action order, as in the tick loop; what each action computes
comes from actions.ActionBuilder, as there.
"""
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

from gpipe_lingvo.pipeline import actions as actions_lib
from gpipe_lingvo.pipeline import schedule as schedule_lib

F, B, W = schedule_lib.F, schedule_lib.B, schedule_lib.W


def MicroBatchScope(outer: str, a: schedule_lib.Action) -> str:
  """Absolute name scope of one dataflow action's ops, e.g.
  `.../action_2F/mb5/` (schedule.ActionScope with the micro-batch)."""
  return (f'{outer + "/" if outer else ""}'
          f'{schedule_lib.ActionScope(a.kind, a.chunk, a.mb)}/')


def _Done(results) -> list:
  """Ops that finish when an action's results exist. A control edge from
  a call op is not enough: where TensorFlow inlines a function it keeps such
  edges only on the function's side effects (its variable reads), which
  happen first. Identities read the results themselves; an op (an
  accumulator update) is its own."""
  return [r if isinstance(r, tf.Operation) else tf.identity(r).op
          for r in results]


class DataflowStep:
  """The graph of one call: every action of the table, chained per device.

  actions: builds each action's work; scope(c): chunk c's placement scope;
  remat: per micro-batch, whether its forwards are recomputed in the
  backward; start: per chunk, the ops its device's first action waits for
  (the accumulators' zeroing, in training). host_order: chain every action,
  whatever its device, in schedule.DeviceOrder (devices on one host that
  runs one op at a time): each starts once the one before it is done, so
  the host holds what the plan counts, not whatever the executor's pick
  among the ready ops of two actions happens to keep alive.
  """

  def __init__(self, actions: actions_lib.ActionBuilder, scope,
               table: schedule_lib.TickTable, remat: Sequence[bool], x_mb,
               labels_mb, step, start: Sequence[list] = (),
               host_order: bool = False):
    self.actions, self.scope, self.table = actions, scope, table
    self.fns = actions.fns
    self.start = list(start)
    self.host_order = host_order
    self.remat = list(remat)
    self.c_all = len(self.fns)
    self.x_flat = tf.nest.flatten(x_mb)
    self.labels_flat = (None if labels_mb is None else
                        tf.nest.flatten(labels_mb))
    self.step = step
    self.inputs: Dict[Tuple[int, int], list] = {}     # (chunk, mb)
    self.out_grads: Dict[Tuple[int, int], list] = {}  # (chunk, mb)
    self.residuals: Dict[Tuple[int, int], list] = {}
    self.weight_inputs: Dict[Tuple[int, int], list] = {}
    self.aux_sums: Dict[int, list] = {}  # chunk -> sums from its first F
    self.loss: Optional[tf.Tensor] = None  # training: from the last F
    self.outputs: Dict[int, list] = {}
    self._after: list = []  # what the action being built must wait for
    self._fused = schedule_lib.FusedBackwards(table)

  def Run(self) -> actions_lib.StepOutputs:
    """Builds every action; the gradients are read after each device's
    last one."""
    act = {F: self._Forward, B: self._Backward, W: self._Weight}
    last = [[] for _ in range(self.table.num_devices)]
    for c, ops in enumerate(self.start):
      last[self.table.chunk_device[c]] += ops
    outer = tf.compat.v1.get_default_graph().get_name_scope()
    prev = [x for ops in last for x in ops]  # host_order: the action before
    for _, d, a in schedule_lib.DeviceOrder(self.table):
      if a.kind == W and (a.chunk, a.mb) in self._fused:
        continue  # ran with its B
      with tf.name_scope(MicroBatchScope(outer, a)):
        with self.scope(a.chunk):
          self._after = actions_lib.Joined(
              prev if self.host_order else last[d])
          last[d] = prev = _Done(act[a.kind](a.chunk, a.mb))
    return actions_lib.StepOutputs(
        self.loss, [self.aux_sums.get(c, []) for c in range(self.c_all)],
        self._StackedOutputs(), [x for ops in last for x in ops])

  def _Gate(self, tensors, after=()) -> list:
    """The tensors through identities that wait for the device's previous
    action (and `after`). Every argument of a call goes through one, and
    each identity carries the control edges itself (TensorFlow leaves them
    off ops whose inputs already come from inside the same block)."""
    with tf.control_dependencies(list(self._after) + list(after)):
      return [tf.identity(t) for t in tensors]

  # -- one action --------------------------------------------------------------

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
    args = self._Gate(self._Args(c, i, self._Inputs(c, i)))
    r = self.actions.Forward(
        c, args, keep_residuals=not (self.remat[i] or self.table.forward_only))
    if c in self.aux_sums:
      self.aux_sums[c] = [a + o for a, o in zip(self.aux_sums[c], r.aux)]
    else:
      self.aux_sums[c] = r.aux
    if c < self.c_all - 1:
      self.inputs[(c + 1, i)] = r.outputs
    elif self.table.forward_only:
      self.outputs[i] = r.outputs
    else:
      self.loss = (r.outputs[0] if self.loss is None else
                   self.loss + r.outputs[0])
    self.residuals[(c, i)] = r.residuals
    # The running sums too: every op of the action is done before the
    # device's next one starts.
    return r.outputs + r.aux + r.residuals + self.aux_sums[c] + (
        [self.loss] if c == self.c_all - 1 and self.loss is not None else [])

  def _Backward(self, c: int, i: int) -> list:
    if c == self.c_all - 1:
      dys = self.actions.LossGradients(c)
    else:
      dys = self._Gate(self.out_grads.pop((c, i)))
    if self.remat[i]:
      # The recompute waits for the output gradient too: run early, it
      # would hold its activations until the backward.
      args = self._Gate(self._Args(c, i, self._Inputs(c, i)), after=dys)
      res = self.actions.Recompute(c, args)
    else:
      res = self._Gate(self.residuals.pop((c, i)))
    split = self.table.split_backward and (c, i) not in self._fused
    r = self.actions.Backward(c, res, dys, split)
    if split:
      self.weight_inputs[(c, i)] = r.weight_inputs
    if c > 0:
      self.out_grads[(c - 1, i)] = r.input_grads
    return r.weight_inputs + r.updates + r.input_grads

  def _Weight(self, c: int, i: int) -> list:
    w_in = self._Gate(self.weight_inputs.pop((c, i)))
    return self.actions.Weight(c, w_in)

  # -- results ---------------------------------------------------------------

  def _StackedOutputs(self) -> list:
    """Forward only: the last chunk's outputs, each [M, ...]."""
    if not self.table.forward_only:
      return []
    m = self.table.num_micro_batches
    with self.scope(self.c_all - 1):
      return [tf.stack(t) for t in zip(*[self.outputs[i] for i in range(m)])]
