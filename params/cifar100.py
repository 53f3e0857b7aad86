"""CIFAR-100 models."""
from gpipe_lingvo import model_registry
from params import cifar10 as cifar10_params


@model_registry.RegisterSingleTaskModel
class SmallConvNet(cifar10_params.SmallConvNet):
  """The tiny convnet of cifar10.SmallConvNet with 100 classes."""
  DATASET = 'cifar100'
