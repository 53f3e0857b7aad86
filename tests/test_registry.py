"""Model registry: keys, lookup and helpful errors."""
import pytest

from gpipe_lingvo import base_model_params
from gpipe_lingvo import model_registry


def testKeyIsModuleBelowParamsPlusClass():
  cls = model_registry.GetClass('digits.ConvNet')
  assert cls.__name__ == 'ConvNet'
  assert cls.__module__ == 'params.digits'
  assert 'digits.ConvNet' in model_registry.GetAllRegisteredClasses()


def testGetParamsHasTaskAndSplits():
  p = model_registry.GetParams('digits.ConvNet')
  assert p.model == 'digits.ConvNet'
  assert p.task.num_classes == 10
  assert p.train.is_training and not p.test.is_training


def testUnknownModelSuggestsClosest():
  with pytest.raises(model_registry.ModelNotFoundError) as e:
    model_registry.GetClass('digits.ConvNett')
  assert 'digits.ConvNet' in str(e.value)
  assert 'Did you mean' in str(e.value)


def testDoubleRegistrationOfADifferentClassFails():
  class ConvNet(base_model_params.SingleTaskModelParams):  # pylint: disable=unused-variable
    pass
  ConvNet.__module__ = 'params.digits'
  with pytest.raises(ValueError, match='registered twice'):
    model_registry.RegisterSingleTaskModel(ConvNet)
