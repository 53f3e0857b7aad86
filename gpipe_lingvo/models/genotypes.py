"""AmoebaNet genotypes (TF reference `model_specs.py`, decoded).

Conventions: state 0 is the (prepared) output of the previous cell, state 1
the output of the cell before that; combination k (k = 0..4) makes state
k + 2 = op[2k](state in[2k]) + op[2k+1](state in[2k+1]). `concat` lists
the states concatenated into the cell output; these are the TF spec's
flags decoded, which (unlike the paper's "unused states" wording) also
concatenate some consumed states and reproduce the published sizes.
A user genotype is any Params from Genotype(...) with the fields replaced.
"""
from gpipe_lingvo import hyperparams

OPS = ('none', '1x1', '3x3', '1x7_7x1', 'separable_3x3_2', 'separable_5x5_2',
       'separable_7x7_2', 'dil_2_separable_5x5_2', 'avg_pool_3x3',
       'max_pool_3x3', 'max_pool_2x2')

_SPECS = {
    # AmoebaNet-A (Real et al.'s main model; TF `amoeba_net_a`).
    'A': dict(
        normal_ops=['avg_pool_3x3', 'max_pool_3x3', 'separable_3x3_2', 'none',
                    'none', 'avg_pool_3x3', 'separable_3x3_2',
                    'separable_5x5_2', 'avg_pool_3x3', 'separable_3x3_2'],
        normal_inputs=[0, 0, 1, 1, 0, 1, 0, 2, 5, 0],
        normal_concat=[1, 3, 4, 6],
        reduction_ops=['separable_3x3_2', 'avg_pool_3x3', 'max_pool_3x3',
                       'separable_7x7_2', 'max_pool_3x3', 'max_pool_3x3',
                       'separable_3x3_2', '1x7_7x1', 'avg_pool_3x3',
                       'separable_7x7_2'],
        reduction_inputs=[1, 0, 0, 2, 1, 0, 4, 0, 1, 0],
        reduction_concat=[2, 3, 4, 5, 6]),
    # AmoebaNet-B (GPipe's 557M model; TF `amoeba_net_b`).
    'B': dict(
        normal_ops=['1x1', 'max_pool_3x3', 'none', 'separable_3x3_2', '1x1',
                    'separable_3x3_2', '1x1', 'none', 'avg_pool_3x3', '1x1'],
        normal_inputs=[1, 1, 1, 0, 1, 0, 2, 2, 1, 5],
        normal_concat=[0, 3, 4, 6],
        reduction_ops=['max_pool_2x2', 'max_pool_3x3', 'none', '3x3',
                       'dil_2_separable_5x5_2', 'max_pool_3x3', 'none',
                       'separable_3x3_2', 'avg_pool_3x3', '1x1'],
        reduction_inputs=[0, 0, 2, 1, 2, 2, 3, 1, 4, 3],
        reduction_concat=[5, 6]),
    # AmoebaNet-D (GPipe Tables 1-3; TF `amoeba_net_d`).
    'D': dict(
        normal_ops=['1x1', 'max_pool_3x3', 'none', '1x7_7x1', '1x1', '1x7_7x1',
                    'max_pool_3x3', 'none', 'avg_pool_3x3', '1x1'],
        normal_inputs=[1, 1, 1, 0, 0, 0, 2, 2, 1, 5],
        normal_concat=[0, 3, 4, 6],
        reduction_ops=['max_pool_2x2', 'max_pool_3x3', 'none', '3x3',
                       '1x7_7x1', 'max_pool_3x3', 'none', 'max_pool_2x2',
                       'avg_pool_3x3', '1x1'],
        reduction_inputs=[0, 0, 2, 1, 2, 2, 3, 1, 2, 3],
        reduction_concat=[4, 5, 6]),
}

NAMES = tuple(sorted(_SPECS))


def Genotype(name='D'):
  """Params of a named genotype (A, B or D); edit the fields for your own."""
  if name not in _SPECS:
    raise ValueError(f'Unknown AmoebaNet genotype {name!r}; use one of '
                     f'{NAMES} or build your own from Genotype("D").')
  spec = _SPECS[name]
  p = hyperparams.Params()
  p.Define('name', name, 'Label of the genotype.')
  for kind in ('normal', 'reduction'):
    p.Define(f'{kind}_ops', list(spec[f'{kind}_ops']),
             f'10 op names of the {kind} cell (2 per combination), from '
             f'{OPS}.')
    p.Define(f'{kind}_inputs', list(spec[f'{kind}_inputs']),
             f'10 input state indices of the {kind} cell ops (0: previous '
             'cell, 1: the one before, k+2: combination k).')
    p.Define(f'{kind}_concat', list(spec[f'{kind}_concat']),
             f'States concatenated into the {kind} cell output.')
  return p


def Validate(g, where='genotype'):
  """Raises ValueError naming the bad field of genotype params g."""
  for kind in ('normal', 'reduction'):
    ops = list(g.Get(f'{kind}_ops'))
    ins = list(g.Get(f'{kind}_inputs'))
    cat = list(g.Get(f'{kind}_concat'))
    if len(ops) != 10 or len(ins) != 10:
      raise ValueError(f'{where}.{kind}_ops and {kind}_inputs need 10 entries '
                       f'(5 combinations x 2), got {len(ops)} and {len(ins)}.')
    for op in ops:
      if op not in OPS:
        raise ValueError(f'{where}.{kind}_ops: unknown op {op!r}; known: {OPS}.')
    for j, i in enumerate(ins):
      if not isinstance(i, int) or not 0 <= i < 2 + j // 2:
        raise ValueError(f'{where}.{kind}_inputs[{j}] = {i!r}: combination '
                         f'{j // 2} can only read states 0..{1 + j // 2}.')
    if not cat or any(not isinstance(i, int) or not 0 <= i <= 6 for i in cat):
      raise ValueError(f'{where}.{kind}_concat must be a non-empty list of '
                       f'state indices in 0..6, got {cat}.')
    if len(set(cat)) != len(cat):
      raise ValueError(f'{where}.{kind}_concat repeats a state: {cat}.')
