"""The one module with a private TensorFlow import: XLA sharding annotations
(the version check, the annotation in the graph, its gradient, the HLO)."""
import pytest
import tensorflow as tf

from gpipe_lingvo.pipeline import stage_function
from gpipe_lingvo.pipeline import xla_annotations


def testVersionCheckNamesTheSupportedVersions():
  check = lambda v: stage_function.CheckTensorFlowVersion(
      v, xla_annotations.SUPPORTED_TF_VERSIONS, 'xla_annotations')
  check('2.21.0')
  with pytest.raises(stage_function.UnsupportedTensorFlowError,
                     match=r'xla_annotations needs TensorFlow 2\.21\.x; found '
                     r'2\.99\.1'):
    check('2.99.1')


def testAnnotationIsAnIdentityOnItsCoreAndSoIsItsGradient():
  seen = {}

  @tf.function(autograph=False)
  def Fn(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = xla_annotations.AssignToLogicalCore(x * 3.0, 2)
      loss = tf.reduce_sum(y * y)
    g = tape.gradient(loss, x)
    seen['y'] = xla_annotations.ShardingOf(y)
    seen['x'] = xla_annotations.ShardingOf(x)
    seen['grad_ops'] = [xla_annotations.ShardingOf(op.outputs[0])
                        for op in g.graph.get_operations()
                        if op.type == 'XlaSharding']
    return y, g

  y, g = Fn(tf.constant([1.0, 2.0]))
  assert y.numpy().tolist() == [3.0, 6.0]      # outside XLA: an identity
  assert g.numpy().tolist() == [18.0, 36.0]
  assert seen['y'] == 2 and seen['x'] is None
  # The forward annotation and the one its gradient adds, both on core 2.
  assert seen['grad_ops'] == [2, 2]


def testAnnotationsReachTheCompiledHlo():
  fn = tf.function(lambda x: xla_annotations.AssignToLogicalCore(
      tf.tanh(xla_annotations.AssignToLogicalCore(x, 0)), 1),
                   jit_compile=True, autograph=False)
  x = tf.ones([3])
  assert fn(x).numpy() == pytest.approx([0.7615942] * 3)
  counts = xla_annotations.CountMaximalShardings(
      fn.experimental_get_compiler_ir(x)(stage='hlo'))
  assert counts[0] >= 1 and counts[1] >= 1 and set(counts) == {0, 1}


def testCountMaximalShardingsParsesHloText():
  text = ('%a = f32[2] custom-call(%x), sharding={maximal device=3}\n'
          '%b = f32[2] add(%a, %a), sharding={maximal device=3}\n'
          '%c = f32[2] custom-call(%b), sharding={replicated}\n')
  assert dict(xla_annotations.CountMaximalShardings(text)) == {3: 2}


def testOnlyTpuStrategiesUseTheirOwnApi():
  assert not xla_annotations.IsTpuStrategy(None)
  assert not xla_annotations.IsTpuStrategy(
      tf.distribute.OneDeviceStrategy('/cpu:0'))
