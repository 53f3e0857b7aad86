"""XLA sharding annotations that pin a tensor to one logical core.

The only module of the project that imports a private TensorFlow module
(`tensorflow.python.compiler.xla.experimental.xla_sharding`). Under a
TPUStrategy the public `strategy.experimental_assign_to_logical_device` is
used; it calls exactly `xla_sharding.assign_device(t, core,
use_sharding_op=True)`, which is what this module calls without a TPU
strategy (XLA on CPU or GPU under `jit_compile`, where the annotation is
kept in the HLO but the program runs on one device). Outside XLA the
annotation is an identity op.

The import is checked against the TensorFlow versions it was tested with.
"""
import collections
import re
from typing import Optional

import tensorflow as tf
# The one private TensorFlow import of the project (see the docstring).
from tensorflow.python.compiler.xla.experimental import xla_sharding  # pylint: disable=g-direct-tensorflow-import

from gpipe_lingvo.pipeline import stage_function

# TensorFlow versions (major.minor) whose xla_sharding module this module is
# tested with (tests/test_xla_annotations.py).
SUPPORTED_TF_VERSIONS = ('2.21',)

stage_function.CheckTensorFlowVersion(
    supported=SUPPORTED_TF_VERSIONS,
    needed_by='gpipe_lingvo.pipeline.xla_annotations (XLA sharding)')

_MAXIMAL = re.compile(r'sharding=\{maximal device=(\d+)\}')


def IsTpuStrategy(strategy: Optional[tf.distribute.Strategy]) -> bool:
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


def AssignToLogicalCore(tensor: tf.Tensor, core: int,
                        strategy: Optional[tf.distribute.Strategy] = None
                        ) -> tf.Tensor:
  """`tensor` annotated to be computed on logical core `core` of its
  replica (an XLA maximal sharding). Graph mode only (inside a
  tf.function): an annotation is an attribute of the producing op."""
  if IsTpuStrategy(strategy):
    return strategy.experimental_assign_to_logical_device(tensor, core)
  return xla_sharding.assign_device(tensor, core, use_sharding_op=True)


def ShardingOf(tensor: tf.Tensor) -> Optional[int]:
  """The logical core a graph tensor is annotated with, or None (also for
  shardings other than one core)."""
  serialized = xla_sharding.get_tensor_sharding(tensor)
  if serialized is None:
    return None
  proto = xla_sharding.xla_data_pb2.OpSharding.FromString(serialized)
  if proto.type != xla_sharding.xla_data_pb2.OpSharding.MAXIMAL:
    return None
  return int(proto.tile_assignment_devices[0])


def CountMaximalShardings(hlo_text: str) -> collections.Counter:
  """{logical core: number of instructions annotated to run on it} in an
  HLO module's text (e.g. `fn.experimental_get_compiler_ir(...)('hlo')`)."""
  return collections.Counter(int(d) for d in _MAXIMAL.findall(hlo_text))
