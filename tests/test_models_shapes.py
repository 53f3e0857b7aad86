"""Forward shapes by symbolic tracing (TensorSpecs, no data, no big
forwards): ImageNet at 224/331/480 px and CIFAR at 32 px."""
import math

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from gpipe_lingvo.models import amoebanet
from gpipe_lingvo.models import resnet


def _Trace(network_params, image_size, training, return_net=False):
  """{cell name: output shape nest (lists)} traced cell by cell."""
  with base_layer.ZeroInitForCounting():
    net = network_params.Instantiate()
  spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
  out = {}
  with context.Scope(training=training, stats=None):
    for cell in net.cells:
      fn = tf.function(cell.FProp, autograph=False)
      res = fn.get_concrete_function(spec).structured_outputs
      spec = tf.nest.map_structure(
          lambda t: tf.TensorSpec(t.shape, t.dtype), res)
      out[cell.params.name] = tf.nest.map_structure(
          lambda t: t.shape.as_list(), res)
  return (out, net) if return_net else out


def _Imagenet(size):
  """Spatial sizes: stem conv VALID stride 2, then SAME stride-2 steps."""
  s = (size - 3) // 2 + 1
  sizes = [s]
  for _ in range(4):
    s = math.ceil(s / 2)
    sizes.append(s)
  return sizes  # stem, stem cell 0, stem cell 1 = stack 1, stack 2, stack 3


@pytest.mark.parametrize('genotype,size,expected,n_norm,n_red', [
    ('D', 224, [111, 56, 28, 14, 7], 4, 3),
    ('D', 331, [165, 83, 42, 21, 11], 4, 3),
    ('D', 480, [239, 120, 60, 30, 15], 4, 3),
    ('B', 480, [239, 120, 60, 30, 15], 4, 2),
    ('A', 331, [165, 83, 42, 21, 11], 4, 5)])
def testAmoebanetImagenetShapes(genotype, size, expected, n_norm, n_red):
  assert _Imagenet(size) == expected  # The fact sheet's table.
  f, classes = 16, 7
  p = amoebanet.AmoebaNet(genotype=genotype, num_normal_cells=3, filters=f,
                          image_size=size, num_classes=classes)
  train, net = _Trace(p, size, training=True, return_net=True)
  s0, s1, s2, s3, s4 = expected
  assert train['stem'] == {'cur': [None, s0, s0, 32]}
  assert train['stem_cell_0']['cur'] == [None, s1, s1, n_red * f // 4]
  assert train['stem_cell_0']['prev'] == [None, s0, s0, 32]
  assert train['stem_cell_1']['cur'] == [None, s2, s2, n_red * f // 2]
  assert train['normal_0']['cur'] == [None, s2, s2, n_norm * f]
  assert train['reduction_0']['cur'] == [None, s3, s3, n_red * 2 * f]
  assert train['normal_1']['cur'] == [None, s3, s3, n_norm * 2 * f]
  assert 'aux_logits' not in train['normal_1']
  assert train['aux_head']['aux_logits'] == [None, classes]
  assert train['reduction_1']['cur'] == [None, s4, s4, n_red * 4 * f]
  assert train['normal_2']['cur'] == [None, s4, s4, n_norm * 4 * f]
  assert train['normal_2']['aux_logits'] == [None, classes]
  assert train['head'] == {'logits': [None, classes],
                           'aux_logits': [None, classes]}
  # Evaluation skips the aux head: its state passes through unchanged and
  # the head returns plain logits.
  state = {'cur': tf.TensorSpec([None, s3, s3, n_norm * 2 * f]),
           'prev': tf.TensorSpec([None, s3, s3, n_red * 2 * f])}
  with context.Scope(training=False):
    aux_out = tf.function(net.aux_head.FProp, autograph=False
                         ).get_concrete_function(state).structured_outputs
    head_out = tf.function(net.head.FProp, autograph=False
                          ).get_concrete_function(
                              {'cur': tf.TensorSpec([None, s4, s4, n_norm * 4 * f])}
                          ).structured_outputs
  assert sorted(aux_out) == ['cur', 'prev']
  assert head_out.shape.as_list() == [None, classes]


def testAmoebanetCifarShapes():
  p = amoebanet.AmoebaNet(genotype='D', num_normal_cells=3, filters=8,
                          image_size=32, num_classes=10, stem='cifar')
  out = _Trace(p, 32, training=True)
  assert out['stem'] == {'cur': [None, 32, 32, 24]}  # 3F filters.
  assert out['normal_0']['cur'] == [None, 32, 32, 32]
  assert out['normal_1']['cur'] == [None, 16, 16, 64]
  assert out['aux_head']['aux_logits'] == [None, 10]
  assert out['normal_2']['cur'] == [None, 8, 8, 128]
  assert out['head']['logits'] == [None, 10]


@pytest.mark.parametrize('size', [224, 331, 480])
def testResnet50Shapes(size):
  out = _Trace(resnet.ResNet(depth=50), size, training=False)
  s = math.ceil(size / 4)
  assert out['stem'] == [None, s, s, 64]
  for stage, ch in ((1, 256), (2, 512), (3, 1024), (4, 2048)):
    last = max(k for k in out if k.startswith(f'stage{stage}_'))
    assert out[last] == [None, s, s, ch], last
    s = math.ceil(s / 2)
  assert out['head'] == [None, 1000]


def testCifarResnetShapes():
  out = _Trace(resnet.CifarResNet(depth=20), 32, training=True)
  assert out['stage1_block2'] == [None, 32, 32, 16]
  assert out['stage2_block0'] == [None, 16, 16, 32]
  assert out['stage3_block2'] == [None, 8, 8, 64]
  assert out['head'] == [None, 10]


def testSummaryOfRegisteredSmallModel(capsys):
  params = model_registry.GetParams('cifar10.AmoebaNetD_6_32')
  trainer = trainer_lib.Trainer(params, '')
  total = trainer.Summary()
  # The zero-initialised summary build is not the one training would use.
  assert any(np.any(v.numpy()) for v in trainer.task.TrainableVariables())
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1] == f'total trainable parameters: {total}'
  cells = params.task.network.cells
  assert len(lines) == len(cells) + 2  # Header, one row per cell, total.
  assert sum(int(l.split()[-1].replace(',', '')) for l in lines[1:-1]) == total
  assert lines[-2].split()[1:3] == ['[None,', '10]']


@pytest.mark.slow
def testRegisteredAmoebanetBAt480Traces():
  params = model_registry.GetParams('imagenet.AmoebaNetB_18_512')
  out = _Trace(params.task.network, 480, training=True)
  assert out['normal_17']['cur'] == [None, 15, 15, 16 * 512]
  assert out['head'] == {'logits': [None, 1000], 'aux_logits': [None, 1000]}
