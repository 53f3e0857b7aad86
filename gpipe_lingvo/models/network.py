"""Wraps a model's cell list in the network layer that runs it.

num_stages == num_micro_batches == 1 gives layers.Sequential; otherwise the
GPipe engine's PipelinedNetwork with the same cells (identical variables and
checkpoint keys: the cells get the same child names either way).
"""
import tensorflow as tf

from gpipe_lingvo import layers
from gpipe_lingvo.pipeline import pipelined_network


def NetworkParams(cells, name='network', num_stages=1, num_micro_batches=1,
                  remat='always', batch_norm_mode=None,
                  fprop_dtype=tf.float32):
  """Params of the network running `cells`, pipelined if K or M > 1.

  remat: the engine's re-materialization policy ('always', 'except_last',
  'never'). batch_norm_mode: if set, the engine applies it to every
  BatchNorm of the cells ('full_batch' equals un-pipelined batch norm).
  fprop_dtype: activation dtype, inherited by every cell that does not set
  its own; set explicitly so that the override
  `task.network.fprop_dtype : bfloat16` switches a registered model to
  mixed precision (float32 variables and loss).
  """
  if num_stages < 1 or num_micro_batches < 1:
    raise ValueError(f'num_stages and num_micro_batches must be >= 1, got '
                     f'{num_stages}, {num_micro_batches}.')
  if num_stages > len(cells):
    raise ValueError(f'num_stages {num_stages} exceeds the {len(cells)} '
                     'cells of the network.')
  if num_stages > 1 or num_micro_batches > 1:
    p = pipelined_network.PipelinedNetwork.Params().Set(
        name=name, cells=cells, num_stages=num_stages,
        num_micro_batches=num_micro_batches, remat=remat,
        fprop_dtype=fprop_dtype)
    if batch_norm_mode is not None:
      p.batch_norm_mode = batch_norm_mode
    return p
  return layers.Sequential.Params().Set(name=name, cells=cells,
                                        fprop_dtype=fprop_dtype)
