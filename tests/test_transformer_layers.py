"""Transformer layers: masks from segment ids, causality, dropout under
recompute, positions, cached decoding, and tied weights across stages."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo import layers
from gpipe_lingvo.layers import attention
from gpipe_lingvo.layers import embedding
from gpipe_lingvo.layers import tied
from gpipe_lingvo.layers import transformer
from tests import transformer_test_util as util


def _Layer(**kw):
  return transformer.TransformerLayer.Params().Set(
      name='layer', model_dim=8, hidden_dim=16, num_heads=2, **kw
  ).Instantiate()


def testPackedSequencesDoNotSeeEachOther():
  layer = _Layer()
  seg = tf.constant([[1, 1, 1, 2, 2, 0]])
  x = tf.random.stateless_normal([1, 6, 8], [1, 2])
  y = layer.FProp(x, seg)
  # Change the second sequence and the padding: the first is unchanged.
  x2 = tf.concat([x[:, :3], x[:, 3:] + 1.0], axis=1)
  y2 = layer.FProp(x2, seg)
  np.testing.assert_allclose(y[:, :3], y2[:, :3], atol=1e-6)
  assert np.abs(y[:, 3:5] - y2[:, 3:5]).max() > 1e-3


def testCausalSelfAttentionIgnoresLaterTokens():
  layer = _Layer(mask_self_atten=True)
  seg = tf.ones([1, 5], tf.int32)
  x = tf.random.stateless_normal([1, 5, 8], [1, 3])
  y = layer.FProp(x, seg)
  x2 = tf.concat([x[:, :3], tf.reverse(x[:, 3:], [2])], axis=1)
  np.testing.assert_allclose(y[:, :3], layer.FProp(x2, seg)[:, :3],
                             atol=1e-6)
  non_causal = _Layer()
  assert np.abs(non_causal.FProp(x, seg)[:, :3] -
                non_causal.FProp(x2, seg)[:, :3]).max() > 1e-3


def testAttentionBiasCausalWithinSegments():
  bias = attention.AttentionBias(tf.constant([[1, 1, 2, 2]]),
                                 tf.constant([[1, 1, 2, 2]]), causal=True)
  allowed = (bias.numpy()[0, 0] == 0).astype(int)
  np.testing.assert_array_equal(allowed, [[1, 0, 0, 0], [1, 1, 0, 0],
                                          [0, 0, 1, 0], [0, 0, 1, 1]])


def testDropoutIsAFunctionOfStepAndMicroBatch():
  layer = _Layer(residual_dropout_prob=0.3, atten_dropout_prob=0.3,
                 relu_dropout_prob=0.3)
  x = tf.random.stateless_normal([2, 5, 8], [1, 4])
  seg = tf.ones([2, 5], tf.int32)

  def Run(step, mb):
    with context.Scope(training=True, step=step, micro_batch=mb):
      return layer.FProp(x, seg).numpy()

  np.testing.assert_array_equal(Run(3, 1), Run(3, 1))
  assert np.abs(Run(3, 1) - Run(3, 2)).max() > 1e-3
  assert np.abs(Run(3, 1) - Run(4, 1)).max() > 1e-3
  with context.Scope(training=False):
    np.testing.assert_allclose(layer.FProp(x, seg), _Layer().FProp(x, seg),
                               atol=1e-6)


def testSinusoidalPositionsAndTableLength():
  table = embedding.SinusoidalTable(50, 8)
  assert table.shape == (50, 8)
  np.testing.assert_allclose(table[0], [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_allclose(table[:, :4] ** 2 + table[:, 4:] ** 2, 1.0,
                             rtol=1e-5)
  emb = embedding.Embedding.Params().Set(
      name='emb', vocab_size=5, embedding_dim=8, max_length=4).Instantiate()
  assert emb.FProp(tf.zeros([1, 4], tf.int32)).shape == (1, 4, 8)
  with pytest.raises(embedding.SequenceTooLongError, match='max_length=4'):
    emb.FProp(tf.zeros([1, 5], tf.int32))


@pytest.mark.parametrize('pre_layer_norm', [True, False])
def testCachedDecodingEqualsFullForward(pre_layer_norm):
  layer = _Layer(mask_self_atten=True, has_aux_atten=True,
                 pre_layer_norm=pre_layer_norm)
  x = tf.random.stateless_normal([2, 4, 8], [2, 1])
  mem = tf.random.stateless_normal([2, 3, 8], [2, 2])
  mem_seg = tf.constant([[1, 1, 0], [1, 1, 1]])
  full = layer.FProp(x, tf.ones([2, 4], tf.int32), mem, mem_seg)
  cache = layer.InitCache(2, 4, mem)
  for t in range(4):
    y, cache = layer.ExtendStep(x[:, t:t + 1], tf.constant(t), cache,
                                mem_seg)
    np.testing.assert_allclose(y[:, 0], full[:, t], atol=1e-5)


def testTieErrors():
  emb = util.Stack().Cells()[0]
  soft = util.Stack().Cells()[-1]
  with pytest.raises(tied.TiedVariableError, match='no layer of the network '
                     'offers it'):
    layers.Sequential.Params().Set(name='net', cells=[soft]).Instantiate()
  bad = soft.Copy()
  bad.vocab_size = 7
  with pytest.raises(tied.TiedVariableError, match='shape'):
    layers.Sequential.Params().Set(name='net',
                                   cells=[emb, bad]).Instantiate()


@pytest.fixture(scope='module')
def tied_run():
  """A tied stack pipelined over K=2 and the same stack untied, un-pipelined,
  with the softmax weight set to the embedding."""
  net = util.Stack(num_stages=2, num_micro_batches=2).NetworkParams(
  ).Instantiate()
  x, labels = util.Batch()
  loss, _, grads, _ = net.ComputeLossAndGradients(
      x, labels, util.LossFn, tf.constant(0, tf.int64))
  untied = util.Stack(share_embedding_and_softmax=False).NetworkParams(
  ).Instantiate()
  shared = {v.name: v for v in net.TrainableVariables()}
  for v in untied.TrainableVariables():
    name = v.name.replace('softmax/softmax/w', 'embedding/tgt_emb/emb')
    v.assign(shared[name])
  return net, untied, loss, grads, x, labels


def testTiedVariableIsOneVariableInBothChunks(tied_run, tmp_path):
  net = tied_run[0]
  emb = net.embedding.tgt_emb.vars.emb
  assert net.softmax.softmax.vars.w is emb
  first = [v.ref() for v in net.ChunkVariables(0)]
  last = [v.ref() for v in net.ChunkVariables(net.num_chunks - 1)]
  assert emb.ref() in first and emb.ref() in last
  assert emb.ref() not in [v.ref() for v in net.ChunkVariables(
      net.num_chunks - 1, include_borrowed=False)]
  assert sum(v is emb for v in net.TrainableVariables()) == 1
  assert emb.device.endswith('CPU:0')  # where its owner, stage 0, lives
  path = tf.train.Checkpoint(net=net).write(str(tmp_path / 'ckpt'))
  keys = [k for k, _ in tf.train.list_variables(path)]
  assert sum('tgt_emb/emb' in k for k in keys) == 1
  assert not any('softmax/w' in k for k in keys)
  assert net.NumParams() == sum(
      int(np.prod(v.shape)) for v in net.TrainableVariables())


def testTiedGradientIsTheSumOfBothUses(tied_run):
  net, untied, loss, grads, x, labels = tied_run
  m = 2
  with tf.GradientTape() as tape:
    total = 0.0
    for i in range(m):
      part = lambda t, i=i: tf.split(t, m)[i]
      with context.Scope(training=True, step=tf.constant(0, tf.int64),
                         micro_batch=i):
        out = untied.FProp(tf.nest.map_structure(part, x))
        total += util.LossFn(out, tf.nest.map_structure(part, labels))[0]
  names = [v.name for v in untied.TrainableVariables()]
  ref = dict(zip(names, [tf.convert_to_tensor(g) for g in tape.gradient(
      total, untied.TrainableVariables())]))
  np.testing.assert_allclose(loss, total, rtol=1e-6)
  emb_use = ref['network/embedding/tgt_emb/emb:0'].numpy()
  softmax_use = ref['network/softmax/softmax/w:0'].numpy()
  assert np.abs(emb_use).max() > 1e-4 and np.abs(softmax_use).max() > 1e-4
  tied_grad = dict(zip([v.name for v in net.TrainableVariables()],
                       grads))['network/embedding/tgt_emb/emb:0']
  np.testing.assert_allclose(tied_grad, emb_use + softmax_use, rtol=1e-4,
                             atol=1e-7)
