"""Runs a tick table as one tf.while_loop over its clock ticks
(execution='ticks').

Each tick, every chunk whose column of the table names a micro-batch runs
that action in a tf.switch_case under its placement scope: the forwards
first, then the backwards, then the weight-gradient passes, as the
schedule's tick rule says. The graph holds one copy of each chunk's
functions whatever K, v and M are (the unrolled dataflow execution,
dataflow.py, grows with the actions). Activations and gradients move
between chunks through TensorArray ring buffers whose slots come from
lifetimes in the table; forwards and backwards read the buffers as they
were at the start of the tick, so devices do not wait for each other inside
a tick. Weight gradients are added in place into the executor's accumulator
variables as they are produced. What each action computes comes from
actions.ActionBuilder, as in the dataflow execution.

Re-materialization, per micro-batch:
- kept: the forward stashes the residuals its backward reads;
- recomputed: the forward keeps only the chunk input (in the input buffer
  anyway); the backward reruns the forward once the incoming gradient exists
  (a control dependency, so the runtime cannot run it early and keep its
  activations) and runs the backward on the fresh residuals.
With a split backward (B and W actions), B also stashes the tensors W needs
("weight inputs") until W runs; W never recomputes anything.
"""
from typing import Dict, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from gpipe_lingvo.pipeline import actions as actions_lib
from gpipe_lingvo.pipeline import schedule as schedule_lib

F, B, W = schedule_lib.F, schedule_lib.B, schedule_lib.W
Slots = schedule_lib.Slots


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


class _Parts(NamedTuple):
  """What one slot's actions may change in the loop state: per field,
  chunk -> that chunk's entry (the loss and the outputs belong to the last
  chunk). The slot's tf.switch_case carries only these through its
  branches."""
  acts: Dict[int, list]
  grads: Dict[int, list]
  residuals: Dict[int, list]
  weight_inputs: Dict[int, list]
  aux: Dict[int, list]
  loss: Dict[int, tf.Tensor]
  outputs: Dict[int, list]

  @classmethod
  def Empty(cls) -> '_Parts':
    return cls({}, {}, {}, {}, {}, {}, {})

  def Copy(self) -> '_Parts':
    return _Parts(*[dict(entries) for entries in self])


def _TensorArrays(specs, slots: Optional[Slots]):
  if slots is None or not slots.size:
    return []
  return [tf.TensorArray(s.dtype, size=slots.size, element_shape=s.shape,
                         clear_after_read=False) for s in specs]


def _Lookup(slots: Slots, i):
  return tf.gather(tf.constant(slots.slot, tf.int32), i)


class TickStep:
  """The graph of one call: buffers, one tick's actions, the results.

  actions: builds each action's work; scope(c): chunk c's placement scope;
  plan: the executor's Plan (the table, the remat flags, the per-tick
  columns and the buffer slots); start: ops the loop starts after (the
  accumulators' zeroing, in training).
  """

  def __init__(self, actions: actions_lib.ActionBuilder, scope, plan, x_mb,
               labels_mb, step, start: Sequence[tf.Operation] = (),
               parallel_iterations: int = 1):
    self.actions, self.scope, self.plan = actions, scope, plan
    self.fns = actions.fns
    self.start = list(start)
    self.parallel_iterations = parallel_iterations
    self.c_all = len(self.fns)
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

  def Run(self) -> actions_lib.StepOutputs:
    """Builds the loop; the gradients are read after the loss."""
    end = self.Loop(self.AllocateBuffers())
    with self.scope(self.c_all - 1):
      outputs = [ta.stack() for ta in end.outputs]
    return actions_lib.StepOutputs(end.loss, end.aux, outputs, [end.loss])

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

  # -- the loop ----------------------------------------------------------------

  def Loop(self, state: _State) -> _State:
    with tf.control_dependencies(actions_lib.Joined(self.start)):
      state = tf.nest.map_structure(
          lambda t: tf.identity(t) if isinstance(t, tf.Tensor) else t, state)
    t_all = self.plan.table.num_ticks
    return tf.while_loop(
        lambda s: s.t < t_all, lambda s: [self.Tick(s)], [state],
        parallel_iterations=self.parallel_iterations,
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
    parts = _Parts.Empty()
    for kind, c, _ in variants:
      self._Touched(kind, c, s, parts)
    i = tf.gather(tf.constant(mb), s.t)
    act = {F: self._Forward, B: self._Backward, W: self._Weight}

    def Run(kind, c, recompute):
      with tf.name_scope(schedule_lib.ActionScope(kind, c)):
        return act[kind](c, i, recompute, parts.Copy(), start)

    branches = [parts.Copy] + [lambda v=v: Run(*v) for v in variants]
    return self._Put(s, tf.switch_case(tf.gather(tf.constant(which), s.t),
                                       branches))

  def _Touched(self, kind, c, s: _State, parts: _Parts) -> None:
    """Adds to `parts` what an action of `kind` on chunk c may change."""
    if kind == W:
      parts.weight_inputs[c] = s.weight_inputs[c]
      return
    if kind == B:
      parts.residuals[c] = s.residuals[c]
      if c > 0:
        parts.grads[c - 1] = s.grads[c - 1]
      if self.plan.table.split_backward:
        parts.weight_inputs[c] = s.weight_inputs[c]
      return
    parts.aux[c] = s.aux[c]
    parts.residuals[c] = s.residuals[c]
    if c < self.c_all - 1:
      parts.acts[c + 1] = s.acts[c + 1]
    elif self.plan.table.forward_only:
      parts.outputs[c] = s.outputs
    else:
      parts.loss[c] = s.loss

  def _Put(self, s: _State, parts: _Parts) -> _State:
    """s with the entries in `parts` replaced."""

    def Put(entries, changed):
      entries = list(entries)
      for c, value in changed.items():
        entries[c] = value
      return entries

    last = self.c_all - 1
    return s._replace(
        acts=Put(s.acts, parts.acts), grads=Put(s.grads, parts.grads),
        residuals=Put(s.residuals, parts.residuals),
        weight_inputs=Put(s.weight_inputs, parts.weight_inputs),
        aux=Put(s.aux, parts.aux), loss=parts.loss.get(last, s.loss),
        outputs=parts.outputs.get(last, s.outputs))

  # -- one tick's actions ------------------------------------------------------

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
    with self.scope(c):
      args = self._Args(c, i, self._Inputs(c, i, start.acts[c]))
      r = self.actions.Forward(c, args, keep_residuals=not recompute)
      parts.aux[c] = [a + o for a, o in zip(parts.aux[c], r.aux)]
      if c < self.c_all - 1:
        slot = _Lookup(self.plan.inputs[c + 1], i)
        parts.acts[c + 1] = [ta.write(slot, o) for ta, o in
                             zip(parts.acts[c + 1], r.outputs)]
      elif self.plan.table.forward_only:
        parts.outputs[c] = [ta.write(i, o)
                            for ta, o in zip(parts.outputs[c], r.outputs)]
      else:
        parts.loss[c] += r.outputs[0]
      if r.residuals:
        slot = _Lookup(self.plan.residuals[c], i)
        parts.residuals[c] = [ta.write(slot, x) for ta, x in
                              zip(parts.residuals[c], r.residuals)]
    return parts

  def _Backward(self, c, i, recompute, parts, start):
    """B of chunk c on micro-batch i: the gradient of its input to the
    previous chunk's buffer; weight gradients accumulated, or (split
    backward) the weight inputs stashed for W."""
    with self.scope(c):
      dys = self._OutputGrads(c, i, start.grads[c])
      if recompute:
        res = self._Recompute(c, i, dys, start.acts[c])
      else:
        slot = _Lookup(self.plan.residuals[c], i)
        res = [ta.read(slot) for ta in parts.residuals[c]]
      split = self.plan.table.split_backward
      r = self.actions.Backward(c, res, dys, split)
      if split:
        slot = _Lookup(self.plan.weight_inputs[c], i)
        parts.weight_inputs[c] = [
            ta.write(slot, x)
            for ta, x in zip(parts.weight_inputs[c], r.weight_inputs)]
      if c > 0:
        slot = _Lookup(self.plan.grads[c - 1], i)
        parts.grads[c - 1] = [ta.write(slot, g) for ta, g in
                              zip(parts.grads[c - 1], r.input_grads)]
    return parts

  def _Weight(self, c, i, recompute, parts, start):
    """W of chunk c on micro-batch i, from the weight inputs B stashed."""
    del recompute, start
    with self.scope(c):
      slot = _Lookup(self.plan.weight_inputs[c], i)
      w_in = [ta.read(slot) for ta in parts.weight_inputs[c]]
      self.actions.Weight(c, w_in)
    return parts

  def _OutputGrads(self, c, i, grads_c):
    if c == self.c_all - 1:
      return self.actions.LossGradients(c)
    slot = _Lookup(self.plan.grads[c], i)
    return [ta.read(slot) for ta in grads_c]

  def _Recompute(self, c, i, dys, acts_c):
    """Residuals of micro-batch i, recomputed once its output gradient
    exists."""
    xs = self._Inputs(c, i, acts_c)
    with tf.control_dependencies(dys):
      xs = [tf.identity(x) for x in xs]
      i = tf.identity(i)
    return self.actions.Recompute(c, self._Args(c, i, xs))
