"""Small AmoebaNet and ResNet train a few steps (un-pipelined, eager) with
deterministic results; pipelined == un-pipelined once the engine lands."""

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import base_task
from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo import hyperparams
from gpipe_lingvo import model_registry
from gpipe_lingvo import layers
from gpipe_lingvo.models import amoebanet
from gpipe_lingvo.models import network
from gpipe_lingvo.models import resnet

NUM_CLASSES = 5
IMAGE = 16


def _AmoebaCells(regularize=True, bn_mode='micro_batch', fprop_dtype=None):
  return amoebanet.AmoebaNetCells(
      genotype='D', num_normal_cells=3, filters=8, image_size=IMAGE,
      num_classes=NUM_CLASSES, stem='cifar', use_aux_head=True,
      dropout_keep_prob=0.8 if regularize else 1.0,
      drop_path_keep_prob=0.7 if regularize else 1.0,
      drop_path_burn_in_steps=4,
      bn=amoebanet.DefaultBatchNorm().Set(decay=0.9, mode=bn_mode),
      fprop_dtype=fprop_dtype)


def _ResNetCells(bn_mode='micro_batch', fprop_dtype=None, **unused):
  return resnet.CifarResNetCells(
      depth=8, width=8, num_classes=NUM_CLASSES,
      bn=resnet.DefaultBatchNorm().Set(mode=bn_mode), fprop_dtype=fprop_dtype)


def _Task(net_params, learning_rate=0.01):
  p = base_task.ClassificationTask.Params().Set(
      num_classes=NUM_CLASSES, aux_loss_weight=0.4, weight_decay=1e-4,
      label_smoothing=0.1, random_seed=3)
  p.network = net_params
  p.train.optimizer.Set(type='momentum', momentum=0.9)
  # A small rate: at 0.05 these tiny nets train chaotically, and rounding
  # differences (eager vs graph, op fusion) grow to percents within 3 steps.
  p.train.lr_schedule.Set(type='constant', learning_rate=learning_rate)
  task = p.Instantiate()
  task.BuildOptimizer()
  return task


def _Batch(i, n=8):
  return {'image': tf.random.stateless_normal([n, IMAGE, IMAGE, 3], [i, 1]),
          'label': tf.random.stateless_uniform([n], [i, 2], 0, NUM_CLASSES,
                                               tf.int32),
          'weight': tf.ones([n])}


def _Train(task, steps, fixed_batch=False):
  # A pipelined step is traced once for every step, as the trainer does (an
  # eager call would trace it at every call); a plain network runs eagerly,
  # which is faster for three steps than tracing it.
  task.BuildOptimizer()
  train_step = task.TrainStep
  if hasattr(task.network, 'ComputeLossAndGradients'):
    train_step = tf.function(task.TrainStep, autograph=False)
  losses = []
  for i in range(steps):
    sums, _, _ = train_step(_Batch(0 if fixed_batch else i),
                            tf.constant(i, tf.int64))
    losses.append(float(sums['total_loss']))
  return np.array(losses)


def _Sequential(cells):
  return layers.Sequential.Params().Set(name='network', cells=cells)


@pytest.mark.parametrize('cells_fn', [_AmoebaCells, _ResNetCells])
def testSmallModelTrainsDeterministically(cells_fn):
  a = _Train(_Task(_Sequential(cells_fn())), 3)
  b = _Train(_Task(_Sequential(cells_fn())), 3)
  assert np.all(np.isfinite(a))
  # Same params, seeds and data: same weights, masks and losses.
  np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize('cells_fn', [_AmoebaCells, _ResNetCells])
def testSmallModelFitsAFixedBatch(cells_fn):
  kw = {'regularize': False} if cells_fn is _AmoebaCells else {}
  losses = _Train(_Task(_Sequential(cells_fn(**kw)), learning_rate=0.05), 6,
                  fixed_batch=True)
  assert losses[-1] < 0.8 * losses[0], losses


def testAmoebanetAuxLogitsInTrainingOnlyAndBnStatsUpdate():
  task = _Task(_Sequential(_AmoebaCells()))
  image = _Batch(0)['image']
  with context.Scope(training=True, step=0):
    out = task.network.FProp(image)
  assert sorted(out) == ['aux_logits', 'logits']
  with context.Scope(training=False):
    assert task.network.FProp(image).shape == [8, NUM_CLASSES]
  bn = task.network.normal_0.prep_cur.bn
  before = bn.vars.moving_mean.numpy().copy()
  _Train(task, 1)
  assert not np.allclose(before, bn.vars.moving_mean.numpy())


@pytest.mark.parametrize('cells_fn', [_AmoebaCells, _ResNetCells])
def testMixedPrecisionBfloat16(cells_fn):
  task32 = _Task(_Sequential(cells_fn()))
  task16 = _Task(_Sequential(cells_fn(fprop_dtype=tf.bfloat16)))
  image = _Batch(0)['image']
  with context.Scope(training=False):
    logits = task16.network.FProp(image)
  assert logits.dtype == tf.bfloat16
  assert all(v.dtype == tf.float32 for v in task16.AllVariables())
  l32 = _Train(task32, 2)
  l16 = _Train(task16, 2)
  assert np.all(np.isfinite(l16))
  # Same initial weights; the first loss differs only by bfloat16 rounding.
  assert abs(l16[0] - l32[0]) < 0.05 * l32[0], (l16, l32)


def testRegisteredModelSwitchesToBfloat16ByOverride():
  params = model_registry.GetParams('cifar10.ResNet20')
  hyperparams.ApplyOverrides(params, 'task.network.fprop_dtype : bfloat16')
  net = params.task.network.Copy().Instantiate()
  assert all(c.fprop_dtype == tf.bfloat16 for c in net.cells)
  with context.Scope(training=False):
    logits = net.FProp(tf.zeros([2, 32, 32, 3]))
  assert logits.dtype == tf.bfloat16 and logits.shape == [2, 10]
  assert all(v.dtype == tf.float32 for v in net.AllVariables())


@pytest.mark.slow  # About 50 s on the 2-core machine (engine tracing).
@pytest.mark.parametrize('cells_fn', [_AmoebaCells, _ResNetCells])
def testPipelinedEqualsUnpipelined(cells_fn):
  # No dropout / drop path: their masks depend on the micro-batch index.
  kw = {'regularize': False} if cells_fn is _AmoebaCells else {}
  cells = cells_fn(bn_mode='full_batch', **kw)
  plain = _Task(_Sequential([c.Copy() for c in cells]))
  piped = _Task(network.NetworkParams([c.Copy() for c in cells],
                                      num_stages=2, num_micro_batches=4,
                                      remat='always'))
  assert type(piped.network).__name__ == 'PipelinedNetwork'
  for a, b in zip(plain.TrainableVariables(), piped.TrainableVariables()):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  np.testing.assert_allclose(_Train(plain, 3), _Train(piped, 3), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('cells_fn', [_AmoebaCells, _ResNetCells])
def testMicroBatchBnSameLossesForAnyStageCount(cells_fn):
  # Per-micro-batch batch norm: K=2 stages (remat on) must train exactly as
  # K=1 with the same M=2 micro-batches, so cutting a real model into stages
  # changes nothing; with M micro-batches really flowing through the stages.
  kw = {'regularize': False} if cells_fn is _AmoebaCells else {}
  cells = cells_fn(bn_mode='micro_batch', **kw)
  one = _Task(network.NetworkParams([c.Copy() for c in cells], num_stages=1,
                                    num_micro_batches=2, remat='never'))
  two = _Task(network.NetworkParams([c.Copy() for c in cells], num_stages=2,
                                    num_micro_batches=2, remat='always'))
  np.testing.assert_allclose(_Train(one, 3), _Train(two, 3), rtol=1e-4,
                             atol=1e-5)


def testZeroInitForCountingBuildsTheSameVariables():
  with base_layer.ZeroInitForCounting():
    zero = _Sequential(_ResNetCells()).Instantiate()
  real = _Sequential(_ResNetCells()).Instantiate()
  assert [v.name for v in zero.AllVariables()] == [
      v.name for v in real.AllVariables()]
  assert zero.NumParams() == real.NumParams()
  assert all(not np.any(v.numpy()) for v in zero.TrainableVariables())
  assert any(np.any(v.numpy()) for v in real.TrainableVariables())


def testAmoebanetWithDropPathSavesAndRestores(tmp_path):
  """The trainer saves the task's object graph: every layer of a cell with
  drop path must be reachable under string names."""
  task = _Task(_Sequential(_AmoebaCells()))
  _Train(task, 1)
  path = tf.train.Checkpoint(task=task).write(str(tmp_path / 'ckpt'))
  names = [n for n, _ in tf.train.list_variables(path)]
  assert any('drop' not in n and '/comb0_left/' in n for n in names), names
  saved = {v.name: v.numpy() for v in task.network.variables}
  for v in task.network.variables:
    v.assign(tf.zeros_like(v))
  tf.train.Checkpoint(task=task).read(path).assert_existing_objects_matched()
  for v in task.network.variables:
    np.testing.assert_array_equal(v.numpy(), saved[v.name])
