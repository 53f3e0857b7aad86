"""The digits demo trained through the trainer with the GPipe pipeline."""
import pytest

from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from gpipe_lingvo.pipeline import pipelined_network


def testConvNetPipelinedParams():
  p = model_registry.GetParams('digits.ConvNetPipelined')
  assert p.task.network.cls is pipelined_network.PipelinedNetwork
  assert (p.task.network.num_stages, p.task.network.num_micro_batches) == (2, 4)


def testFewStepsThroughTrainer(tmp_path):
  """A short run: the pipelined step trains and checkpoints via trainer_lib."""
  p = model_registry.GetParams('digits.ConvNetPipelined')
  p.task.train.max_steps = 20
  t = trainer_lib.Trainer(p, str(tmp_path), print_fn=lambda _: None)
  res = t.Train(evaluate_splits=('test',))
  assert res['train']['loss'] < 2.3  # below chance-level cross-entropy
  assert res['test']['num_examples'] == 360


@pytest.mark.slow
def testReaches97PercentTestAccuracy(tmp_path):
  p = model_registry.GetParams('digits.ConvNetPipelined')
  t = trainer_lib.Trainer(p, str(tmp_path), print_fn=lambda _: None)
  res = t.Train(evaluate_splits=('test',))
  assert res['test']['accuracy'] >= 0.97
