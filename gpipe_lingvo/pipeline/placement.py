"""Where pipeline chunks live and run: the one seam for all placement.

PipelinedNetwork, the executor and the optimizer place everything through a
`Placement`: where a chunk's variables (with their gradient accumulators and
optimizer slots) are created, the scope its ops run in (traced bodies,
calls, buffers, updates), and hooks applied to the tensors a chunk takes in
and hands on. Two implementations:

- `DeviceScopes` (CPU, GPU): `tf.device` of the chunk's stage device around
  everything; the tensor hooks do nothing.
- `LogicalCores` (TPU, and XLA on one CPU or GPU for tests): no per-stage
  `tf.device`. A TPU step is one XLA program, and XLA places work on a
  replica's logical cores by sharding annotations: each chunk's inputs and
  outputs are annotated with its stage's logical core, and ops inside a
  TPUStrategy step run under `strategy.extended.experimental_logical_device`
  (a device the TPU compiler turns into the same annotation); variables are
  created under the strategy's scope on their logical core.
"""
import contextlib
from typing import (ContextManager, Dict, Iterator, List, Optional, Protocol,
                    Sequence)

import tensorflow as tf

from gpipe_lingvo.pipeline import xla_annotations

DEVICE_SCOPES = 'device_scopes'
LOGICAL_CORES = 'logical_cores'


class Placement(Protocol):
  """Placement of the chunks of one pipeline."""

  def VariableScope(self, chunk: int) -> ContextManager:
    """Scope in which the chunk's variables (and the variables that serve
    them: gradient accumulators, optimizer slots) are created."""

  def OpScope(self, chunk: int) -> ContextManager:
    """Scope in which the chunk's ops are built and its functions called."""

  def PinInputs(self, chunk: int,
                tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """The chunk's inputs as its body uses them (e.g. annotated)."""

  def PinOutputs(self, chunk: int,
                 tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """The chunk's outputs as handed to the next chunk (e.g. annotated)."""

  def Name(self, chunk: int) -> str:
    """Where the chunk runs, for messages."""


class DeviceScopes:
  """Chunk c on `devices[chunk_device[c]]`, by tf.device scopes.

  devices: one device name per stage (its first device when a stage has
  several: the engine runs a stage's ops on one device).
  """

  def __init__(self, devices: Sequence[str], chunk_device: Sequence[int]):
    if max(chunk_device) >= len(devices):
      raise ValueError(f'Chunks are mapped to {max(chunk_device) + 1} '
                       f'devices but only {len(devices)} are given.')
    self.devices = list(devices)
    self.chunk_device = list(chunk_device)

  def Name(self, chunk: int) -> str:
    return self.devices[self.chunk_device[chunk]]

  def VariableScope(self, chunk: int) -> ContextManager:
    return tf.device(self.Name(chunk))

  def OpScope(self, chunk: int) -> ContextManager:
    return tf.device(self.Name(chunk))

  def PinInputs(self, chunk: int,
                tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    del chunk  # Ops built under OpScope already run on the device.
    return list(tensors)

  def PinOutputs(self, chunk: int,
                 tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    del chunk  # Ops built under OpScope already produce them on the device.
    return list(tensors)


class LogicalCores:
  """Chunk c on logical core `cores[chunk_device[c]]` of its replica, by XLA
  sharding annotations.

  cores: one logical core per stage (its first core when a stage has
  several). strategy: the distribution strategy the network is built under,
  if any: variables are created in its scope; a TPUStrategy also places
  them on their logical core and annotates through its public API. Without
  a TPU the program runs on one device (CPU or GPU under jit_compile), and
  the annotations are only recorded in the compiled program.
  """

  def __init__(self, cores: Sequence[int], chunk_device: Sequence[int],
               strategy: Optional[tf.distribute.Strategy] = None):
    if max(chunk_device) >= len(cores):
      raise ValueError(f'Chunks are mapped to {max(chunk_device) + 1} '
                       f'stages but only {len(cores)} logical cores are '
                       'given.')
    self.cores = list(cores)
    self.chunk_device = list(chunk_device)
    self.strategy = strategy
    self._tpu = xla_annotations.IsTpuStrategy(strategy)

  def Core(self, chunk: int) -> int:
    return self.cores[self.chunk_device[chunk]]

  def Name(self, chunk: int) -> str:
    return f'logical core {self.Core(chunk)}'

  @contextlib.contextmanager
  def VariableScope(self, chunk: int) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
      if self.strategy is not None:
        stack.enter_context(self.strategy.scope())
      if self._tpu:
        stack.enter_context(
            self.strategy.extended.experimental_logical_device(
                self.Core(chunk)))
      yield

  def OpScope(self, chunk: int) -> ContextManager:
    if self._tpu:
      # Inside the replicated step: tf.device(TPU_REPLICATED_CORE:k), which
      # the TPU compiler reads as a maximal sharding on core k; elsewhere
      # nothing.
      return self.strategy.extended.experimental_logical_device(
          self.Core(chunk))
    return contextlib.nullcontext()

  def _Pin(self, chunk, tensors):
    core = self.Core(chunk)
    return [xla_annotations.AssignToLogicalCore(t, core, self.strategy)
            for t in tensors]

  def PinInputs(self, chunk: int,
                tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    return self._Pin(chunk, tensors)

  def PinOutputs(self, chunk: int,
                 tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    return self._Pin(chunk, tensors)


class VariablePlacement:
  """Per variable, the placement of the chunk that owns it: where its
  optimizer slots are created (VariableScope) and its update runs
  (OpScope). A variable of no chunk stays on its own device."""

  def __init__(self, placement: Placement, chunk_of: Dict[object, int]):
    self._placement = placement
    self._chunk_of = dict(chunk_of)  # variable.ref() -> chunk

  def VariableScope(self, var: tf.Variable) -> ContextManager:
    c = self._chunk_of.get(var.ref())
    return (tf.device(var.device) if c is None
            else self._placement.VariableScope(c))

  def OpScope(self, var: tf.Variable) -> ContextManager:
    c = self._chunk_of.get(var.ref())
    return (tf.device(var.device) if c is None
            else self._placement.OpScope(c))
