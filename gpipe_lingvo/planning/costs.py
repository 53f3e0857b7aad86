"""Per-cell costs of a network from one shape-only trace.

The cells are instantiated inside a fresh `tf.Graph` (graph variables
allocate nothing until initialised, so a model larger than this machine's
memory can be traced) and run once, forward and backward
(`tf.gradients`), at micro-batch shapes. Everything below is read off that
graph, with no per-layer formulas:

- parameters and variable bytes of each cell;
- forward and backward FLOPs, counted by TensorFlow's own profiler;
- boundary activation bytes (each cell's output);
- a liveness replay of each cell's ops in creation order, forward then
  backward: the peak bytes of its forward, the bytes its backward needs
  from the forward (TensorFlow's residuals of this cell), and the peak
  bytes of its backward.

Forward and backward ops belong to a cell by name scope: the forward of
cell i runs under `cell<i>/` and tf.gradients names the gradient of op X
`gradients/X_grad/...`. Measured per-cell times (partition `time`) are
optional and cached as JSON in the logdir.
"""
import dataclasses
import json
import os
import re
import statistics
import time
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context

_CELL_RE = re.compile(r'^(?:gradients(?:_\d+)?/)?cell(\d+)/')


# Bumped when what a trace records changes: older caches are traced again
# (2: the cells' programs, for the allocator simulation; 3: each program
# holds the micro-batch its bytes are for, inline in its cell; 4: the
# bytes under weight decay).
CACHE_FORMAT = 4


@dataclasses.dataclass
class CellCost:
  """Costs of one cell for one micro-batch (bytes, FLOPs); JSON-able."""
  name: str
  params: int = 0            # trainable parameters it owns
  param_bytes: int = 0       # trainable variable bytes
  state_bytes: int = 0       # non-trainable variable bytes (BN averages)
  regularized_bytes: int = 0  # trainable bytes under weight decay (L2)
  out_bytes: int = 0         # activation bytes leaving the cell
  fwd_flops: int = 0
  bwd_flops: int = 0
  fwd_peak: int = 0          # peak bytes during the forward (own tensors)
  residual_bytes: int = 0    # own forward tensors the backward reads
  input_residual_bytes: int = 0  # input bytes the backward reads
  bwd_peak: int = 0          # peak during the backward, residuals included
  fwd_transient: int = 0     # forward peak when nothing is kept
  weight_input_bytes: int = 0  # what the weight-gradient ops read from B
  bwd_w_flops: int = 0       # FLOPs of the weight-gradient-only ops
  # Measured on the device (MeasureCells), None until then:
  fwd_s: Optional[float] = None  # forward time (seconds)
  bwd_s: Optional[float] = None  # backward time (seconds), W included
  bwd_w_s: Optional[float] = None  # its weight-gradient-only part
  workspace_bytes: Optional[int] = None  # largest temporary of one op
  # What the op workspaces add to fwd_peak / bwd_peak / fwd_transient,
  # each placed at its own op in the replay (None: not measured; the plan
  # then adds workspace_bytes to every peak, an upper bound):
  fwd_workspace_bytes: Optional[int] = None
  bwd_workspace_bytes: Optional[int] = None
  transient_workspace_bytes: Optional[int] = None
  # Op by op, the buffers its forward and backward make and read
  # (_Programs), for simulating the allocator; None for a copy of an
  # identical cell traced once:
  program: Optional[dict] = None
  # Recomputed in the backward by a per-cell remat choice (cell_remat.Apply
  # marks it; the allocator replay reruns its run's forward):
  recomputed: bool = False


@dataclasses.dataclass
class NetworkCosts:
  """Costs of every cell at one micro-batch size; JSON-able data."""
  batch: int
  input_bytes: int
  cells: List[CellCost]

  def ToJson(self):
    return {'batch': self.batch, 'input_bytes': self.input_bytes,
            'cells': [dataclasses.asdict(c) for c in self.cells]}

  @classmethod
  def FromJson(cls, d):
    return cls(d['batch'], d['input_bytes'],
               [CellCost(**c) for c in d['cells']])

  def Vector(self, key):
    return [getattr(c, key) for c in self.cells]

  def Scaled(self, batch):
    """Costs at another micro-batch size: activation bytes and FLOPs
    scale linearly with the batch (weights do not). A cell's program is
    shared as it is: it says the micro-batch its bytes are for, and the
    allocator replay scales them."""
    r = batch / self.batch
    cells = []
    for c in self.cells:
      d = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
      for key in ('out_bytes', 'fwd_flops', 'bwd_flops', 'fwd_peak',
                  'residual_bytes', 'input_residual_bytes', 'bwd_peak',
                  'fwd_transient', 'weight_input_bytes', 'bwd_w_flops'):
        d[key] = int(round(d[key] * r))
      for key in ('fwd_s', 'bwd_s', 'bwd_w_s'):
        d[key] = None if d[key] is None else d[key] * r
      # Kernel workspaces are capped by the kernels: kept as measured.
      cells.append(CellCost(**d))
    return NetworkCosts(batch, int(round(self.input_bytes * r)), cells)


  def TimesScaledTo(self, total_s):
    """Costs whose forward + backward times add up to `total_s` (the
    per-cell shares kept): the step statistics attribute time to cells,
    a run in the runtime the training step uses gives the total."""
    now = sum(c.fwd_s + c.bwd_s for c in self.cells)
    r = total_s / now
    cells = [dataclasses.replace(c, fwd_s=c.fwd_s * r, bwd_s=c.bwd_s * r,
                                 bwd_w_s=c.bwd_w_s * r) for c in self.cells]
    return NetworkCosts(self.batch, self.input_bytes, cells)


def _Bytes(t):
  if t.dtype in (tf.resource, tf.variant) or not t.shape.is_fully_defined():
    return 0
  return int(np.prod(t.shape.as_list(), dtype=np.int64)) * t.dtype.size


def _CellOf(op):
  m = _CELL_RE.match(op.name)
  return int(m.group(1)) if m else None


def _Flops(graph):
  """FLOPs per op name, from TensorFlow's own statistics."""
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts['output'] = 'none'
  out = {}
  node = tf.compat.v1.profiler.profile(graph, cmd='scope', options=opts)
  stack = list(node.children)
  while stack:
    n = stack.pop()
    out[n.name] = n.float_ops
    stack.extend(n.children)
  return out


# Ops whose output is a view of their first input's buffer.
_ALIAS = ('Identity', 'Reshape', 'Squeeze', 'ExpandDims', 'StopGradient',
          'Snapshot', 'EnsureShape')
# Ops whose outputs are buffers that exist before the step (no allocation).
_EXTERNAL = ('ReadVariableOp', 'Const', 'VarHandleOp', 'Placeholder',
             'Shape', 'NoOp', 'VarIsInitializedOp')


# Element-wise kernels that write their output into an input's buffer
# when nothing else reads that input any more and it has the output's
# dtype and size (TensorFlow's forward_input_or_allocate_output).
_FORWARDS = frozenset((
    'Abs Add AddN AddV2 BiasAdd DivNoNan Elu EluGrad Erf Exp Expm1 '
    'LeakyRelu LeakyReluGrad Log Log1p LogSoftmax Maximum Minimum Mul Neg '
    'Pow RealDiv Reciprocal ReciprocalGrad Relu Relu6 Relu6Grad ReluGrad '
    'Rsqrt RsqrtGrad Select SelectV2 Selu SeluGrad Sigmoid SigmoidGrad Sign '
    'Softmax Softplus Sqrt SqrtGrad Square SquaredDifference Sub Tanh '
    'TanhGrad ZerosLike OnesLike').split())


# Ops that read only their inputs' static shapes (constant-folded by the
# graph optimiser): they keep no buffer alive.
_SHAPE_ONLY = ('Shape', 'ShapeN', 'Size', 'Rank', 'BroadcastGradientArgs')


def _Reads(op):
  return [] if op.type in _SHAPE_ONLY else list(op.inputs)


_FOLD = {'AddV2': np.add, 'Add': np.add, 'Sub': np.subtract,
         'Mul': np.multiply}


def _StaticValue(t):
  """The value of an int tensor computed from constants only (what the
  graph optimiser folds, e.g. the permutation a gradient builds from
  ranges and sizes), else None."""
  v = tf.get_static_value(t)
  if v is not None:
    return np.asarray(v)
  op = t.op
  if op.type not in _FOLD and op.type not in ('Range', 'ConcatV2', 'Pack'):
    return None
  ins = [_StaticValue(x) for x in op.inputs]
  if any(x is None for x in ins):
    return None
  if op.type == 'Range':
    return np.arange(*[int(x) for x in ins])
  if op.type == 'ConcatV2':
    return np.concatenate([np.reshape(x, [-1]) for x in ins[:-1]])
  if op.type == 'Pack':
    return np.stack(ins)
  return _FOLD[op.type](*ins)


def _IsNoOp(op) -> bool:
  """An op whose output equals its first input (a transpose by the
  identity permutation, a tile by ones, a broadcast or a cast to the same
  shape or dtype): TensorFlow's graph optimiser removes it, so it
  allocates nothing. The gradient of a gather with batch_dims transposes
  by such a permutation: a copy of the logits' size in a loss's backward."""
  if op.type not in ('Transpose', 'Tile', 'BroadcastTo', 'Cast'):
    return False
  x, y = op.inputs[0], op.outputs[0]
  if op.type == 'Cast':
    return x.dtype == y.dtype
  if not (x.shape.is_fully_defined() and x.shape == y.shape):
    return False
  if op.type == 'BroadcastTo':
    return True
  v = _StaticValue(op.inputs[1])
  if v is None:
    return False
  if op.type == 'Tile':
    return bool(np.all(v == 1))
  return v.tolist() == list(range(x.shape.rank))


class _Buffers:
  """Maps tensors to the buffers they live in (views share a buffer)."""

  def __init__(self):
    self.root = {}   # tensor name -> buffer name
    self.size = {}   # buffer name -> bytes
    self.grad = set()  # buffers made by gradient ops
    self.seen = {}     # (type, input buffers, attrs) -> first op

  def Add(self, op):
    # Identical pure ops on the same buffers compute the same values once
    # (TensorFlow's graph optimiser merges them): their outputs share the
    # first one's buffers.
    key = None
    if not op._is_stateful and op.type not in _EXTERNAL:  # pylint: disable=protected-access
      key = (op.type, tuple(self.Root(t) for t in op.inputs),
             op.node_def.attr.__str__())
      first = self.seen.get(key)
      if first is not None:
        for t, u in zip(op.outputs, first.outputs):
          self.root[t.name] = self.Root(u)
        return
      self.seen[key] = op
    for t in op.outputs:
      if op.inputs and (op.type in _ALIAS or _IsNoOp(op)):
        self.root[t.name] = self.Root(op.inputs[0])
      else:
        self.root[t.name] = t.name
        self.size[t.name] = 0 if op.type in _EXTERNAL else _Bytes(t)
        if op.name.startswith('gradients'):
          self.grad.add(t.name)

  def Root(self, t):
    return self.root.get(t.name, t.name)


def _Replay(ops, bufs, owned, kept=(), workspace=None):
  """Liveness replay of `ops` in order over the buffers in `owned`.

  A buffer is allocated by the op that makes it and freed after the last
  op in `ops` that reads it (through any view), unless it is in `kept`
  (alive to the end). Returns the peak of the sum of live owned bytes;
  workspace ({op name: bytes}) adds an op's temporaries while it runs.
  """
  workspace = workspace or {}
  last = {}
  for j, op in enumerate(ops):
    for t in _Reads(op):
      last[bufs.Root(t)] = j
  cur = peak = 0
  for j, op in enumerate(ops):
    # Only outputs with buffers of their own allocate: a view (Identity,
    # Reshape, ...) or a merged duplicate op shares its source's buffer.
    made = {t.name for t in op.outputs
            if bufs.Root(t) == t.name and t.name in owned}
    for b in made:
      cur += bufs.size[b]
    peak = max(peak, cur + workspace.get(op.name, 0))
    for b in made:
      if b not in last and b not in kept:
        cur -= bufs.size[b]
    for b in {bufs.Root(t) for t in _Reads(op)}:
      if b in owned and last.get(b) == j and b not in kept:
        cur -= bufs.size[b]
  return peak


def _CellMemory(fwd_ops, bwd_ops, bufs, workspace=None):
  """(fwd_peak, residuals, inputs read, bwd_peak, fwd_transient) of a cell.

  Residuals: buffers the cell's forward makes and its backward reads;
  inputs read: buffers of earlier cells' forwards that its backward reads.
  workspace: {op name: temporary bytes}, added while each op runs.
  """
  fwd_owned = {bufs.Root(t) for op in fwd_ops for t in op.outputs
               if bufs.Root(t) == t.name}
  bwd_owned = {bufs.Root(t) for op in bwd_ops for t in op.outputs
               if bufs.Root(t) == t.name}
  read_by_bwd = {bufs.Root(t) for op in bwd_ops for t in _Reads(op)}
  residual = fwd_owned & read_by_bwd
  outside = read_by_bwd - fwd_owned - bwd_owned - bufs.grad
  fwd_peak = _Replay(fwd_ops, bufs, fwd_owned, kept=residual,
                     workspace=workspace)
  res = sum(bufs.size[b] for b in residual)
  bwd_peak = res + _Replay(bwd_ops, bufs, bwd_owned | residual,
                           workspace=workspace)
  transient = _Replay(fwd_ops, bufs, fwd_owned, workspace=workspace)
  return fwd_peak, residual, outside, bwd_peak, transient


def _Ancestors(tensors, within):
  """Ops in `within` (a set of op names) that `tensors` depend on through
  ops in `within`."""
  seen, todo = set(), [t.op for t in tensors if t.op.name in within]
  while todo:
    op = todo.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    todo.extend(x.op for x in op.inputs if x.op.name in within)
  return seen


def _WeightOnly(bwd_ops, var_grads, bufs):
  """(weight-gradient-only ops, bytes they read from the rest) of a cell's
  backward: ops only the weight gradients need (zero-bubble's W), and the
  buffers they read that the input-gradient part (B) or the forward made
  (what B hands to W)."""
  names = {op.name for op in bwd_ops}
  leaving = [t for op in bwd_ops for t in op.outputs
             if any(c.name not in names for c in t.consumers())
             or not t.consumers()]
  grads = {g.name for g in var_grads}
  b_ops = _Ancestors([t for t in leaving if t.name not in grads], names)
  w_ops = _Ancestors(var_grads, names) - b_ops
  read = {bufs.Root(x) for op in bwd_ops if op.name in w_ops
          for x in _Reads(op) if x.op.name not in w_ops}
  return w_ops, sum(bufs.size.get(b, 0) for b in read)


def _AssignCells(ops):
  """Cell index of every forward and gradient op (None: not in a cell).

  Gradient sums of tensors read by several ops (AddN) carry no cell in
  their name: they go to the earliest cell among their inputs, the cell
  whose tensor's gradient they complete."""
  cell = {}
  for op in ops:
    i = _CellOf(op)
    if i is None and op.name.startswith('gradients'):
      known = [cell[t.op.name] for t in op.inputs
               if cell.get(t.op.name) is not None]
      i = min(known) if known else None
    cell[op.name] = i
  return cell


def TraceNetwork(build: Callable, input_specs, label_specs=None,
                 measure: bool = False, reps: int = 5,
                 reuse_identical: bool = True, values=None) -> NetworkCosts:
  """Traces `build()` -> (cells, loss_fn or None) in a fresh graph.

  input_specs / label_specs: nests of tf.TensorSpec at micro-batch shapes.
  loss_fn(outputs, labels) -> scalar loss of the micro-batch (run after the
  last cell; its ops count towards the last cell). With measure=True the
  traced step also runs on the default device (this allocates the weights):
  per-cell forward and backward times and the largest temporary memory of
  any one op (kernel workspace), from TensorFlow's own step statistics.
  With reuse_identical, a cell equal to one traced before (_CellKey) is
  not traced again: its costs are copied (an 83.9B-parameter Transformer
  of 1663 identical layers traces a handful of cells). `cells` may hold
  RepeatedCell stand-ins for such cells (RepeatError if one is not).
  values: (input values, label values[, {placeholder: value} for
  placeholders build() made]), arrays in the specs' nests, fed to the
  timed runs (a packed row of zeros is all padding); other placeholders,
  and all of them without values, get zeros.
  """
  graph = tf.Graph()
  with graph.as_default():
    cells, loss_fn = build()
    xs = _Placeholders(input_specs)
    labels = _Placeholders(label_specs) if loss_fn is not None else None
    batch = tf.nest.flatten(input_specs)[0].shape[0]
    outs, seen, copies = [], {}, {}
    with context.Scope(training=True, step=tf.constant(0, tf.int64),
                       micro_batch=tf.constant(0), stats={}):
      h = xs
      for i, cell in enumerate(cells):
        with tf.name_scope(f'cell{i}'):
          key = _CellKey(cells, i, h)
          if isinstance(cell, RepeatedCell) and key not in seen:
            raise RepeatError(f'cell {i} ({cell.params.name}) stands for a '
                              'cell not traced before with this input.')
          if reuse_identical and key in seen and i < len(cells) - 1:
            # Traced before with the same params, input and predecessor:
            # a stand-in view keeps the graph connected, costs are copied.
            copies[i] = seen[key]
            h = tf.nest.map_structure(tf.identity, h)
          else:
            h_in, h = h, cell.FProp(h)
            if _Signature(h) == _Signature(h_in):
              seen.setdefault(key, i)
          if loss_fn is not None and i == len(cells) - 1:
            with tf.name_scope('loss'):
              loss = loss_fn(h, labels)
        outs.append(h)
    if loss_fn is None:
      with tf.name_scope(f'cell{len(cells) - 1}/loss'):
        loss = tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32))
                         for t in tf.nest.flatten(h)])
    variables = [v for c in cells for v in c.TrainableVariables()]
    grads = tf.gradients(loss, variables + [
        t for t in tf.nest.flatten(xs) if t.dtype.is_floating])
    var_grads, pos = [], 0
    for c in cells:
      n = len(c.TrainableVariables())
      var_grads.append([tf.convert_to_tensor(g) for g in grads[pos:pos + n]
                        if g is not None])
      pos += n
    costs, w_ops, cell_ops = _Analyse(graph, cells, outs, var_grads,
                                      [g for g in grads if g is not None])
    in_bytes = sum(_Bytes(t) for t in tf.nest.flatten(xs))
    workspace = None
    if measure:
      given = {}
      if values is not None:
        given = dict(zip(tf.nest.flatten(xs), tf.nest.flatten(values[0])))
        if labels is not None:
          given.update(zip(tf.nest.flatten(labels),
                           tf.nest.flatten(values[1])))
        given.update(values[2] if len(values) > 2 else {})
      workspace = _Measure(graph, costs, [g for g in grads if g is not None],
                           reps, w_ops, given)
      _PlaceWorkspaces(costs, cell_ops, workspace)
    for c, prog in zip(costs, _Programs(*cell_ops, w_ops, batch, workspace)):
      c.program = prog
    for i, j in copies.items():
      # A copy's program would read the stand-in's source cell, not its
      # own predecessor: not recorded (no allocator simulation then).
      costs[i] = dataclasses.replace(costs[j], name=costs[i].name,
                                     program=None)
  return NetworkCosts(int(batch), in_bytes, costs)


class RepeatError(ValueError):
  """A RepeatedCell whose input differs from the cell it repeats."""


class RepeatedCell:
  """Stands for a cell equal to one before it (same params but the name,
  same two predecessors): not instantiated, its costs are copied. Building
  a 1663-layer model's variables, even in a graph, takes minutes."""

  def __init__(self, params):
    self.params = params

  def TrainableVariables(self):
    return []

  def AllVariables(self, include_borrowed=True):
    del include_borrowed
    return []


def _Signature(nest):
  """Structure, shapes and dtypes of a nest of tensors (hashable)."""
  flat = [(tuple(t.shape.as_list()), t.dtype.name)
          for t in tf.nest.flatten(nest)]
  return repr(tf.nest.map_structure(lambda _: 0, nest)), tuple(flat)


def _ParamsKey(cell):
  return cell.params.Copy().Set(name='').ToText()


def _CellKey(cells, i, h):
  """What a cell's costs depend on: its params but its name, its input's
  signature and its two predecessors' params (what their backwards keep
  of its input). A run of n identical cells is traced three times."""
  prev = tuple(_ParamsKey(cells[j]) for j in (i - 2, i - 1) if j >= 0)
  return _ParamsKey(cells[i]), _Signature(h), prev


def _Placeholders(specs):
  return tf.nest.map_structure(
      lambda s: tf.compat.v1.placeholder(s.dtype, s.shape), specs)


def _Analyse(graph, cells, outs, var_grads, grads):
  """(CellCost per cell, names of the weight-gradient-only ops).

  Gradient ops that no gradient needs (tf.gradients builds the gradient of
  every input of an op, e.g. of a drop-path mask, and the runtime prunes
  the ones nothing fetches) are left out: what they read is not kept."""
  flops = _Flops(graph)
  fwd_ops = [[] for _ in cells]
  bwd_ops = [[] for _ in cells]
  all_ops = graph.get_operations()
  bufs = _Buffers()
  for op in all_ops:
    bufs.Add(op)
  needed = _Ancestors(grads, {op.name for op in all_ops
                              if op.name.startswith('gradients')})
  for op, i in zip(all_ops, _AssignCells(all_ops).values()):
    if i is None:
      continue
    if not op.name.startswith('gradients'):
      fwd_ops[i].append(op)
    elif op.name in needed:
      bwd_ops[i].append(op)
  mem = [_CellMemory(f, b, bufs) for f, b in zip(fwd_ops, bwd_ops)]
  all_residuals = set().union(*[m[1] for m in mem])
  costs, all_w_ops = [], set()
  for i, cell in enumerate(cells):
    trainable = cell.TrainableVariables()
    others = [v for v in cell.AllVariables() if not v.trainable]
    # A tied variable counts once, with its owner (its bytes count on
    # every device that uses it).
    owned = [v for v in cell.AllVariables(include_borrowed=False)
             if v.trainable]
    fp, res, outside, bp, transient = mem[i]
    w_ops, w_in = _WeightOnly(bwd_ops[i], var_grads[i], bufs)
    all_w_ops |= w_ops
    # Inputs read by the backward that no earlier cell keeps anyway.
    in_res = sum(bufs.size.get(b, 0) for b in outside - all_residuals)
    costs.append(CellCost(
        name=cell.params.name,
        params=int(sum(np.prod(v.shape) for v in owned)),
        param_bytes=sum(_Bytes(v) for v in trainable),
        state_bytes=sum(_Bytes(v) for v in others),
        regularized_bytes=sum(_Bytes(v) for v in trainable
                              if base_layer.IsRegularized(v)),
        out_bytes=sum(_Bytes(t) for t in tf.nest.flatten(outs[i])),
        fwd_flops=sum(flops.get(op.name, 0) for op in fwd_ops[i]),
        bwd_flops=sum(flops.get(op.name, 0) for op in bwd_ops[i]),
        fwd_peak=fp, residual_bytes=sum(bufs.size[b] for b in res),
        input_residual_bytes=in_res, bwd_peak=bp, fwd_transient=transient,
        weight_input_bytes=w_in,
        bwd_w_flops=sum(flops.get(op, 0) for op in w_ops)))
  return costs, all_w_ops, (fwd_ops, bwd_ops, bufs)


def _Programs(fwd_ops, bwd_ops, bufs, w_ops, batch, workspace=None):
  """Per cell, the op-by-op program its forward ('f') and backward ('b')
  run at micro-batch `batch` ('batch'): for each op, the buffers it makes ([index, bytes, whether the bytes
  scale with the batch]), the buffers of any cell it reads ([cell offset,
  phase, index]), whether only the weight gradients need it, the inputs
  whose buffer an element-wise kernel may take over for its output
  (_FORWARDS), and its measured temporary bytes (`workspace`, by op name;
  0 when not measured). allocator.StepEvents replays these programs in a
  schedule's order to simulate the allocator."""
  where = {}
  for i, phases in enumerate(zip(fwd_ops, bwd_ops)):
    for phase, ops in zip('fb', phases):
      n = 0
      for op in ops:
        for t in op.outputs:
          b = bufs.Root(t)
          if b == t.name and bufs.size.get(b) and b not in where:
            where[b] = (i, phase, n, t)
            n += 1
  out = []
  for i, phases in enumerate(zip(fwd_ops, bwd_ops)):
    prog = {'batch': int(batch)}
    for phase, ops in zip('fb', phases):
      rows = []
      for op in ops:
        made = []
        for t in op.outputs:
          w = where.get(t.name)
          if w is not None and w[:2] == (i, phase):
            dims = t.shape.as_list()
            made.append([w[2], bufs.size[t.name],
                         int(bool(dims) and dims[0] == batch)])
        ref = lambda b: [where[b][0] - i, where[b][1], where[b][2]]
        reads = sorted({tuple(ref(b))
                        for b in {bufs.Root(x) for x in _Reads(op)}
                        if b in where})
        takes = []
        if op.type in _FORWARDS and made:
          y = op.outputs[0]
          takes = [ref(bufs.Root(x)) for x in op.inputs
                   if bufs.Root(x) in where and x.dtype == y.dtype and
                   bufs.size[bufs.Root(x)] == bufs.size.get(y.name)]
        temp = int((workspace or {}).get(op.name, 0))
        if made or reads or temp:
          rows.append([made, [list(r) for r in reads],
                       int(op.name in w_ops), takes, temp])
      prog[phase] = rows
    out.append(prog)
  return out


def _PlaceWorkspaces(costs, cell_ops, workspace):
  """Sets what each cell's measured op workspaces add to its peaks, each
  at its own op: a kernel's temporaries live while that op runs, not
  necessarily at the moment of the cell's peak."""
  fwd_ops, bwd_ops, bufs = cell_ops
  for c, f, b in zip(costs, fwd_ops, bwd_ops):
    fp, _, _, bp, transient = _CellMemory(f, b, bufs, workspace)
    c.fwd_workspace_bytes = fp - c.fwd_peak
    c.bwd_workspace_bytes = bp - c.bwd_peak
    c.transient_workspace_bytes = transient - c.fwd_transient


def _Feed(graph, given=None):
  """The `given` values of placeholders, zeros for the others (labels 0
  are valid class ids)."""
  given = given or {}
  return {t: given[t] if t in given else
          np.zeros(t.shape.as_list(), t.dtype.as_numpy_dtype)
          for t in (op.outputs[0] for op in graph.get_operations()
                    if op.type == 'Placeholder')}


def _Measure(graph, costs, fetches, reps, w_ops, given=None):
  """Per-cell op time (forward, backward, and the backward's
  weight-gradient-only ops `w_ops`) and largest op workspace from step
  statistics (one inter-op thread, so op times add up to the step's
  time). Returns each op's workspace, {op name: bytes}."""
  cell_of = _AssignCells(graph.get_operations())
  config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1)
  with tf.compat.v1.Session(graph=graph, config=config) as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    feed = _Feed(graph, given)
    sess.run(fetches, feed)
    fwd = np.zeros([reps, len(costs)])
    bwd = np.zeros([reps, len(costs)])
    bwd_w = np.zeros([reps, len(costs)])
    op_work = {}  # op name -> its largest temporary bytes
    for r in range(reps):
      meta = tf.compat.v1.RunMetadata()
      sess.run(fetches, feed, run_metadata=meta, options=tf.compat.v1.RunOptions(
          trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
      for dev in meta.step_stats.dev_stats:
        for ns in dev.node_stats:
          i = cell_of.get(ns.node_name)
          if i is None:
            continue
          secs = ns.op_end_rel_micros * 1e-6
          (bwd if ns.node_name.startswith('gradients') else fwd)[r, i] += secs
          if ns.node_name in w_ops:
            bwd_w[r, i] += secs
          outb = sum(o.tensor_description.allocation_description
                     .allocated_bytes for o in ns.output)
          for m in ns.memory:
            op_work[ns.node_name] = max(op_work.get(ns.node_name, 0),
                                        m.peak_bytes - outb)
    # Tracing slows every op down: scale the op times so that they add up
    # to the untraced step's time.
    walls = []
    for _ in range(reps):
      t0 = time.perf_counter()
      sess.run(fetches, feed)
      walls.append(time.perf_counter() - t0)
  traced = float(np.median(fwd.sum(1) + bwd.sum(1)))
  scale = float(np.median(walls)) / traced if traced > 0 else 1.0
  work = [0] * len(costs)  # per cell, its ops' largest
  for name, w in op_work.items():
    work[cell_of[name]] = max(work[cell_of[name]], w)
  for i, c in enumerate(costs):
    c.fwd_s = float(np.median(fwd[:, i])) * scale
    c.bwd_s = float(np.median(bwd[:, i])) * scale
    c.bwd_w_s = float(np.median(bwd_w[:, i])) * scale
    c.workspace_bytes = int(work[i])
  return op_work


def CachedCosts(path: str, key: str, make: Callable[[], NetworkCosts]):
  """Costs from the JSON cache at `path` when its key matches, else
  make() (written to the cache)."""
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      d = json.load(f)
    if d.get('key') == key and d.get('format') == CACHE_FORMAT:
      return NetworkCosts.FromJson(d['costs'])
  costs = make()
  tf.io.gfile.makedirs(os.path.dirname(path) or '.')
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump({'key': key, 'format': CACHE_FORMAT, 'costs': costs.ToJson()},
              f)
  return costs


def MedianSeconds(fn: Callable[[], object], reps: int = 5) -> float:
  """Median wall seconds of `fn()` over `reps` calls after one warm-up call
  (tracing, first allocations); `fn` must return once its work is done."""
  fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)
