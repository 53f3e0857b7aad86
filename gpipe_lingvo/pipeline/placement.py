"""Where pipeline chunks live and run: the one seam for all placement.

PipelinedNetwork and the executor place everything through a `Placement`:
where a chunk's variables (and gradient accumulators) are created, the
scope its ops run in (traced bodies, calls, buffers), and a hook applied to
the tensors a chunk hands on. `DeviceScopes` implements it with
`tf.device` for CPU and GPU devices; an implementation for XLA can annotate
ops with logical-core shardings behind the same three methods.
"""
from typing import ContextManager, List, Protocol, Sequence

import tensorflow as tf


class Placement(Protocol):
  """Placement of the chunks of one pipeline."""

  def VariableScope(self, chunk: int) -> ContextManager:
    """Scope in which the chunk's variables are created."""

  def OpScope(self, chunk: int) -> ContextManager:
    """Scope in which the chunk's ops are built and its functions called."""

  def PinOutputs(self, chunk: int,
                 tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """The chunk's outputs as handed to the next chunk (e.g. annotated)."""

  def Name(self, chunk: int) -> str:
    """Where the chunk runs, for messages."""


class DeviceScopes:
  """Chunk c on `devices[chunk_device[c]]`, by tf.device scopes."""

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

  def PinOutputs(self, chunk: int,
                 tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    del chunk  # Ops built under OpScope already produce them on the device.
    return list(tensors)

