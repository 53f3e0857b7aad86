"""Packing (source, target) pairs into fixed-length rows (static shapes).

Each row holds whole pairs, one after another, on both sides: tokens of
pair j get segment id j + 1 and positions from 0 within their sequence;
the rest of the row is padding (id 0, segment 0). Greedy in the given
order: a pair goes into the current row if both of its sides fit, else it
starts a new row. Lingvo's packed input has the same layout.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

FIELDS = ('src_ids', 'src_segment_ids', 'src_positions', 'tgt_ids',
          'tgt_segment_ids', 'tgt_positions', 'tgt_labels')


def Sides(src: Sequence[int], tgt: Sequence[int], bos: int, eos: int
          ) -> Tuple[List[int], List[int], List[int]]:
  """Encoder input (src + EOS), decoder input (BOS + tgt) and labels
  (tgt + EOS) of one pair."""
  return list(src) + [eos], [bos] + list(tgt), list(tgt) + [eos]


def _EmptyRow(length):
  return {f: np.zeros([length], np.int32) for f in FIELDS}


def Pack(pairs: Sequence[Tuple[Sequence[int], Sequence[int]]], length: int,
         bos: int, eos: int) -> List[Dict[str, np.ndarray]]:
  """Rows of `length` tokens from token-id pairs; pairs with a side longer
  than the row (with BOS/EOS) must be removed by the caller."""
  rows, row, used_s, used_t = [], None, length, length
  for src, tgt in pairs:
    s, t_in, t_out = Sides(src, tgt, bos, eos)
    if len(s) > length or len(t_in) > length:
      raise ValueError(f'A pair of {len(s)} / {len(t_in)} tokens does not fit '
                       f'a row of {length}.')
    if used_s + len(s) > length or used_t + len(t_in) > length:
      row = _EmptyRow(length)
      rows.append(row)
      used_s = used_t = 0
    seg = int(row['src_segment_ids'].max()) + 1
    for side, start, ids in (('src', used_s, s), ('tgt', used_t, t_in)):
      row[f'{side}_ids'][start:start + len(ids)] = ids
      row[f'{side}_segment_ids'][start:start + len(ids)] = seg
      row[f'{side}_positions'][start:start + len(ids)] = np.arange(len(ids))
    row['tgt_labels'][used_t:used_t + len(t_out)] = t_out
    used_s += len(s)
    used_t += len(t_in)
  return rows


def Single(src: Sequence[int], tgt: Sequence[int], length: int, bos: int,
           eos: int) -> Dict[str, np.ndarray]:
  """One pair in a row of its own, each side cut to the row (evaluation
  rows for decoding: every test sentence, however long)."""
  s, t_in, t_out = Sides(src, tgt, bos, eos)
  s, t_in, t_out = s[:length], t_in[:length], t_out[:length]
  if len(s) == length:
    s[-1] = eos  # a cut source still ends like a sentence
  row = _EmptyRow(length)
  for side, ids in (('src', s), ('tgt', t_in)):
    row[f'{side}_ids'][:len(ids)] = ids
    row[f'{side}_segment_ids'][:len(ids)] = 1
    row[f'{side}_positions'][:len(ids)] = np.arange(len(ids))
  row['tgt_labels'][:len(t_out)] = t_out
  return row
