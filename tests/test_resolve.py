"""One resolver: the cut training runs is the cut --mode=plan prints.

Training resolves a cost partition in resolve.PrepareNetworkParams (the
trainer's hook, before the task is built) and the network cuts its cells
as the params then say; --mode=plan plans through model_plan.PlanModel.
Both trace with resolve.TraceCosts (shape-only: a fresh tf.Graph, no
weights) and cut with resolve.Cut.
"""
import os

import pytest
import tensorflow as tf

from gpipe_lingvo import model_registry
from gpipe_lingvo.planning import model_plan
from gpipe_lingvo.planning import partition
from gpipe_lingvo.planning import resolve

# The loss counts in the FLOPs, the optimizer's slots in the memory.
MODES = ('flops', 'memory')
# Registered pipelined models whose traces take about a second each.
FAST = ('digits.ConvNetPipelined', 'cifar10.ResNet20', 'cifar10.ResNet56',
        'freebible.TransformerLmPipelined',
        'freebible.TransformerJaEnPipelined')
# Slower (AmoebaNet cells, ImageNet shapes, the paper's Transformer sizes
# with K <= 8), or the network of a FAST model (cifar100.ResNet20).
SLOW = ('cifar100.ResNet20', 'cifar10.AmoebaNetD_6_32',
        'cifar10.AmoebaNetB_18_512_FineTune',
        'cifar100.AmoebaNetB_18_512_FineTune', 'imagenet.AmoebaNetB_18_512',
        'imagenet.AmoebaNetD_18_256', 'imagenet.AmoebaNetD_18_416',
        'imagenet.AmoebaNetD_18_544', 'imagenet.AmoebaNetD_36_544',
        'imagenet.AmoebaNetD_72_512', 'gpipe_transformer.TransformerL103',
        'gpipe_transformer.TransformerL13')
# More stages than the 8 logical devices of the tests: not built here.
NOT_BUILT = ('gpipe_transformer.TransformerL1663',
             'gpipe_transformer.TransformerL415',
             'gpipe_transformer.TransformerT64')


def _Pipelined():
  return sorted(k for k, cls in model_registry.GetAllRegisteredClasses()
                .items() if resolve.IsPipelined(cls().Model().task.network))


def testEveryPipelinedModelIsChecked():
  # A newly registered pipelined model must join one of the lists.
  assert _Pipelined() == sorted(FAST + SLOW + NOT_BUILT)


def _TrainingAndPlanCuts(model, tmp_path):
  """Per mode: (counts of the network as trainer.py builds it, the plan's
  counts). Each side traces once (its own cache), whatever the mode."""
  out = {}
  for mode in MODES:
    p = model_registry.GetParams(model)
    p.task.network.partition = mode
    counts = resolve.PrepareNetworkParams(p, str(tmp_path / 'train'))
    with tf.Graph().as_default():
      net = p.task.network.Instantiate()
    trained = partition.Counts(net._ranges)  # pylint: disable=protected-access
    assert trained == counts
    q = model_registry.GetParams(model)
    q.task.network.Set(partition=mode,
                       cell_costs_path=str(tmp_path / 'plan.json'))
    plan = model_plan.PlanModel(q)
    assert plan['partition_spec'] == mode
    out[mode] = trained, plan['partition']
  assert os.path.exists(tmp_path / 'train' / resolve.COSTS_FILE)
  return out


# The SLOW models add about 6 minutes on a 2-core machine: they run when
# GPIPE_ALL_MODELS=1 is set, so the README's test command stays short.
_ALL = os.environ.get('GPIPE_ALL_MODELS') == '1'


@pytest.mark.parametrize(
    'model', list(FAST) + [
        pytest.param(m, marks=[
            pytest.mark.slow,
            pytest.mark.skipif(not _ALL, reason='set GPIPE_ALL_MODELS=1')])
        for m in SLOW])
def testTrainingCutIsThePlansCut(model, tmp_path):
  for mode, (trained, planned) in _TrainingAndPlanCuts(model,
                                                       tmp_path).items():
    assert trained == planned, mode


def testNetworkOnItsOwnUsesTheSameResolver(tmp_path):
  # Outside the trainer the network traces its cells alone (input_shape,
  # float32, no loss) through the same TraceCosts and Cut; the params cut
  # reads weights only, so it is the plan's.
  p = model_registry.GetParams('cifar10.ResNet20')
  net = p.task.network.Copy().Set(
      partition='params', input_shape=[p.train.batch_size, 32, 32, 3],
      cell_costs_path=str(tmp_path / 'net.json'))
  with tf.Graph().as_default():
    ranges = net.Instantiate()._ranges  # pylint: disable=protected-access
  p.task.network.partition = 'params'
  assert partition.Counts(ranges) == model_plan.PlanModel(p)['partition']
  costs = resolve.TraceCosts(net, 32)  # from the cache now
  assert [c.name for c in costs.cells][:2] == ['stem', 'stage1_block0']

