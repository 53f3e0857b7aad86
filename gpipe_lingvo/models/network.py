"""Wraps a model's cell list in the network layer that runs it.

num_stages == num_micro_batches == 1 gives layers.Sequential; otherwise the
GPipe engine's PipelinedNetwork (gpipe_lingvo.pipeline, being merged) with the
same cells; until the engine is importable, pipelined configs fall back to
layers.Sequential (identical variables and checkpoint keys: the cells get
the same child names either way) and log that they do.
"""
from absl import logging

from gpipe_lingvo import layers


def PipelineAvailable():
  try:
    from gpipe_lingvo import pipeline  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return hasattr(pipeline, 'PipelinedNetwork')


def NetworkParams(cells, name='network', num_stages=1, num_micro_batches=1,
                  remat=True):
  """Params of the network running `cells`, pipelined if num_stages > 1."""
  if num_stages < 1 or num_micro_batches < 1:
    raise ValueError(f'num_stages and num_micro_batches must be >= 1, got '
                     f'{num_stages}, {num_micro_batches}.')
  if num_stages > len(cells):
    raise ValueError(f'num_stages {num_stages} exceeds the {len(cells)} '
                     'cells of the network.')
  if num_stages > 1 or num_micro_batches > 1:
    if PipelineAvailable():
      from gpipe_lingvo import pipeline  # pylint: disable=g-import-not-at-top
      return pipeline.PipelinedNetwork.Params().Set(
          name=name, cells=cells, num_stages=num_stages,
          num_micro_batches=num_micro_batches, remat=remat)
    logging.info('gpipe_lingvo.pipeline is not available: running the %d '
                 'cells un-pipelined (layers.Sequential) instead of %d stages '
                 'x %d micro-batches.', len(cells), num_stages,
                 num_micro_batches)
  return layers.Sequential.Params().Set(name=name, cells=cells)
