"""Runs a schedule's tick table: one tf.while_loop over pipeline clock ticks.

Each tick, every stage runs at most one forward then at most one backward
(the micro-batches given by the table), each inside a tf.cond on the stage's
device, so the graph holds one copy of each stage's functions whatever K and
M are. Stage inputs and gradients travel between stages through TensorArray
ring buffers whose slots come from the table's buffer lifetimes; weight
gradients accumulate in loop state as they are produced.

Per (stage, micro-batch), the re-materialization policy picks one of two
paths:
- recompute: the forward keeps only the stage input; the backward reruns the
  forward (after the incoming gradient exists, so it cannot run early) and
  takes the vector-Jacobian product;
- keep: the forward stashes TF's residuals of the stage's gradient and the
  backward consumes them; each cell's forward runs once.
"""
import numpy as np
import tensorflow as tf

from gpipe_lingvo.pipeline import schedule as schedule_lib
from gpipe_lingvo.pipeline import stage_function

REMAT_POLICIES = ('always', 'except_last', 'never')


def RematFlags(policy, num_micro_batches):
  """Per micro-batch: True where its stage forwards are recomputed."""
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


def _Table(rows, col_fn):
  return np.array([[col_fn(v) for v in row] for row in rows], np.int32)


class Plan:
  """Everything static about one step: tick tables and buffer slots."""

  def __init__(self, table, remat_flags):
    k_all, m = table.num_stages, table.num_micro_batches
    self.table = table
    self.remat = remat_flags
    r = lambda i: i if i >= 0 and remat_flags[i] else -1
    kp = lambda i: i if i >= 0 and not remat_flags[i] else -1
    fwd = list(zip(*[table.Column('F', k) for k in range(k_all)]))
    bwd = list(zip(*[table.Column('B', k) for k in range(k_all)]))
    self.f_remat = _Table(fwd, r)
    self.f_keep = _Table(fwd, kp)
    self.b_remat = _Table(bwd, r)
    self.b_keep = _Table(bwd, kp)
    self.in_slots, self.in_size = [None], [0]
    tick = table.Tick
    for k in range(1, k_all):
      s, n = schedule_lib.AssignSlots([(tick('F', k - 1, i), tick('B', k, i))
                                       for i in range(m)])
      self.in_slots.append(s)
      self.in_size.append(n)
    self.grad_slots, self.grad_size = [], []
    for k in range(k_all - 1):
      s, n = schedule_lib.AssignSlots([(tick('B', k + 1, i), tick('B', k, i))
                                       for i in range(m)])
      self.grad_slots.append(s)
      self.grad_size.append(n)
    self.grad_slots.append(None)
    self.grad_size.append(0)
    self.res_slots, self.res_size = [], []
    keep = [i for i in range(m) if not remat_flags[i]]
    for k in range(k_all):
      life = table.StashLifetimes(k)
      if keep:
        s, n = schedule_lib.AssignSlots([life[i] for i in keep])
        slots = [0] * m
        for i, si in zip(keep, s):
          slots[i] = si
      else:
        slots, n = [0] * m, 0
      self.res_slots.append(slots)
      self.res_size.append(n)


def _Lookup(slots, i):
  return tf.gather(tf.constant(slots, tf.int32), i)


def _MakeTAs(specs, size, device):
  with tf.device(device):
    return [tf.TensorArray(s.dtype, size=max(size, 1), element_shape=s.shape,
                           clear_after_read=False) for s in specs]


class Executor:
  """Builds the training step of a pipeline for fixed shapes.

  stage_bodies: one per stage, objects with MakeBody(...), out_struct and
  UnpackAux(...) (pipelined_network._StageBody); devices: stage devices;
  stage_variables: trainable variables of each stage.
  """

  def __init__(self, stage_bodies, devices, stage_variables, plan,
               accumulator_fn, parallel_iterations=1):
    self.bodies = stage_bodies
    self.devices = devices
    self.stage_variables = stage_variables
    self.plan = plan
    # var -> a persistent tf.Variable of its shape on its device: weight
    # gradients are added into it in place as each backward produces them,
    # so no old/new copies of weight-sized sums are alive during the step.
    self.accumulator_fn = accumulator_fn
    self.parallel_iterations = parallel_iterations

  @tf.autograph.experimental.do_not_convert
  def Run(self, x_mb, labels_mb, step):
    """x_mb, labels_mb: nests with leaves [M, b, ...]. Returns
    (loss, metric_sums, {var ref: grad}, stats)."""
    plan = self.plan
    k_all = len(self.bodies)
    t_all = plan.table.num_ticks
    step = tf.convert_to_tensor(step)
    step = tf.cast(step, tf.int64)
    x_flat = tf.nest.flatten(x_mb)
    lab_flat = tf.nest.flatten(labels_mb)
    x_struct = tf.nest.map_structure(lambda t: None, x_mb)
    # -- trace the stage functions with micro-batch shapes -------------------
    step_spec = tf.TensorSpec([], tf.int64)
    mb_spec = tf.TensorSpec([], tf.int32)
    in_specs = [tf.TensorSpec(t.shape[1:], t.dtype) for t in x_flat]
    lab_specs = [tf.TensorSpec(t.shape[1:], t.dtype) for t in lab_flat]
    fns = []
    stage_in_specs = []
    out_struct = x_struct
    for k in range(k_all):
      last = k == k_all - 1
      specs = list(in_specs) + (list(lab_specs) if last else [])
      stage_in_specs.append(list(in_specs))
      fn = stage_function.StageFunction(
          self.bodies[k].MakeBody(in_struct=out_struct, num_in=len(in_specs),
                                  first=(k == 0), last=last,
                                  label_struct=labels_mb),
          specs + [step_spec, mb_spec], self.stage_variables[k],
          scope=lambda d=self.devices[k]: tf.device(d),
          num_inputs=len(in_specs))
      fns.append(fn)
      if not last:
        out_struct = self.bodies[k].out_struct
        in_specs = fn.output_specs[:fn.num_diff]
    # -- buffers ----------------------------------------------------------------
    in_tas = [[]] + [_MakeTAs(stage_in_specs[k], plan.in_size[k],
                                self.devices[k]) for k in range(1, k_all)]
    grad_tas = []
    for k in range(k_all - 1):
      specs = [s for s, tr in zip(fns[k].output_specs[:fns[k].num_diff],
                                  fns[k].diff_trainable) if tr]
      grad_tas.append(_MakeTAs(specs, plan.grad_size[k], self.devices[k + 1]))
    grad_tas.append([])
    res_tas = [_MakeTAs(fns[k].residual_specs, plan.res_size[k],
                        self.devices[k]) if plan.res_size[k] else []
               for k in range(k_all)]
    accs = [[self.accumulator_fn(v) for v in fns[k].variables]
            for k in range(k_all)]
    zeroed = []
    for k in range(k_all):
      with tf.device(self.devices[k]):
        for a in accs[k]:
          zeroed.append(a.assign(tf.zeros_like(a), read_value=False))
    gacc = [[] for _ in range(k_all)]
    aux_acc = []
    for k in range(k_all):
      with tf.device(self.devices[k]):
        aux_acc.append([tf.zeros(s.shape, s.dtype)
                        for s in fns[k].output_specs[fns[k].num_diff:]])
    loss_acc = tf.zeros([], fns[-1].output_specs[0].dtype)

    tables = {name: tf.constant(getattr(plan, name)) for name in
              ('f_remat', 'f_keep', 'b_remat', 'b_keep')}

    def ReadInput(k, i, in_tas_k):
      if k == 0:
        return [tf.gather(t, i) for t in x_flat]
      slot = _Lookup(plan.in_slots[k], i)
      return [ta.read(slot) for ta in in_tas_k]

    def Labels(i):
      return [tf.gather(t, i) for t in lab_flat]

    def Args(k, i, xs):
      last = k == k_all - 1
      return list(xs) + (Labels(i) if last else []) + [step, i]

    def ForwardBranch(k, i, keep, st):
      """st: dict of this stage's mutable state; returns the new one."""
      st = dict(st)
      with tf.device(self.devices[k]):
        xs = ReadInput(k, i, st['in'])
        outs, res = fns[k].Forward(Args(k, i, xs))
        nd = fns[k].num_diff
        st['aux'] = [a + o for a, o in zip(st['aux'], outs[nd:])]
        if k == k_all - 1:
          st['loss'] = st['loss'] + outs[0]
        else:
          slot = _Lookup(plan.in_slots[k + 1], i)
          st['next_in'] = [ta.write(slot, o) for ta, o in
                           zip(st['next_in'], outs[:nd])]
        if keep:
          slot = _Lookup(plan.res_slots[k], i)
          st['res'] = [ta.write(slot, r) for ta, r in zip(st['res'], res)]
      return st

    def BackwardBranch(k, i, keep, st):
      st = dict(st)
      fn = fns[k]
      with tf.device(self.devices[k]):
        if k == k_all - 1:
          dys = [tf.ones([], fn.output_specs[0].dtype)]
        else:
          slot = _Lookup(plan.grad_slots[k], i)
          dys = [ta.read(slot) for ta in st['grad']]
        if keep:
          slot = _Lookup(plan.res_slots[k], i)
          res = [ta.read(slot) for ta in st['res']]
        else:
          xs = ReadInput(k, i, st['in'])
          # The recompute must wait for the incoming gradient, or the
          # runtime would run it during the forward and keep its output.
          with tf.control_dependencies(dys):
            xs = [tf.identity(x) for x in xs]
            i_dep = tf.identity(i)
          # Statistics of the recompute are aux outputs we drop: batch norm
          # counts each micro-batch once, in its forward.
          _, res = fn.Forward(Args(k, i_dep, xs))
        in_grads, var_grads = fn.Backward(res, dys, input_grads=k > 0)
        for a, (_, g) in zip(accs[k], var_grads):
          a.assign_add(g, read_value=False)
        if k > 0:
          slot = _Lookup(plan.grad_slots[k - 1], i)
          trainable = [tr for tr in fns[k - 1].diff_trainable]
          gin = [g for g, tr in zip(in_grads[:len(stage_in_specs[k])],
                                    trainable) if tr]
          gin = [g if g is not None else tf.zeros(ta.element_shape, ta.dtype)
                 for g, ta in zip(gin, st['prev_grad'])]
          st['prev_grad'] = [ta.write(slot, g) for ta, g in
                             zip(st['prev_grad'], gin)]
      return st

    has = {name: [bool((getattr(plan, name)[:, k] >= 0).any())
                  for k in range(k_all)] for name in tables}

    def Body(t, in_tas, grad_tas, res_tas, gacc, aux_acc, loss_acc):
      in_tas = list(in_tas)
      grad_tas = list(grad_tas)
      res_tas = list(res_tas)
      gacc = list(gacc)
      aux_acc = list(aux_acc)
      # Forwards: each reads the start-of-tick buffers, so stages overlap.
      new_in = list(in_tas)
      for k in range(k_all):
        for name, keep in (('f_remat', False), ('f_keep', True)):
          if not has[name][k]:
            continue
          i = tables[name][t, k]
          st = {'in': in_tas[k], 'aux': aux_acc[k], 'loss': loss_acc,
                'next_in': new_in[k + 1] if k + 1 < k_all else [],
                'res': res_tas[k]}
          st = tf.cond(i >= 0,
                       lambda k=k, i=i, keep=keep, st=st: ForwardBranch(
                           k, tf.maximum(i, 0), keep, st),
                       lambda st=st: dict(st))
          aux_acc[k], res_tas[k] = st['aux'], st['res']
          if k + 1 < k_all:
            new_in[k + 1] = st['next_in']
          else:
            loss_acc = st['loss']
      # Backwards: a stage's backward follows its own forward in the tick.
      new_grad = list(grad_tas)
      for k in range(k_all):
        for name, keep in (('b_remat', False), ('b_keep', True)):
          if not has[name][k]:
            continue
          i = tables[name][t, k]
          st = {'in': in_tas[k] if k > 0 else [], 'grad': grad_tas[k],
                'res': res_tas[k], 'gacc': gacc[k],
                'prev_grad': new_grad[k - 1] if k > 0 else []}
          st = tf.cond(i >= 0,
                       lambda k=k, i=i, keep=keep, st=st: BackwardBranch(
                           k, tf.maximum(i, 0), keep, st),
                       lambda st=st: dict(st))
          res_tas[k], gacc[k] = st['res'], st['gacc']
          if k > 0:
            new_grad[k - 1] = st['prev_grad']
      return (t + 1, new_in, new_grad, res_tas, gacc, aux_acc, loss_acc)

    loop_vars = (tf.constant(0), in_tas, grad_tas, res_tas, gacc, aux_acc,
                 loss_acc)
    with tf.control_dependencies(zeroed):
      loop_vars = tf.nest.map_structure(
          lambda t: tf.identity(t) if isinstance(t, tf.Tensor) else t,
          loop_vars)
    out = tf.while_loop(lambda t, *_: t < t_all, Body, loop_vars,
                        parallel_iterations=self.parallel_iterations,
                        maximum_iterations=t_all)
    _, _, _, _, _, aux_acc, loss_acc = out
    grads = {}
    with tf.control_dependencies([loss_acc]):
      for k in range(k_all):
        with tf.device(self.devices[k]):
          for v, a in zip(fns[k].variables, accs[k]):
            grads[v.ref()] = a.read_value()
    aux = [self.bodies[k].UnpackAux(aux_acc[k]) for k in range(k_all)]
    metric_sums = aux[-1][0]
    stats = {}
    for k in range(k_all):
      for path, tuples in aux[k][1].items():
        stats.setdefault(path, []).extend(tuples)
    return loss_acc, metric_sums, grads, stats
