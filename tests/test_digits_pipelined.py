"""The digits demo trained through the trainer with the GPipe pipeline."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import checkpoints
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
  p.task.train.Set(max_steps=20, save_interval_steps=10, log_interval_steps=5)
  logs = []
  t = trainer_lib.Trainer(p, str(tmp_path), print_fn=logs.append)
  # Weights and batch-norm statistics as initialised (no optimizer yet).
  initial = {k: v.numpy() for k, v in
             checkpoints.VariablesByKey(t.task).items()}
  res = t.Train(evaluate_splits=('test',))
  # It trains: the loss of steps 16-20 is under half that of steps 1-5
  # (2.72 -> 0.57 measured), and the test accuracy far above chance (0.1;
  # 0.91 measured).
  losses = [float(l.split()[3]) for l in logs if l.startswith('step')]
  assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses
  assert res['test']['accuracy'] >= 0.7, res
  assert res['test']['num_examples'] == 360
  # It checkpoints: ckpt-10 and ckpt-20, keyed by layer path as the plain
  # ConvNet's (whatever the stage split), ckpt-20 holding step 20 and every
  # variable as trained (all of them moved).
  ckpt = tmp_path / 'ckpt'
  assert sorted(f.name for f in ckpt.glob('*.index')) == [
      'ckpt-10.index', 'ckpt-20.index']
  reader = tf.train.load_checkpoint(str(ckpt / 'ckpt-20'))
  assert reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE') == 20
  plain = trainer_lib.Trainer(model_registry.GetParams('digits.ConvNet'),
                              str(tmp_path / 'plain'))
  keys = plain._Checkpointer().variables  # pylint: disable=protected-access
  by_key = t._Checkpointer().variables  # pylint: disable=protected-access
  assert sorted(by_key) == sorted(keys)
  for key, var in by_key.items():
    np.testing.assert_array_equal(
        reader.get_tensor(key + '/.ATTRIBUTES/VARIABLE_VALUE'), var.numpy(),
        err_msg=key)
  unmoved = [k for k, v in initial.items() if np.array_equal(
      v, reader.get_tensor(f'task/{k}/.ATTRIBUTES/VARIABLE_VALUE'))]
  assert len(initial) == 15 and not unmoved, unmoved


@pytest.mark.slow
def testReaches97PercentTestAccuracy(tmp_path):
  p = model_registry.GetParams('digits.ConvNetPipelined')
  t = trainer_lib.Trainer(p, str(tmp_path), print_fn=lambda _: None)
  res = t.Train(evaluate_splits=('test',))
  assert res['test']['accuracy'] >= 0.97
