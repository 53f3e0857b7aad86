"""Params: text round-trip of a registered model and override errors."""
import pytest

from gpipe_lingvo import hyperparams
from gpipe_lingvo import model_registry


def testModelParamsRoundTripThroughText():
  p = model_registry.GetParams('digits.ConvNet')
  text = p.ToText()
  q = model_registry.GetParams('digits.ConvNet')
  q.task.train.max_steps = 7
  q.task.network.cells[0].cells[1].decay = 0.5
  assert q.ToText() != text
  q.FromText(text)
  assert q.ToText() == text
  assert q.task.train.max_steps == p.task.train.max_steps
  assert q.task.network.cells[0].cells[1].decay == 0.9


def testOverrideSetsNestedValues():
  p = model_registry.GetParams('digits.ConvNet')
  hyperparams.ApplyOverrides(
      p, 'task.train.max_steps = 12; task.train.lr_schedule.learning_rate : 0.5')
  assert p.task.train.max_steps == 12
  assert p.task.train.lr_schedule.learning_rate == 0.5


def testOverrideUnknownKeyNamesKeyAndKnownSiblings():
  p = model_registry.GetParams('digits.ConvNet')
  with pytest.raises(hyperparams.OverrideError) as e:
    hyperparams.ApplyOverrides(p, 'task.train.max_stepz = 3')
  msg = str(e.value)
  assert "'task.train.max_stepz'" in msg
  assert "'max_stepz'" in msg
  assert 'max_steps' in msg and 'save_interval_steps' in msg


def testOverrideUnknownTopLevelKey():
  p = model_registry.GetParams('digits.ConvNet')
  with pytest.raises(hyperparams.OverrideError, match="<root>.*'tsak'"):
    hyperparams.ApplyOverrides(p, 'tsak.num_classes = 3')


def testOverrideUnparseableLine():
  p = model_registry.GetParams('digits.ConvNet')
  with pytest.raises(hyperparams.OverrideError, match='key = value'):
    hyperparams.ApplyOverrides(p, 'task.num_classes')
