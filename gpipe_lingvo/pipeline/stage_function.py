"""One pipeline stage traced into a forward function and a backward function.

The executor needs, per stage, a forward that can either be recomputed later
(re-materialization: keep only the stage input) or keep what its backward
needs (no re-materialization), and a backward that takes the gradient of the
stage outputs and returns gradients of the stage inputs and variables. Both
come from TensorFlow's own split of a traced function into a forward that
also returns the intermediates its gradient uses ("residuals") and a backward
that consumes them; this is the split TF uses when a tf.function is
differentiated, reached through ConcreteFunction internals
(`_delayed_rewrite_functions`), so the residuals are exactly TF's.

Residuals that are only variable reads or captured handles are not stashed:
variables do not change within a step, so the backward re-reads them.
"""
import tensorflow as tf


def _IsTrainable(t):
  return t.dtype.is_floating or t.dtype.is_complex


class StageFunction:
  """Traced forward/backward of `body` on `device`.

  body(*flat_args) -> (diff_outputs: list, aux_outputs: list). Gradients flow
  only from diff_outputs; aux outputs (metrics, statistics) carry none.
  """

  def __init__(self, body, arg_specs, device, variables):
    self.device = device
    info = {}

    def Fn(*flat_args):
      with tf.device(device):
        diff, aux = body(*flat_args)
      info['num_diff'] = len(diff)
      info['num_aux'] = len(aux)
      return list(diff) + list(aux)

    self._cf = tf.function(Fn, autograph=False).get_concrete_function(
        *arg_specs)
    graph = self._cf.graph
    self.num_args = len(arg_specs)
    self.num_diff = info['num_diff']
    self.num_aux = info['num_aux']
    n_out = self.num_diff + self.num_aux
    outs = list(graph.outputs[:n_out])
    self.diff_trainable = [_IsTrainable(o) for o in outs[:self.num_diff]]
    self.output_specs = [tf.TensorSpec(o.shape, o.dtype) for o in outs]
    self._fwd, self._bwd = (
        self._cf._delayed_rewrite_functions.forward_backward(self.num_diff))  # pylint: disable=protected-access
    # Map captured placeholders -> external values (variable handles etc.).
    internal_to_external = {}
    for external, internal in graph.captures:
      internal_to_external[id(internal)] = external
    self._captured_inputs = list(self._cf.captured_inputs)
    # Side outputs of the forward: classify each one.
    side = list(graph.outputs[n_out:])
    # ('stash', index) | ('external', t) | ('read', handle, dtype, cast_to)
    self._side_kinds = []
    self.residual_specs = []
    for s in side:
      if id(s) in internal_to_external:
        self._side_kinds.append(('external', internal_to_external[id(s)]))
      elif (s.op.type == 'ReadVariableOp' and
            id(s.op.inputs[0]) in internal_to_external):
        self._side_kinds.append(
            ('read', internal_to_external[id(s.op.inputs[0])], s.dtype, None))
      elif (s.op.type == 'Cast' and s.op.inputs[0].op.type == 'ReadVariableOp'
            and id(s.op.inputs[0].op.inputs[0]) in internal_to_external):
        # A variable cast to the activation dtype (mixed precision).
        read = s.op.inputs[0]
        self._side_kinds.append(
            ('read', internal_to_external[id(read.op.inputs[0])], read.dtype,
             s.dtype))
      else:
        if not s.shape.is_fully_defined() or s.dtype in (tf.resource,
                                                         tf.variant):
          raise ValueError(
              f'Stage on {device}: an intermediate kept for the backward has '
              f'shape {s.shape} / dtype {s.dtype.name}; the pipeline needs '
              'static shapes (use a static batch size).')
        self._side_kinds.append(('stash', len(self.residual_specs)))
        self.residual_specs.append(tf.TensorSpec(s.shape, s.dtype))
    self._stashed_outputs = []
    self._out_index = {id(o): j for j, o in enumerate(graph.outputs)}
    # Backward captures: forward outputs (original or side) or externals.
    # Original outputs the backward reads (e.g. tanh's) are stashed too.
    self._bwd_caps = []
    for c in self._bwd.captured_inputs:
      j = self._out_index.get(id(c))
      if j is None:
        self._bwd_caps.append(('const', c))
      elif j >= n_out:
        self._bwd_caps.append(('side', j - n_out))
      else:
        self._bwd_caps.append(('stash', len(self.residual_specs)))
        self._stashed_outputs.append(j)
        o = graph.outputs[j]
        self.residual_specs.append(tf.TensorSpec(o.shape, o.dtype))
    # Which inputs of the traced graph are variables (by handle).
    by_handle = {id(v.handle): v for v in variables}
    self._input_vars = []
    for j, inp in enumerate(graph.inputs):
      ext = internal_to_external.get(id(inp))
      v = by_handle.get(id(ext)) if ext is not None else None
      self._input_vars.append(v)
    self.variables = [v for v in self._input_vars if v is not None]

  # -- calls -----------------------------------------------------------------

  def Forward(self, flat_args):
    """Returns (outputs, residuals) of one call; residuals are what the
    backward needs and cannot re-read."""
    with tf.device(self.device):
      res = self._fwd.call_flat(*flat_args, *self._captured_inputs)
    n_out = self.num_diff + self.num_aux
    outs, side = list(res[:n_out]), list(res[n_out:])
    residuals = [side[j] for j, k in enumerate(self._side_kinds)
                 if k[0] == 'stash']
    residuals += [outs[j] for j in self._stashed_outputs]
    return outs, residuals

  def _SideValues(self, residuals):
    vals = []
    for kind in self._side_kinds:
      if kind[0] == 'stash':
        vals.append(residuals[kind[1]])
      elif kind[0] == 'external':
        vals.append(kind[1])
      else:
        v = tf.raw_ops.ReadVariableOp(resource=kind[1], dtype=kind[2])
        vals.append(v if kind[3] is None else tf.cast(v, kind[3]))
    return vals

  def Backward(self, residuals, d_diff):
    """Gradients from d_diff (one per trainable diff output) and the
    residuals of the matching Forward call.

    Returns (input grads aligned with the flat args, None where there is no
    gradient; {variable ref: grad}).
    """
    with tf.device(self.device):
      side_vals = self._SideValues(residuals)
      caps = []
      for kind, val in self._bwd_caps:
        if kind == 'const':
          caps.append(val)
        elif kind == 'side':
          caps.append(side_vals[val])
        else:
          caps.append(residuals[val])
      grads = self._bwd._call_flat(list(d_diff), caps)  # pylint: disable=protected-access
    grads = list(grads)
    in_grads = grads[:self.num_args]
    var_grads = {}
    for v, g in zip(self._input_vars, grads):
      if v is not None and g is not None:
        var_grads[v.ref()] = tf.convert_to_tensor(g)
    return in_grads, var_grads
