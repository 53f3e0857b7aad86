"""CIFAR-10 models: small pipelineable AmoebaNet/ResNet variants that train
on a 2-core CPU in minutes, He et al.'s ResNets, Real et al.'s
AmoebaNet-A(18, 36), GPipe's transfer setting (AmoebaNet-B(18, 512)
fine-tuned at 480 px), and `SmallConvNet`, a tiny convnet for end-to-end
checks of the CIFAR input, metrics and fine-tuning (not a model of the paper).
"""
import tensorflow as tf

from gpipe_lingvo import base_model_params
from gpipe_lingvo import base_task
from gpipe_lingvo import layers
from gpipe_lingvo import model_registry
from gpipe_lingvo.models import amoebanet
from gpipe_lingvo.models import network
from gpipe_lingvo.models import resnet
from params import imagenet as imagenet_params
from tasks import cifar

DATASET = 'cifar10'
NUM_TRAIN_EXAMPLES = 50000
# Where `trainer.py --model=imagenet.AmoebaNetB_18_512 --logdir=...` is
# expected to have written the checkpoint the fine-tuning configs start from.
IMAGENET_LOGDIR = 'logs/imagenet.AmoebaNetB_18_512'


def SmallTrainParams(p, max_steps, learning_rate, weight_decay):
  """Momentum SGD with a cosine schedule over max_steps (short CPU runs)."""
  p.weight_decay = weight_decay
  tp = p.train
  tp.max_steps = max_steps
  tp.save_interval_steps = max(100, max_steps // 4)
  tp.log_interval_steps = 50
  tp.optimizer.Set(type='momentum', momentum=0.9, clip_gradient_norm=5.0)
  tp.lr_schedule.Set(type='cosine', learning_rate=learning_rate,
                     warmup_steps=min(100, max_steps // 10),
                     total_steps=max_steps)
  return p


def SmallAmoebaNetTask(num_classes, genotype='D', num_normal_cells=6,
                       filters=32, max_steps=300, num_stages=2,
                       num_micro_batches=4, fprop_dtype=tf.float32):
  """AmoebaNet with the CIFAR stem (3x3 conv, 3F filters) at 32 px."""
  cells = amoebanet.AmoebaNetCells(
      genotype=genotype, num_normal_cells=num_normal_cells, filters=filters,
      image_size=32, num_classes=num_classes, stem='cifar',
      use_aux_head=True, aux_scaling=0.4, dropout_keep_prob=0.8,
      drop_path_keep_prob=0.9, drop_path_burn_in_steps=max_steps,
      bn=amoebanet.DefaultBatchNorm().Set(decay=0.9, epsilon=1e-5))
  p = base_task.ClassificationTask.Params()
  p.network = network.NetworkParams(cells, num_stages=num_stages,
                                    num_micro_batches=num_micro_batches,
                                    fprop_dtype=fprop_dtype)
  p.num_classes = num_classes
  p.aux_loss_weight = 0.4
  return SmallTrainParams(p, max_steps, learning_rate=0.05,
                          weight_decay=3e-4)


def CifarResNetTask(num_classes, depth, max_steps, num_stages=1,
                    num_micro_batches=1, fprop_dtype=tf.float32):
  """He et al.'s CIFAR ResNet (option-A shortcuts), cosine schedule."""
  cells = resnet.CifarResNetCells(depth=depth, num_classes=num_classes)
  p = base_task.ClassificationTask.Params()
  p.network = network.NetworkParams(cells, num_stages=num_stages,
                                    num_micro_batches=num_micro_batches,
                                    fprop_dtype=fprop_dtype)
  p.num_classes = num_classes
  return SmallTrainParams(p, max_steps, learning_rate=0.1, weight_decay=1e-4)


def FineTuneTask(num_classes, batch_size=256, epochs=100):
  """GPipe's transfer setting: ImageNet AmoebaNet-B(18, 512) at 480 px with
  a new head for num_classes, "the same hyper-parameters as ImageNet"
  (the ImageNet recipe, its epochs counted in CIFAR epochs).

  Initialised from the ImageNet run's checkpoint (IMAGENET_LOGDIR, or
  override task.init_from_checkpoint.checkpoint_path): every variable but
  the classifier heads (head/fc, aux_head/fc: FullyConnected layers with
  num_classes outputs), which are new. Fine-tuning length is not published;
  100 epochs is our choice.
  """
  p = imagenet_params.AmoebaNetTask(
      'B', 18, 512, image_size=480, batch_size=batch_size, num_stages=4,
      num_micro_batches=16, num_classes=num_classes)
  steps_per_epoch = NUM_TRAIN_EXAMPLES // batch_size
  tp = p.train
  tp.max_steps = epochs * steps_per_epoch
  tp.save_interval_steps = 2000
  tp.lr_schedule.Set(warmup_steps=3 * steps_per_epoch,
                     decay_steps=int(2.4 * steps_per_epoch))
  for cell in p.network.cells:
    if 'drop_path' in dict(cell.IterParams()):
      cell.drop_path.burn_in_steps = tp.max_steps
  p.init_from_checkpoint.checkpoint_path = IMAGENET_LOGDIR
  return p


class _Cifar(base_model_params.SingleTaskModelParams):
  DATASET = DATASET
  IMAGE_SIZE = 32
  BATCH_SIZE = 64
  FPROP_DTYPE = tf.float32  # tf.bfloat16: mixed precision.

  CUTOUT_SIZE = 0  # Cutout side in output pixels (16 at 32 px is usual).

  def Train(self):
    # Pad-and-crop and random flip are on by default.
    return cifar.InputParams(self.DATASET, 'train', self.BATCH_SIZE,
                             self.IMAGE_SIZE, cutout_size=self.CUTOUT_SIZE)

  def Test(self):
    return cifar.InputParams(self.DATASET, 'test', 500 if self.IMAGE_SIZE <= 32
                             else self.BATCH_SIZE, self.IMAGE_SIZE)


@model_registry.RegisterSingleTaskModel
class AmoebaNetD_6_32(_Cifar):  # pylint: disable=invalid-name
  """AmoebaNet-D(6, 32), CIFAR stem, aux head; pipelined K=2, M=4. Its size
  knobs (trainer.py --search_largest) are NUM_NORMAL_CELLS and FILTERS."""
  NUM_NORMAL_CELLS = 6
  FILTERS = 32

  def Task(self):
    return SmallAmoebaNetTask(cifar.NUM_CLASSES[DATASET],
                              num_normal_cells=self.NUM_NORMAL_CELLS,
                              filters=self.FILTERS,
                              fprop_dtype=self.FPROP_DTYPE)


@model_registry.RegisterSingleTaskModel
class ResNet20(_Cifar):
  """He et al.'s ResNet-20 (0.27M); pipelined K=2, M=4."""
  BATCH_SIZE = 128

  def Task(self):
    return CifarResNetTask(cifar.NUM_CLASSES[DATASET], 20, max_steps=600,
                           num_stages=2, num_micro_batches=4,
                           fprop_dtype=self.FPROP_DTYPE)


@model_registry.RegisterSingleTaskModel
class ResNet56(_Cifar):
  """ResNet-56 (0.85M), He et al.'s 64k-step length; K=4, M=8."""
  BATCH_SIZE = 128

  def Task(self):
    return CifarResNetTask(cifar.NUM_CLASSES[DATASET], 56, max_steps=64000,
                           num_stages=4, num_micro_batches=8,
                           fprop_dtype=self.FPROP_DTYPE)


@model_registry.RegisterSingleTaskModel
class AmoebaNetA_18_36(_Cifar):  # pylint: disable=invalid-name
  """Real et al.'s CIFAR AmoebaNet-A (N=6, F=36; 3.2M without aux head):
  SGD momentum 0.9, lr 0.024 cosine, batch 128, 600 epochs, weight decay
  5e-4, drop path to keep 0.7, aux weight 0.5 (NASNet's 128/768 head)."""
  BATCH_SIZE = 128

  def Task(self):
    steps = 600 * NUM_TRAIN_EXAMPLES // self.BATCH_SIZE
    cells = amoebanet.AmoebaNetCells(
        genotype='A', num_normal_cells=18, filters=36, image_size=32,
        num_classes=cifar.NUM_CLASSES[DATASET], stem='cifar',
        use_aux_head=True, aux_scaling=1.0, dropout_keep_prob=1.0,
        drop_path_keep_prob=0.7, drop_path_burn_in_steps=steps,
        bn=amoebanet.DefaultBatchNorm().Set(decay=0.9, epsilon=1e-5))
    p = base_task.ClassificationTask.Params()
    p.network = network.NetworkParams(cells, fprop_dtype=self.FPROP_DTYPE)
    p.num_classes = cifar.NUM_CLASSES[DATASET]
    p.aux_loss_weight = 0.5
    p = SmallTrainParams(p, steps, learning_rate=0.024, weight_decay=5e-4)
    p.train.lr_schedule.warmup_steps = 0
    p.train.save_interval_steps = 5000
    return p


@model_registry.RegisterSingleTaskModel
class AmoebaNetB_18_512_FineTune(_Cifar):  # pylint: disable=invalid-name
  """GPipe transfer: ImageNet AmoebaNet-B(18, 512) fine-tuned at 480 px
  (99.0% in the paper): flip and cutout, initialised from ImageNet."""
  IMAGE_SIZE = 480
  BATCH_SIZE = 256
  CUTOUT_SIZE = 240  # 16/32 of the side, as 16 px cutout at 32 px.

  def Task(self):
    return FineTuneTask(cifar.NUM_CLASSES[DATASET])


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
