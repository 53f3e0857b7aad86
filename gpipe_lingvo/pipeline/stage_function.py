"""One pipeline chunk cut into forward, backward and weight-gradient functions.

The executor needs, per chunk (the cells one device runs for one model
chunk), functions it can call at different clock ticks:

- `Forward`: outputs, auxiliary outputs and the residuals the backward
  reads (kept when a micro-batch is not re-materialized);
- `ForwardOutputs`: outputs and auxiliary outputs only (re-materialized
  micro-batches and forward-only passes; intermediates die inside the call);
- `Backward`: residuals and output gradients -> input and weight gradients;
- `BackwardInput` (B) and `BackwardWeights` (W), the same backward split
  in two for zero-bubble schedules: B computes the input gradients and the
  tensors W needs ("weight inputs"); W computes only the weight gradients,
  from those tensors, so no work is done twice.

How: the chunk's forward and its gradient (`tf.gradients`) are traced
together into one graph with `tf.compat.v1.wrap_function`. The residuals
are the forward tensors the gradient ops read, found by walking that graph;
reads of variables (and their casts) and constants are not residuals, the
backward reads them again. Each piece is the part of the graph its outputs
need when its inputs are given (residuals, and for W the B->W tensors, cut
the graph), imported into a function of its own with `import_graph_def`, so
no piece contains an op it does not need: a backward never re-runs a
forward op. (`WrappedFunction.prune` would also copy the ancestors of its
inputs, and stateful ones among them would run again.)

Per-cell recompute: ops a body creates inside `Recomputed()` (the cells a
per-cell `remat` list marks) are not stashed. Their tensors that the
backward reads are recomputed in the backward pieces from the tensors
before them (the input of each run of recomputed cells), which become the
residuals instead. In a backward piece the recomputed ops wait (control
edges) for the gradient arriving at their run of cells, so the runtime does
not recompute a run early and hold its activations through the backward of
the cells after it.

Only public TensorFlow APIs are used, but the cut depends on how TensorFlow
lays out gradient graphs, so the module checks the version it was tested
with at import.
"""
import contextlib
from typing import Callable, ContextManager, Optional, Sequence

import numpy as np
import tensorflow as tf

# TensorFlow versions (major.minor) this module is tested with.
SUPPORTED_TF_VERSIONS = ('2.21',)


class UnsupportedTensorFlowError(ImportError):
  """The installed TensorFlow is not one the stage functions were tested with."""


class StageFunctionError(ValueError):
  """A chunk cannot be cut into pipeline functions."""


def CheckTensorFlowVersion(version: str = tf.__version__,
                           supported: Sequence[str] = SUPPORTED_TF_VERSIONS,
                           needed_by: str = 'gpipe_lingvo.pipeline') -> None:
  """Raises UnsupportedTensorFlowError naming the supported versions if
  `version` is not one of `supported` (major.minor)."""
  major_minor = '.'.join(version.split('.')[:2])
  if major_minor not in supported:
    raise UnsupportedTensorFlowError(
        f'{needed_by} needs TensorFlow '
        f'{" or ".join(v + ".x" for v in supported)}; found '
        f'{version}. Install a supported version (pip install '
        f'"tensorflow=={supported[-1]}.*").')


CheckTensorFlowVersion()

_CHEAP_OPS = ('ReadVariableOp', 'Cast', 'Identity')

# Op-index spans [start, end) recorded by Recomputed() in the graph being
# traced by a StageFunction (innermost trace last).
_RECOMPUTE_SPANS: list = []


@contextlib.contextmanager
def Recomputed():
  """Ops created inside are recomputed in the backward instead of kept.

  Outside a StageFunction trace (an un-pipelined forward) it does nothing."""
  if not _RECOMPUTE_SPANS:
    yield
    return
  graph = tf.compat.v1.get_default_graph()
  start = len(graph.get_operations())
  try:
    yield
  finally:
    _RECOMPUTE_SPANS[-1].append((start, len(graph.get_operations())))
_SHAPE_OPS = ('Shape', 'ShapeN', 'Size', 'Rank')


def StaticShapeValue(t) -> Optional[np.ndarray]:
  """The value of a shape op's output when its input's shape is static
  (e.g. the filter sizes a convolution's weight gradient reads), else None.
  Pieces use it as a constant: it is never stashed, and XLA needs such
  arguments to be compile-time constants."""
  op = t.op
  if op.type not in _SHAPE_OPS or op.control_inputs:
    return None
  x = op.inputs[t.value_index if op.type == 'ShapeN' else 0]
  if not x.shape.is_fully_defined():
    return None
  dims = x.shape.as_list()
  value = {'Shape': dims, 'ShapeN': dims, 'Size': int(np.prod(dims)),
           'Rank': len(dims)}[op.type]
  return np.array(value, t.dtype.as_numpy_dtype)


def _IsFloat(dtype: tf.DType) -> bool:
  return dtype.is_floating or dtype.is_complex


def _Key(t) -> int:
  return id(t)


class _GraphCut:
  """Analysis of the traced forward+gradient graph (no functions built)."""

  def __init__(self, graph, num_forward_ops, captures, spans=()):
    ops = graph.get_operations()
    self._forward = {id(op) for op in ops[:num_forward_ops]}
    # Each recomputed op -> its run: spans whose ops read one another's
    # tensors are one run (recomputed together, from one input).
    self.recomputed = {}
    for n, (a, b) in enumerate(spans):
      span_ops = [op for op in ops[a:min(b, num_forward_ops)]
                  if op.type != 'Placeholder']
      runs = {self.recomputed[id(x.op)] for op in span_ops
              for x in op.inputs if id(x.op) in self.recomputed}
      run = min(runs, default=n)
      for key, r in list(self.recomputed.items()):
        if r in runs:
          self.recomputed[key] = run
      for op in span_ops:
        self.recomputed[id(op)] = run
    self._captures = {_Key(t) for t in captures}
    self._cheap = {}

  def IsForward(self, op) -> bool:
    return id(op) in self._forward

  def IsCheap(self, t) -> bool:
    """Derived only from constants and captured values (variable reads):
    recomputing it costs nothing, so it is never stashed."""
    key = _Key(t)
    if key not in self._cheap:
      op = t.op
      if op.type == 'Const' or StaticShapeValue(t) is not None:
        cheap = True
      elif op.type == 'Placeholder':
        cheap = key in self._captures
      elif op.type in _CHEAP_OPS and not op.control_inputs:
        cheap = all(self.IsCheap(i) for i in op.inputs)
      else:
        cheap = False
      self._cheap[key] = cheap
    return self._cheap[key]

  def Walk(self, fetches, stops):
    """Ops needed for `fetches` when the tensors in `stops` are given."""
    stop = {_Key(t) for t in stops}
    seen, todo = {}, [f.op for f in fetches]
    while todo:
      op = todo.pop()
      if id(op) in seen:
        continue
      seen[id(op)] = op
      for t in op.inputs:
        if _Key(t) not in stop and not self.IsCheap(t):
          todo.append(t.op)
      todo.extend(op.control_inputs)
    return seen


class StageFunction:
  """Forward/backward functions of one chunk, traced once for fixed shapes.

  body(*flat_args) -> (diff_outputs, aux_outputs). The first `num_inputs`
  args are the chunk inputs (gradients flow to the floating ones); the rest
  (labels, step, micro-batch index) get none. Gradients flow only from
  floating diff outputs; aux outputs (metrics, statistics) carry none.
  `scope()` is entered around the traced body (the chunk's placement) and
  around every call.
  """

  def __init__(self, body: Callable, arg_specs: Sequence[tf.TensorSpec],
               variables: Sequence[tf.Variable],
               scope: Callable[[], ContextManager] = contextlib.nullcontext,
               num_inputs: Optional[int] = None, backward: bool = True):
    self._scope = scope
    self.num_args = len(arg_specs)
    self.num_inputs = self.num_args if num_inputs is None else num_inputs
    self._want_backward = backward
    t = {}

    spans = []

    def Traced(*args):
      _RECOMPUTE_SPANS.append(spans)
      try:
        with scope():
          diff, aux = body(*args)
          diff, aux = list(diff), list(aux)
          t['num_forward_ops'] = len(tf.compat.v1.get_default_graph()
                                     .get_operations())
          t.update(args=list(args), diff=diff, aux=aux)
          if backward:
            self._TraceGradients(t, variables)
      finally:
        _RECOMPUTE_SPANS.pop()
      return []

    self._g1 = tf.compat.v1.wrap_function(Traced, list(arg_specs))
    self._t = t
    self._spans = spans
    # Captured values (variable handles, tensors of an enclosing function)
    # follow the arguments among the traced graph's inputs.
    self._captures = list(self._g1.inputs[self.num_args:])
    self._capture_values = list(self._g1.captured_inputs)
    if len(self._captures) != len(self._capture_values):
      raise StageFunctionError('Unexpected layout of the traced chunk: '
                               'captured inputs do not line up.')
    self.num_diff = len(t['diff'])
    self.num_aux = len(t['aux'])
    self.output_specs = [tf.TensorSpec(o.shape, o.dtype)
                         for o in t['diff'] + t['aux']]
    self.diff_trainable = [_IsFloat(o.dtype) for o in t['diff']]
    self._forward_outputs = self._nodes = None
    self._forward = self._backward = self._split = None
    self.residual_specs, self.variables = [], []
    if backward:
      self._FindResiduals()

  # -- tracing -----------------------------------------------------------------

  def _TraceGradients(self, t, variables):
    ys = [o for o in t['diff'] if _IsFloat(o.dtype)]
    dys = [tf.compat.v1.placeholder(y.dtype, y.shape, name='d_output')
           for y in ys]
    xs = [a for a in t['args'][:self.num_inputs] if _IsFloat(a.dtype)]
    grads = tf.gradients(ys, xs + list(variables), grad_ys=dys) if ys else (
        [None] * (len(xs) + len(variables)))
    grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
    in_grads = dict(zip([_Key(x) for x in xs], grads[:len(xs)]))
    t['dys'] = dys
    t['in_grads'] = [in_grads.get(_Key(a)) for a in
                     t['args'][:self.num_inputs]]
    var_grads = grads[len(xs):]
    t['vars'] = [v for v, g in zip(variables, var_grads) if g is not None]
    t['var_grads'] = [g for g in var_grads if g is not None]

  def _FindResiduals(self):
    t, g1 = self._t, self._g1
    cut = _GraphCut(g1.graph, t['num_forward_ops'], self._captures,
                    self._spans)
    self._cut = cut
    ops = g1.graph.get_operations()
    fetches = [g for g in t['in_grads'] if g is not None] + t['var_grads']
    # tf.gradients also builds gradients nothing fetches (e.g. of a
    # drop-path mask): what only they read is not kept.
    needed = cut.Walk(fetches, [x for op in ops[:t['num_forward_ops']]
                                for x in op.outputs])
    read = [x for op in ops[t['num_forward_ops']:] if id(op) in needed
            for x in op.inputs if cut.IsForward(x.op) and not cut.IsCheap(x)]
    self._residuals = self._Stashed(cut, read)
    self._gates = self._Gates(cut, ops[:t['num_forward_ops']],
                              [op for op in ops[t['num_forward_ops']:]
                               if id(op) in needed])
    for r in self._residuals:
      if not r.shape.is_fully_defined() or r.dtype in (tf.resource,
                                                       tf.variant):
        raise StageFunctionError(
            f'A tensor kept for the backward ({r.name}) has shape {r.shape} '
            f'and dtype {r.dtype.name}; the pipeline needs static shapes and '
            'plain tensors (use a static batch size; loops inside a cell '
            'are not supported).')
    self.residual_specs = [tf.TensorSpec(r.shape, r.dtype)
                           for r in self._residuals]
    stops = self._residuals + t['dys']
    for op in cut.Walk(fetches, stops).values():
      if (cut.IsForward(op) and op.type != 'Placeholder' and
          id(op) not in cut.recomputed):
        raise StageFunctionError(
            f'The backward of a chunk needs the forward op {op.name} '
            f'({op.type}) through a control dependency; the pipeline cannot '
            'cut such a chunk.')
    self.variables = list(t['vars'])
    self._in_grad_pos = [j for j, g in enumerate(t['in_grads'])
                         if g is not None]

  @staticmethod
  def _Stashed(cut, read):
    """The tensors to keep for the backward, given the forward tensors it
    reads: a recomputed tensor is replaced by what its ops read, back to
    tensors of ops that are not recomputed."""
    residuals, seen, todo = {}, set(), list(reversed(read))
    while todo:
      x = todo.pop()
      if id(x.op) not in cut.recomputed:
        residuals.setdefault(_Key(x), x)
      elif id(x.op) not in seen:
        seen.add(id(x.op))
        todo.extend(reversed([i for i in x.op.inputs if not cut.IsCheap(i)]))
    return list(residuals.values())

  @staticmethod
  def _Gates(cut, forward_ops, grad_ops):
    """Per run of recomputed ops, the gradient tensors its recompute waits
    for: those the first gradient op reading the run's tensors reads
    (gradient ops are created in backward order)."""
    gates = {}
    for op in grad_ops:
      for run in {cut.recomputed[id(x.op)] for x in op.inputs
                  if id(x.op) in cut.recomputed} - set(gates):
        gates[run] = [x for x in op.inputs
                      if not cut.IsForward(x.op) and not cut.IsCheap(x)]
    return {op.name: [x.name for x in gates.get(cut.recomputed[id(op)], [])]
            for op in forward_ops if id(op) in cut.recomputed}

  def _Extract(self, feeds, fetches, gated=False):
    """A function of `feeds` computing `fetches`: the nodes of the traced
    graph the fetches need when the feeds are given, imported into a new
    function with each feed (and each captured value) as an input.
    gated: recomputed ops wait for their gates (backward pieces)."""
    if self._nodes is None:
      graph_def = self._g1.graph.as_graph_def()
      self._nodes = {n.name: n for n in graph_def.node}
      self._library, self._versions = graph_def.library, graph_def.versions
      self._static = {t.name: StaticShapeValue(t)
                      for op in self._g1.graph.get_operations()
                      for t in op.outputs
                      if StaticShapeValue(t) is not None}
    fed = {t.name for t in feeds}
    captured = {t.name: v for t, v in zip(self._captures,
                                          self._capture_values)}
    static = self._static
    keep, used, todo = {}, set(), [f.op.name for f in fetches
                                   if f.name not in fed]
    while todo:
      name = todo.pop()
      if name in keep:
        continue
      node = keep[name] = self._nodes[name]
      if node.op == 'Placeholder':
        raise StageFunctionError(
            f'A piece of the chunk needs {name}, which is neither an input '
            'of the piece nor a captured value.')
      for inp in node.input:
        src = inp[1:] if inp.startswith('^') else inp
        tensor = src if ':' in src else src + ':0'
        if not inp.startswith('^') and (
            tensor in fed or tensor in captured or tensor in static):
          used.add(tensor)
        else:
          todo.append(src.split(':')[0])
    graph_def = tf.compat.v1.GraphDef(versions=self._versions,
                                      library=self._library)
    made = set()
    for node in keep.values():
      copy = graph_def.node.add()
      copy.CopyFrom(node)
      copy.attr.pop('_class', None)  # colocation with nodes left out
      if gated:
        self._Gate(copy, graph_def, keep, fed, used, made)

    def Imported(*args):
      input_map = {t.name: a for t, a in zip(feeds, args) if t.name in used}
      for name in used & set(captured):
        # An op on the outer value captures it here (variable handles and
        # tensors of an enclosing function alike).
        input_map[name] = tf.identity(captured[name])
      for name in used - set(input_map):
        input_map[name] = tf.constant(static[name])  # a static shape
      by_name = {t.name: a for t, a in zip(feeds, args)}
      out = tf.compat.v1.import_graph_def(
          graph_def, input_map=input_map,
          return_elements=[f.name for f in fetches if f.name not in fed],
          name='piece')
      out = iter(out)
      return [by_name[f.name] if f.name in fed else next(out)
              for f in fetches]

    return tf.compat.v1.wrap_function(
        Imported, [tf.TensorSpec(t.shape, t.dtype) for t in feeds])

  def _Gate(self, node, graph_def, keep, fed, used, made):
    """Control edges from a recomputed node's gates (kept nodes, or an
    identity of a fed tensor) to the node."""
    for name in self._gates.get(node.name, ()):
      if name in fed:
        gate = 'gate/' + name.replace(':', '_')
        if gate not in made:
          made.add(gate)
          g = graph_def.node.add(name=gate, op='Identity', input=[name])
          g.attr['T'].type = self._g1.graph.get_tensor_by_name(
              name).dtype.as_datatype_enum
          used.add(name)
        node.input.append('^' + gate)
      elif name.split(':')[0] in keep:
        node.input.append('^' + name.split(':')[0])

  # -- lazily built pieces -------------------------------------------------------

  def _ForwardFn(self):
    if self._forward is None:
      t = self._t
      self._forward = self._Extract(
          t['args'], t['diff'] + t['aux'] + self._residuals)
    return self._forward

  def _BackwardFn(self, with_input_grads):
    key = bool(with_input_grads)
    if self._backward is None:
      self._backward = {}
    if key not in self._backward:
      t = self._t
      in_grads = [g for g in t['in_grads'] if g is not None] if key else []
      fetches = in_grads + t['var_grads']
      self._backward[key] = (self._Extract(self._residuals + t['dys'], fetches,
                                           gated=True)
                             if fetches else None)
    return self._backward[key]

  def _SplitFns(self, with_input_grads):
    """(B, W, weight-input specs): B from residuals and output gradients to
    input gradients and weight inputs; W from weight inputs to weight
    gradients."""
    key = bool(with_input_grads)
    if self._split is None:
      self._split = {}
    if key not in self._split:
      t, cut = self._t, self._cut
      in_grads = [g for g in t['in_grads'] if g is not None]
      stops = self._residuals + t['dys']
      b_ops = cut.Walk(in_grads, stops)
      w_ops = cut.Walk(t['var_grads'], stops)
      stop_keys = {_Key(s) for s in stops}
      # Weight gradients B computes anyway (e.g. batch norm's beta, a sum
      # of the output gradient that the input gradient needs too) are
      # passed on as they are.
      w_inputs = {_Key(g): g for g in t['var_grads'] if id(g.op) in b_ops}
      for op_id, op in w_ops.items():
        if op_id in b_ops:
          continue
        for x in op.inputs:
          if cut.IsCheap(x):
            continue
          if id(x.op) in b_ops or _Key(x) in stop_keys:
            w_inputs.setdefault(_Key(x), x)
      w_inputs = list(w_inputs.values())
      for x in w_inputs:
        if not x.shape.is_fully_defined() or x.dtype in (tf.resource,
                                                         tf.variant):
          raise StageFunctionError(
              f'A tensor kept for the weight gradient ({x.name}) has shape '
              f'{x.shape} and dtype {x.dtype.name}; it cannot be stashed.')
      b_fetches = (in_grads if key else []) + w_inputs
      b_fn = self._Extract(stops, b_fetches, gated=True) if b_fetches else None
      w_fn = (self._Extract(w_inputs, t['var_grads'], gated=True)
              if t['var_grads'] else None)
      specs = [tf.TensorSpec(x.shape, x.dtype) for x in w_inputs]
      self._split[key] = (b_fn, w_fn, specs)
    return self._split[key]

  # -- calls -----------------------------------------------------------------

  def ForwardOutputs(self, flat_args):
    """Outputs and aux outputs of one call (no residuals)."""
    if self._forward_outputs is None:
      t = self._t
      self._forward_outputs = self._Extract(t['args'], t['diff'] + t['aux'])
    with self._scope():
      return list(self._forward_outputs(*flat_args))

  def Forward(self, flat_args):
    """(outputs + aux outputs, residuals) of one call."""
    fn = self._ForwardFn()
    with self._scope():
      res = list(fn(*flat_args))
    n_out = self.num_diff + self.num_aux
    return res[:n_out], res[n_out:]

  def _InGrads(self, grads):
    out = [None] * self.num_inputs
    for j, g in zip(self._in_grad_pos, grads):
      out[j] = g
    return out

  def Backward(self, residuals, d_diff, input_grads=True):
    """Gradients from d_diff (one per floating diff output) and the
    residuals of the matching Forward call: (input grads aligned with the
    chunk inputs, None where there is none; [(variable, grad)])."""
    fn = self._BackwardFn(input_grads)
    if fn is None:
      return [None] * self.num_inputs, []
    with self._scope():
      grads = list(fn(*residuals, *d_diff))
    n_in = len(self._in_grad_pos) if input_grads else 0
    in_grads = self._InGrads(grads[:n_in]) if input_grads else (
        [None] * self.num_inputs)
    return in_grads, list(zip(self.variables, grads[n_in:]))

  def WeightInputSpecs(self, input_grads=True):
    """Specs of the tensors BackwardInput passes to BackwardWeights."""
    return self._SplitFns(input_grads)[2]

  def BackwardInput(self, residuals, d_diff, input_grads=True):
    """B: (input grads aligned with the chunk inputs, weight inputs)."""
    b_fn, _, specs = self._SplitFns(input_grads)
    if b_fn is None:
      return [None] * self.num_inputs, []
    with self._scope():
      out = list(b_fn(*residuals, *d_diff))
    n_in = len(self._in_grad_pos) if input_grads else 0
    in_grads = self._InGrads(out[:n_in]) if input_grads else (
        [None] * self.num_inputs)
    assert len(out) - n_in == len(specs)
    return in_grads, out[n_in:]

  def BackwardWeights(self, weight_inputs, input_grads=True):
    """W: [(variable, grad)] from the weight inputs BackwardInput returned."""
    _, w_fn, _ = self._SplitFns(input_grads)
    if w_fn is None:
      return []
    with self._scope():
      grads = list(w_fn(*weight_inputs))
    return list(zip(self.variables, grads))

  def CountOps(self, piece: str, input_grads: bool = True) -> dict:
    """Op types and counts of one piece ('forward', 'backward', 'B', 'W'),
    so tests can check what each piece computes."""
    fn = {'forward': self._ForwardFn,
          'backward': lambda: self._BackwardFn(input_grads),
          'B': lambda: self._SplitFns(input_grads)[0],
          'W': lambda: self._SplitFns(input_grads)[1]}[piece]()
    counts = {}
    if fn is not None:
      for op in fn.graph.get_operations():
        counts[op.type] = counts.get(op.type, 0) + 1
    return counts
