"""The work of one action on tensors, built the same way by both executions.

An execution decides where an action's tensors come from and where they go
(the tick loop: TensorArray ring buffers read as they were at the start of
the tick; the dataflow execution: graph edges gated on the device's
previous action) and when a recomputed forward may start. What an F, B or W
computes from those tensors is built here once: which stage-function piece
runs, how its outputs split, the gradient fed to the last chunk, the input
gradients handed to the previous chunk, and the weight gradients added into
the accumulators.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence

import tensorflow as tf

from gpipe_lingvo.pipeline import schedule as schedule_lib


def Joined(ops: Sequence) -> list:
  """[one op that finishes when all of `ops` have], for control edges from
  many ops to many: each waiting op then carries one edge, not one per op
  it waits for. (An action that keeps its activations hands hundreds of
  tensors to the next; an edge from each to each made the graph
  optimizer's dependency pass most of a step's first call.)"""
  if len(ops) <= 1:
    return list(ops)
  return [tf.group(*ops, name='after')]


class ForwardResult(NamedTuple):
  outputs: List[tf.Tensor]    # differentiable (the loss of the last chunk)
  aux: List[tf.Tensor]        # summed over micro-batches by the execution
  residuals: List[tf.Tensor]  # what the backward reads; [] when recomputed


class BackwardResult(NamedTuple):
  input_grads: List[tf.Tensor]    # for the previous chunk; [] for chunk 0
  weight_inputs: List[tf.Tensor]  # split backward: what W reads; else []
  updates: List[tf.Operation]     # fused backward: accumulator updates


class StepOutputs(NamedTuple):
  """What either execution hands back to the executor."""
  loss: Optional[tf.Tensor]  # training: the loss summed over micro-batches
  aux: List[list]            # each chunk's aux outputs, summed
  outputs: List[tf.Tensor]   # forward only: the last chunk's, each [M, ...]
  last_ops: list             # what reading the accumulators waits for


class ActionBuilder:
  """F, B and W of each chunk. fns: each chunk's
  stage_function.StageFunction; accumulators: variable.ref() -> the
  variable its gradient is summed in (training only)."""

  def __init__(self, fns: Sequence, accumulators: Optional[Dict] = None):
    self.fns = list(fns)
    self.accs = accumulators

  def Forward(self, c: int, args: list, keep_residuals: bool
              ) -> ForwardResult:
    """F of chunk c on its flat arguments; the residuals only when kept
    (otherwise the intermediates die inside the call)."""
    fn = self.fns[c]
    if keep_residuals:
      outs, res = fn.Forward(args)
    else:
      outs, res = fn.ForwardOutputs(args), []
    return ForwardResult(outs[:fn.num_diff], outs[fn.num_diff:], res)

  def LossGradients(self, c: int) -> List[tf.Tensor]:
    """The gradient of the last chunk's output (the loss): one."""
    return [tf.ones([], self.fns[c].output_specs[0].dtype)]

  def Recompute(self, c: int, args: list) -> List[tf.Tensor]:
    """The residuals of a recomputed micro-batch, under RECOMPUTE_SCOPE;
    its aux outputs (statistics) are dropped: batch norm counts each
    micro-batch once, in its forward."""
    with tf.name_scope(schedule_lib.RECOMPUTE_SCOPE):
      return self.fns[c].Forward(args)[1]

  def Backward(self, c: int, residuals: list, dys: list, split: bool
               ) -> BackwardResult:
    """B of chunk c: with `split`, the input gradients and the tensors W
    will read; otherwise the fused backward, its weight gradients added
    into the accumulators."""
    fn = self.fns[c]
    if split:
      in_grads, w_in = fn.BackwardInput(residuals, dys, input_grads=c > 0)
      updates = []
    else:
      in_grads, var_grads = fn.Backward(residuals, dys, input_grads=c > 0)
      w_in, updates = [], self._Accumulate(var_grads)
    return BackwardResult(self._InputGrads(c, in_grads) if c > 0 else [],
                          list(w_in), updates)

  def Weight(self, c: int, weight_inputs: list) -> List[tf.Operation]:
    """W of chunk c from what its B stashed: the accumulator updates."""
    return self._Accumulate(self.fns[c].BackwardWeights(
        weight_inputs, input_grads=c > 0))

  def _InputGrads(self, c, in_grads) -> List[tf.Tensor]:
    """The gradients of chunk c's trainable inputs (the previous chunk's
    differentiable outputs), zeros where an input does not matter."""
    prev = self.fns[c - 1]
    specs = [s for s, tr in zip(prev.output_specs[:prev.num_diff],
                                prev.diff_trainable) if tr]
    gin = [g for g, tr in zip(in_grads, prev.diff_trainable) if tr]
    return [g if g is not None else tf.zeros(s.shape, s.dtype)
            for g, s in zip(gin, specs)]

  def _Accumulate(self, var_grads) -> List[tf.Operation]:
    return [self.accs[v.ref()].assign_add(g, read_value=False)
            for v, g in var_grads]
