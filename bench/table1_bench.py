"""GPipe's Table 1 from plans: the largest model that fits a per-device
memory budget, by number of devices, beside the paper's.

    python bench/table1_bench.py [--skip_amoebanet] [--quick]

Transformer-L (params/gpipe_transformer.py: d_model 2048, feed-forward
8192, 32 heads, 32k vocabulary, a batch of 32 rows of 1024 tokens, Adam):
the largest number of layers L whose plan fits 16 GiB on every device, at
Naive-1 (K = 1, M = 1, no recompute) and Pipeline-K (K = 1, 8, 32, 128;
M = 32, recompute, uniform cut). AmoebaNet-D (params/imagenet.py: 224 px,
batch 128, RMSProp): the largest filter count F (a multiple of 16) at the
paper's L whose plan fits 8 GiB, at Naive-1, Pipeline-1 (M = 8) and
Pipeline-8 (M = 32).

Everything comes from `model_plan.PlanModel` (no weights allocated): the
plan's peak bytes of the fullest device against the budget. Reported, not
tuned: docs/models.md says where this memory model differs from the
paper's TPUs.
"""
import argparse
import datetime
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=wrong-import-position
from gpipe_lingvo import model_registry
from gpipe_lingvo.planning import costs as costs_lib
from gpipe_lingvo.planning import model_plan
from gpipe_lingvo.planning import resolve
from params import gpipe_transformer
from params import imagenet

GIB = 2 ** 30
# (column, K, M, paper's L, paper's parameters)
TRANSFORMER = [('Naive-1', 1, 1, 3, '282.2M'), ('Pipeline-1', 1, 32, 13,
               '785.8M'), ('Pipeline-8', 8, 32, 103, '5.3B'),
               ('Pipeline-32', 32, 32, 415, '21.0B'),
               ('Pipeline-128', 128, 32, 1663, '83.9B')]
# (column, K, M, L, paper's (L, D), paper's parameters)
AMOEBANET = [('Naive-1', 1, 1, 18, '(18, 208)', '82M'),
             ('Pipeline-1', 1, 8, 18, '(18, 416)', '318M'),
             ('Pipeline-8', 8, 32, 72, '(72, 512)', '1.8B')]


def _Fits(plan, budget):
  return max(s['peak_bytes'] for s in plan['stages']) <= budget


def _Params(plan):
  return sum(s['params'] for s in plan['stages'])


def TransformerParams(layers, k, m):
  class Model(gpipe_transformer._TransformerL):  # pylint: disable=protected-access
    def Task(self):
      return gpipe_transformer.TaskParams(
          gpipe_transformer.TransformerLStack(layers, k, m))
  Model.__name__ = f'TransformerL{layers}'
  return Model().Model()


def LayerCosts(k, m):
  """Costs of Transformer-L with L >= 3 layers from one trace of 4: the
  4th layer's costs repeat (the cost trace copies them the same way)."""
  base = resolve.ModelCosts(TransformerParams(4, k, m),
                               gpipe_transformer.L_BATCH // m)

  def Costs(layers):
    c = base.cells  # embedding, decoder_0 .. decoder_3, decoder_ln, softmax
    mid = [costs_lib.dataclasses.replace(c[4], name=f'decoder_{i}')
           for i in range(3, layers)]
    return costs_lib.NetworkCosts(base.batch, base.input_bytes,
                                  c[:4] + mid + c[-2:])
  return Costs


def LargestTransformer(k, m, budget, hi=8192):
  costs = LayerCosts(k, m)
  plan_of = lambda n: model_plan.PlanModel(TransformerParams(n, k, m),
                                           costs=costs(n))
  lo = max(3, k)  # every stage needs a cell
  if not _Fits(plan_of(lo), budget):
    return 0, None
  while hi - lo > 1:  # lo fits, hi does not (or is the search's end)
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if _Fits(plan_of(mid), budget) else (lo, mid)
  return lo, _Params(plan_of(lo))


def LargestNaiveBatch(budget, layers=3):
  """Rows of L_LENGTH tokens at which Naive-1 Transformer-L fits
  (activation costs scale with the rows; weights do not)."""
  params = TransformerParams(layers, 1, 1)
  costs = resolve.ModelCosts(params, 1)
  fits = lambda rows: _Fits(model_plan.PlanModel(
      params.Copy().Set(train=params.train.Copy().Set(batch_size=rows)),
      costs=costs.Scaled(rows)), budget)
  if not fits(1):
    return 0
  lo, hi = 1, gpipe_transformer.L_BATCH
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def AmoebaParams(layers, filters, k, m):
  class Model(imagenet._AmoebaNet):  # pylint: disable=protected-access
    L, F = layers, filters
    NUM_STAGES, NUM_MICRO_BATCHES = k, m
  Model.__name__ = f'AmoebaNetD_{layers}_{filters}'
  return Model().Model()


def LargestAmoebaNet(layers, k, m, budget, step=16, hi=1024):
  plans = {}

  def Plan(f):
    if f not in plans:
      plans[f] = model_plan.PlanModel(AmoebaParams(layers, f, k, m))
    return plans[f]

  if not _Fits(Plan(step), budget):
    return 0, None
  lo, hi = 1, hi // step
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if _Fits(Plan(mid * step), budget) else (lo, mid)
  return lo * step, _Params(Plan(lo * step))


def _Count(n):
  return '-' if n is None else (f'{n / 1e9:.2f}B' if n >= 1e9 else
                                f'{n / 1e6:.1f}M')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--transformer_budget_gib', type=float, default=16)
  parser.add_argument('--amoebanet_budget_gib', type=float, default=8)
  parser.add_argument('--skip_amoebanet', action='store_true')
  parser.add_argument('--skip_transformer', action='store_true')
  args = parser.parse_args()
  print(f'{datetime.date.today()}, {platform.node()}, '
        f'{os.cpu_count()} cores; python bench/table1_bench.py '
        + ' '.join(sys.argv[1:]))
  if not args.skip_transformer:
    print(f'\nTransformer-L, {args.transformer_budget_gib:g} GiB per device, '
          f'{gpipe_transformer.L_BATCH} x {gpipe_transformer.L_LENGTH} '
          'tokens per batch')
    print('| column | K | M | largest L (plan) | parameters (plan) | paper L '
          '| paper parameters | search s |')
    print('|---|---|---|---|---|---|---|---|')
    for name, k, m, paper_l, paper_p in TRANSFORMER:
      t0 = time.time()
      n, params = LargestTransformer(k, m, args.transformer_budget_gib * GIB)
      print(f'| {name} | {k} | {m} | {n} | {_Count(params)} | {paper_l} | '
            f'{paper_p} | {time.time() - t0:.0f} |', flush=True)
    rows = LargestNaiveBatch(args.transformer_budget_gib * GIB)
    print(f'\nNaive-1 with L = 3 fits up to {rows} rows of '
          f'{gpipe_transformer.L_LENGTH} tokens per batch.')
  if not args.skip_amoebanet:
    print(f'\nAmoebaNet-D(L, F), {args.amoebanet_budget_gib:g} GiB per '
          'device, 224 px, batch 128')
    print('| column | K | M | L | largest F (plan) | parameters (plan) | '
          'paper (L, D) | paper parameters | search s |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, k, m, layers, paper_ld, paper_p in AMOEBANET:
      t0 = time.time()
      f, params = LargestAmoebaNet(layers, k, m,
                                   args.amoebanet_budget_gib * GIB)
      print(f'| {name} | {k} | {m} | {layers} | {f} | {_Count(params)} | '
            f'{paper_ld} | {paper_p} | {time.time() - t0:.0f} |', flush=True)


if __name__ == '__main__':
  main()
