"""Does the pipeline compute what the network computes? A check on any model.

Runs one batch through a PipelinedNetwork's training step and through the
same cells un-pipelined (layers.Sequential with the same names, layer paths
and weights, so dropout masks agree), and compares the loss and every
gradient. The reference runs the micro-batches one after the other under
one tape, so per-micro-batch batch norm normalises exactly the same
examples; with full_batch batch norm the reference sees the whole batch.
"""
from typing import Any, Callable, List, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo.layers import sequential
from gpipe_lingvo.pipeline import microbatch
from gpipe_lingvo.pipeline import pipelined_network

# Largest relative gradient difference accepted, by activation dtype.
TOLERANCE = {tf.float32: 1e-3, tf.bfloat16: 5e-2, tf.float16: 5e-2}


class VariableDiff(NamedTuple):
  name: str
  shape: List[int]
  max_abs_grad: float  # of the reference gradient
  rel_diff: float  # max |pipelined - reference| / max |reference|


class CheckResult(NamedTuple):
  loss: float
  reference_loss: float
  variables: List[VariableDiff]
  tolerance: float

  @property
  def max_rel_diff(self) -> float:
    loss_diff = abs(self.loss - self.reference_loss) / max(
        abs(self.reference_loss), 1e-12)
    return max([loss_diff] + [v.rel_diff for v in self.variables])

  @property
  def ok(self) -> bool:
    return self.max_rel_diff <= self.tolerance

  def Lines(self) -> List[str]:
    width = max([len(v.name) for v in self.variables] + [8])
    out = [f'loss: pipelined {self.loss:.6g}, un-pipelined '
           f'{self.reference_loss:.6g}',
           f'{"variable":<{width}}  {"shape":<18}  {"max |grad|":>10}  '
           'max relative gradient difference']
    for v in self.variables:
      out.append(f'{v.name:<{width}}  {str(v.shape):<18}  '
                 f'{v.max_abs_grad:10.3g}  {v.rel_diff:.3g}')
    verdict = 'OK' if self.ok else 'FAILED'
    out.append(f'{verdict}: largest relative difference '
               f'{self.max_rel_diff:.3g} (tolerance {self.tolerance:g}).')
    return out


def Reference(net: pipelined_network.PipelinedNetwork):
  """layers.Sequential over the same cells (batch-norm mode applied), with
  the same layer paths and a copy of the network's weights."""
  parent = net.path.rsplit('/', 1)[0] if '/' in net.path else ''
  p = sequential.Sequential.Params().Set(
      name=net.params.name, cells=[c.params.Copy() for c in net.cells],
      fprop_dtype=net.params.fprop_dtype, random_seed=net.params.random_seed)
  ref = sequential.Sequential(p, parent)
  for a, b in zip(ref.AllVariables(), net.AllVariables()):
    if a.name != b.name or a.shape != b.shape:
      raise ValueError(f'Reference variable {a.name} {a.shape} does not '
                       f'match {b.name} {b.shape}.')
    a.assign(b)
  return ref


def CompareWithUnpipelined(net: pipelined_network.PipelinedNetwork, inputs,
                           labels: Any, loss_fn: Callable, step: int = 0,
                           tolerance: float = None) -> CheckResult:
  """Loss and per-variable gradient differences between the pipelined
  training step and the un-pipelined cells on one batch."""
  if not isinstance(net, pipelined_network.PipelinedNetwork):
    raise ValueError(f'The network {net.path} is a {type(net).__name__}, '
                     'not a PipelinedNetwork: there is nothing to compare.')
  step = tf.constant(step, tf.int64)
  loss, _, grads, _ = net.ComputeLossAndGradients(inputs, labels, loss_fn,
                                                  step)
  ref = Reference(net)
  m = net.effective_micro_batches

  @tf.function(autograph=False)
  def RefStep(inputs, labels):
    x_mb, lab_mb = microbatch.Split(inputs, m), microbatch.Split(labels, m)
    total = 0.0
    with tf.GradientTape() as tape:
      for i in range(m):
        pick = lambda t, i=i: t[i]
        with context.Scope(training=True, step=step, micro_batch=i,
                           stats={}):
          out = ref.FProp(tf.nest.map_structure(pick, x_mb))
          part, _ = loss_fn(out, tf.nest.map_structure(pick, lab_mb))
        total += part
    grads = tape.gradient(total, ref.TrainableVariables(),
                          unconnected_gradients='zero')
    # An embedding lookup's gradient is sparse (IndexedSlices).
    return total, [tf.convert_to_tensor(g) for g in grads]

  ref_loss, ref_grads = RefStep(inputs, labels)
  if tolerance is None:
    tolerance = TOLERANCE.get(net.fprop_dtype, TOLERANCE[tf.float32])
  return Compare(net.TrainableVariables(), loss, grads, ref_loss, ref_grads,
                 tolerance)


def Compare(variables: Sequence[tf.Variable], loss, grads, ref_loss,
            ref_grads, tolerance: float) -> CheckResult:
  """Per variable, the largest difference relative to the largest reference
  entry (absolute below 1e-6, for gradients that are (nearly) zero)."""
  rows = []
  for v, g, r in zip(variables, grads, ref_grads):
    g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
    largest = float(np.max(np.abs(r))) if r.size else 0.0
    diff = float(np.max(np.abs(g - r))) / max(largest, 1e-6) if r.size else 0.0
    rows.append(VariableDiff(v.name, list(v.shape), largest, diff))
  return CheckResult(float(loss), float(ref_loss), rows, tolerance)
