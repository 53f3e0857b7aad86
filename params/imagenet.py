"""ImageNet models of the GPipe paper: AmoebaNet-B/D and ResNet v1.5.

AmoebaNet hyperparameters follow the TF reference `imagenet_hparams()` of
the AmoebaNet authors (RMSProp decay 0.9, momentum 0.9, epsilon 1.0; lr
0.015 per 32 images, x0.97 every 2.4 epochs after 3 warm-up epochs; weight
decay 4e-5; label smoothing 0.1; aux head weight 0.4; dropout keep 0.5;
drop path keep 0.7 ramped linearly over the run; BN decay 0.9997, eps 1e-3;
gradient clipping 10). Real et al.'s text gives lr 0.001 and epsilon 0.1
instead (shared/notes/amoebanet.md F8). GPipe's batch size and epochs are
not published (F7): batch sizes here are our choice, 100 epochs is the TF
reference's. Weight EMA (0.9999 in the reference) is not implemented.

Stage counts K are the paper's; micro-batch counts M are our choice where
the paper does not state them. Pipelined configs run un-pipelined until
gpipe_lingvo.pipeline lands (gpipe_lingvo/models/network.py).

Mixed precision (bfloat16 activations, float32 variables and loss; the
paper's TPU setting): --model_params_override='task.network.fprop_dtype :
bfloat16', or FPROP_DTYPE = tf.bfloat16 in a subclass.
"""
import tensorflow as tf

from gpipe_lingvo import base_model_params
from gpipe_lingvo import base_task
from gpipe_lingvo import model_registry
from gpipe_lingvo.models import amoebanet
from gpipe_lingvo.models import network
from gpipe_lingvo.models import resnet
from tasks import imagenet

NUM_TRAIN_EXAMPLES = 1281167


def AmoebaNetTask(genotype, num_normal_cells, filters, image_size,
                  batch_size, num_stages, num_micro_batches, epochs=100,
                  fprop_dtype=tf.float32, num_classes=imagenet.NUM_CLASSES):
  """ClassificationTask params of AmoebaNet-<genotype>(L, F), TF recipe."""
  steps_per_epoch = NUM_TRAIN_EXAMPLES // batch_size
  total_steps = epochs * steps_per_epoch
  cells = amoebanet.AmoebaNetCells(
      genotype=genotype, num_normal_cells=num_normal_cells, filters=filters,
      image_size=image_size, num_classes=num_classes, stem='imagenet',
      use_aux_head=True, aux_scaling=0.4, dropout_keep_prob=0.5,
      drop_path_keep_prob=0.7, drop_path_burn_in_steps=total_steps,
      bn=amoebanet.DefaultBatchNorm())
  p = base_task.ClassificationTask.Params()
  p.network = network.NetworkParams(
      cells, num_stages=num_stages, num_micro_batches=num_micro_batches,
      fprop_dtype=fprop_dtype)
  p.num_classes = num_classes
  p.label_smoothing = 0.1
  p.aux_loss_weight = 0.4
  p.weight_decay = 4e-5
  tp = p.train
  tp.max_steps = total_steps
  tp.save_interval_steps = 5000
  tp.log_interval_steps = 100
  lr = 0.015 * batch_size / 32
  tp.optimizer.Set(type='rmsprop', decay=0.9, momentum=0.9, epsilon=1.0,
                   clip_gradient_norm=10.0)
  tp.lr_schedule.Set(type='exponential', learning_rate=lr, decay_rate=0.97,
                     decay_steps=int(2.4 * steps_per_epoch), staircase=True,
                     warmup_steps=3 * steps_per_epoch,
                     min_learning_rate=1e-4 * lr)
  return p


def ResNetTask(depth, batch_size, num_stages=1, num_micro_batches=1,
               epochs=90, fprop_dtype=tf.float32):
  """ResNet v1.5-<depth>: momentum SGD, lr 0.1 per 256, x0.1 at 30/60/80."""
  steps_per_epoch = NUM_TRAIN_EXAMPLES // batch_size
  cells = resnet.ResNetCells(depth=depth, num_classes=imagenet.NUM_CLASSES)
  p = base_task.ClassificationTask.Params()
  p.network = network.NetworkParams(
      cells, num_stages=num_stages, num_micro_batches=num_micro_batches,
      fprop_dtype=fprop_dtype)
  p.num_classes = imagenet.NUM_CLASSES
  p.label_smoothing = 0.1
  p.weight_decay = 1e-4
  tp = p.train
  tp.max_steps = epochs * steps_per_epoch
  tp.save_interval_steps = 5000
  tp.log_interval_steps = 100
  tp.optimizer.Set(type='momentum', momentum=0.9)
  tp.lr_schedule.Set(
      type='piecewise', learning_rate=0.1 * batch_size / 256,
      warmup_steps=5 * steps_per_epoch,
      boundaries=[e * steps_per_epoch for e in (30, 60, 80)],
      values=[1.0, 0.1, 0.01, 0.001])
  return p


class _ImageNet(base_model_params.SingleTaskModelParams):
  """Common input: ImageNet at IMAGE_SIZE, BATCH_SIZE images per step."""
  IMAGE_SIZE = 224
  BATCH_SIZE = 128
  FPROP_DTYPE = tf.float32  # tf.bfloat16: mixed precision.

  def Train(self):
    return imagenet.InputParams('train', self.BATCH_SIZE, self.IMAGE_SIZE)

  def Test(self):
    return imagenet.InputParams('validation', self.BATCH_SIZE,
                                self.IMAGE_SIZE)


class _AmoebaNet(_ImageNet):
  GENOTYPE = 'D'
  L, F = 18, 208
  NUM_STAGES, NUM_MICRO_BATCHES = 1, 1

  def Task(self):
    return AmoebaNetTask(self.GENOTYPE, self.L, self.F, self.IMAGE_SIZE,
                         self.BATCH_SIZE, self.NUM_STAGES,
                         self.NUM_MICRO_BATCHES,
                         fprop_dtype=self.FPROP_DTYPE)


@model_registry.RegisterSingleTaskModel
class AmoebaNetB_18_512(_AmoebaNet):  # pylint: disable=invalid-name
  """GPipe's 557M model (84.4% top-1): 480 px, 4 partitions."""
  GENOTYPE = 'B'
  L, F = 18, 512
  IMAGE_SIZE = 480
  BATCH_SIZE = 256
  NUM_STAGES, NUM_MICRO_BATCHES = 4, 16


@model_registry.RegisterSingleTaskModel
class AmoebaNetD_18_256(_AmoebaNet):  # pylint: disable=invalid-name
  """GPipe's speed model (Table 2): K=8, M=32 at 224 px."""
  L, F = 18, 256
  NUM_STAGES, NUM_MICRO_BATCHES = 8, 32


# GPipe Table 1: the largest model per number of cores (224 px, batch 128,
# RMSProp). Naive-1 is un-pipelined; Pipeline-K runs K partitions.


@model_registry.RegisterSingleTaskModel
class AmoebaNetD_18_208(_AmoebaNet):  # pylint: disable=invalid-name
  """Table 1 Naive-1: 82M parameters, one core without GPipe."""
  L, F = 18, 208


@model_registry.RegisterSingleTaskModel
class AmoebaNetD_18_416(_AmoebaNet):  # pylint: disable=invalid-name
  """Table 1 Pipeline-1: 318M, one partition with micro-batches and remat."""
  L, F = 18, 416
  NUM_STAGES, NUM_MICRO_BATCHES = 1, 8


@model_registry.RegisterSingleTaskModel
class AmoebaNetD_18_544(_AmoebaNet):  # pylint: disable=invalid-name
  """Table 1 Pipeline-2: 542M."""
  L, F = 18, 544
  NUM_STAGES, NUM_MICRO_BATCHES = 2, 8


@model_registry.RegisterSingleTaskModel
class AmoebaNetD_36_544(_AmoebaNet):  # pylint: disable=invalid-name
  """Table 1 Pipeline-4: 1.05B."""
  L, F = 36, 544
  NUM_STAGES, NUM_MICRO_BATCHES = 4, 16


@model_registry.RegisterSingleTaskModel
class AmoebaNetD_72_512(_AmoebaNet):  # pylint: disable=invalid-name
  """Table 1 Pipeline-8: 1.8B."""
  L, F = 72, 512
  NUM_STAGES, NUM_MICRO_BATCHES = 8, 32


class _ResNet(_ImageNet):
  DEPTH = 50
  BATCH_SIZE = 256

  def Task(self):
    return ResNetTask(self.DEPTH, self.BATCH_SIZE,
                      fprop_dtype=self.FPROP_DTYPE)


@model_registry.RegisterSingleTaskModel
class ResNet50(_ResNet):
  """ResNet v1.5-50: 25,557,032 parameters."""
  DEPTH = 50


@model_registry.RegisterSingleTaskModel
class ResNet101(_ResNet):
  """ResNet v1.5-101."""
  DEPTH = 101


@model_registry.RegisterSingleTaskModel
class ResNet152(_ResNet):
  """ResNet v1.5-152."""
  DEPTH = 152


@model_registry.RegisterSingleTaskModel
class SmallConvNet(_ImageNet):
  """Tiny convnet on ImageNet at 32 px, for end-to-end checks of the
  ImageNet input, checkpoints and resume (not a model of the paper)."""
  IMAGE_SIZE = 32
  BATCH_SIZE = 8

  def Task(self):
    # params.cifar10 imports this module, so not at the top.
    from params import cifar10  # pylint: disable=import-outside-toplevel
    return cifar10.SmallConvNetTask(imagenet.NUM_CLASSES)
