"""Models for the embedded digits task (real scans bundled in scikit-learn)."""
from gpipe_lingvo import base_model_params
from gpipe_lingvo import base_task
from gpipe_lingvo import layers
from gpipe_lingvo import model_registry
from gpipe_lingvo.pipeline import pipelined_network
from tasks import digits


def _ConvBlock(name, cin, cout):
  return layers.Sequential.Params().Set(name=name, cells=[
      layers.Conv2D.Params().Set(name='conv', input_dim=cin, output_dim=cout,
                                 filter_shape=3),
      layers.BatchNorm.Params().Set(name='bn', dim=cout, decay=0.9),
      layers.Activation.Params().Set(name='relu', activation='relu'),
  ])


def ConvNetCells():
  """The cells (pipeline units) of the digits ConvNet: 8x8x1 -> 10 logits."""
  return [
      _ConvBlock('block1', 1, 32),
      _ConvBlock('block2', 32, 64),
      layers.Pool2D.Params().Set(name='pool', window=2, stride=2),
      layers.Flatten.Params().Set(name='flatten'),
      layers.FullyConnected.Params().Set(name='fc1', input_dim=4 * 4 * 64,
                                         output_dim=128, activation='relu'),
      layers.Dropout.Params().Set(name='dropout', keep_prob=0.8),
      layers.FullyConnected.Params().Set(name='logits', input_dim=128,
                                         output_dim=digits.NUM_CLASSES),
  ]


@model_registry.RegisterSingleTaskModel
class ConvNet(base_model_params.SingleTaskModelParams):
  """A small ConvNet; the out-of-the-box demo (about 97-99% test accuracy)."""

  def Train(self):
    return digits.TrainParams(batch_size=64)

  def Test(self):
    return digits.TestParams()

  def Task(self):
    p = base_task.ClassificationTask.Params()
    p.network = layers.Sequential.Params().Set(name='network',
                                               cells=ConvNetCells())
    p.num_classes = digits.NUM_CLASSES
    p.weight_decay = 1e-4
    tp = p.train
    tp.max_steps = 600
    tp.save_interval_steps = 200
    tp.log_interval_steps = 100
    tp.optimizer.Set(type='momentum', momentum=0.9)
    tp.lr_schedule.Set(type='cosine', learning_rate=0.05, warmup_steps=50,
                       total_steps=600)
    return p


@model_registry.RegisterSingleTaskModel
class ConvNetPipelined(ConvNet):
  """The same ConvNet trained with GPipe: K=2 stages on two logical CPU
  devices, M=4 micro-batches of 16, re-materialization on."""

  def Task(self):
    p = super().Task()
    p.network = pipelined_network.PipelinedNetwork.Params().Set(
        name='network', cells=ConvNetCells(), num_stages=2,
        num_micro_batches=4, schedule='gpipe', remat='always')
    p.network.topology.device_type = 'cpu'
    return p
