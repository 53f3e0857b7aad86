"""CIFAR-100 models: GPipe's transfer setting, a small ResNet and the tiny
end-to-end convnet."""
from gpipe_lingvo import model_registry
from params import cifar10
from tasks import cifar

DATASET = 'cifar100'


class _Cifar100(cifar10._Cifar):  # pylint: disable=protected-access
  DATASET = DATASET


@model_registry.RegisterSingleTaskModel
class AmoebaNetB_18_512_FineTune(_Cifar100):  # pylint: disable=invalid-name
  """GPipe transfer: ImageNet AmoebaNet-B(18, 512) fine-tuned at 480 px
  (91.3% in the paper): flip and cutout, initialised from ImageNet."""
  IMAGE_SIZE = 480
  BATCH_SIZE = 256
  CUTOUT_SIZE = 240

  def Task(self):
    return cifar10.FineTuneTask(cifar.NUM_CLASSES[DATASET])


@model_registry.RegisterSingleTaskModel
class ResNet20(_Cifar100):
  """ResNet-20 with 100 classes; pipelined K=2, M=4."""
  BATCH_SIZE = 128

  def Task(self):
    return cifar10.CifarResNetTask(cifar.NUM_CLASSES[DATASET], 20,
                                   max_steps=600, num_stages=2,
                                   num_micro_batches=4,
                                   fprop_dtype=self.FPROP_DTYPE)


@model_registry.RegisterSingleTaskModel
class SmallConvNet(cifar10.SmallConvNet):
  """The tiny convnet of cifar10.SmallConvNet with 100 classes."""
  DATASET = 'cifar100'
