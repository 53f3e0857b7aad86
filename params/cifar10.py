"""CIFAR-10 models.

`SmallConvNet` is a tiny convnet for end-to-end checks of the CIFAR input,
metrics and fine-tuning (seconds per hundred steps on a CPU); it is not a
model of the paper.
"""
from gpipe_lingvo import base_model_params
from gpipe_lingvo import base_task
from gpipe_lingvo import layers
from gpipe_lingvo import model_registry
from tasks import cifar


def SmallConvNetTask(num_classes, width=16, max_steps=200):
  """Task params: two conv-bn-relu-pool blocks, global pool, FC logits."""
  def Block(name, cin, cout):
    return layers.Sequential.Params().Set(name=name, cells=[
        layers.Conv2D.Params().Set(name='conv', input_dim=cin,
                                   output_dim=cout, filter_shape=3),
        layers.BatchNorm.Params().Set(name='bn', dim=cout, decay=0.9),
        layers.Activation.Params().Set(name='relu', activation='relu'),
        layers.Pool2D.Params().Set(name='pool', window=2, stride=2),
    ])
  cells = [
      Block('block1', 3, width),
      Block('block2', width, 2 * width),
      layers.GlobalPool.Params().Set(name='global_pool'),
      layers.FullyConnected.Params().Set(name='logits', input_dim=2 * width,
                                         output_dim=num_classes),
  ]
  p = base_task.ClassificationTask.Params()
  p.network = layers.Sequential.Params().Set(name='network', cells=cells)
  p.num_classes = num_classes
  p.weight_decay = 1e-4
  tp = p.train
  tp.max_steps = max_steps
  tp.save_interval_steps = 100
  tp.log_interval_steps = 20
  tp.optimizer.Set(type='momentum', momentum=0.9)
  tp.lr_schedule.Set(type='cosine', learning_rate=0.05, warmup_steps=10,
                     total_steps=max_steps)
  return p


@model_registry.RegisterSingleTaskModel
class SmallConvNet(base_model_params.SingleTaskModelParams):
  """Tiny CIFAR-10 convnet (pad-crop + flip augmentation)."""
  DATASET = 'cifar10'
  BATCH_SIZE = 32

  def Train(self):
    return cifar.InputParams(self.DATASET, 'train', self.BATCH_SIZE)

  def Test(self):
    return cifar.InputParams(self.DATASET, 'test', self.BATCH_SIZE)

  def Task(self):
    return SmallConvNetTask(cifar.NUM_CLASSES[self.DATASET])
