"""Pictures of a plan (matplotlib, PNG): the schedule timeline, simulated
beside measured, and per-stage memory and time bars.

Both draw from data only: a plan dict (pipeline/plan.py) and, for the
measured side, boxes [stage, kind, micro-batch, start, end] in seconds
(planning/measure.py reads them from a profiled step).
"""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

_COLORS = {'F': '#4c8bd6', 'B': '#e07b39', 'R': '#f2c14e'}


def _DrawTimeline(ax, boxes, num_stages, title, recompute=None):
  for stage, kind, mb, start, end in boxes:
    width = (end - start) * 1e3
    if kind == 'B' and recompute and recompute(stage, mb):
      # Backward under remat: the recompute, then the backward proper.
      rec = recompute(stage, mb) * 1e3
      ax.broken_barh([(start * 1e3, rec)], (stage - 0.4, 0.8),
                     facecolors=_COLORS['R'], edgecolor='black', lw=0.5)
      ax.broken_barh([(start * 1e3 + rec, width - rec)], (stage - 0.4, 0.8),
                     facecolors=_COLORS['B'], edgecolor='black', lw=0.5)
    else:
      ax.broken_barh([(start * 1e3, width)], (stage - 0.4, 0.8),
                     facecolors=_COLORS.get(kind, 'grey'), edgecolor='black',
                     lw=0.5)
    if width > 0:
      ax.text(start * 1e3 + width / 2, stage, f'{kind}{mb}', ha='center',
              va='center', fontsize=7)
  ax.set_yticks(range(num_stages))
  ax.set_yticklabels([f'stage {k}' for k in range(num_stages)])
  ax.invert_yaxis()
  ax.set_xlabel('ms')
  ax.set_title(title, fontsize=10)


def Timeline(plan, path, measured=None):
  """Simulated timeline of `plan`, and the measured one if given."""
  k_all = plan['num_stages']
  stages = plan['stages']
  remat = plan['remat']

  def Recompute(stage, mb):
    return stages[stage]['forward_s'] if remat[mb] else 0.0

  cols = 2 if measured else 1
  fig, axes = plt.subplots(1, cols, figsize=(7 * cols, 1 + 0.6 * k_all),
                           squeeze=False)
  _DrawTimeline(axes[0][0], plan['timeline'] or [], k_all,
                f"simulated: step {plan['step_s'] * 1e3:.0f} ms, bubble "
                f"{plan['bubble']:.2f}" if plan['step_s'] else 'simulated',
                Recompute)
  if measured:
    span = max(b[4] for b in measured) - min(b[3] for b in measured)
    _DrawTimeline(axes[0][1], measured, k_all,
                  f'measured: step {span * 1e3:.0f} ms')
  handles = [matplotlib.patches.Patch(color=c, label=l) for l, c in (
      ('forward', _COLORS['F']), ('recompute', _COLORS['R']),
      ('backward', _COLORS['B']))]
  fig.legend(handles=handles, loc='lower center', ncol=3, fontsize=8)
  fig.suptitle(f"{plan.get('model', '')} K={k_all} M="
               f"{plan['num_micro_batches']} {plan['schedule']}", fontsize=11)
  fig.tight_layout(rect=(0, 0.08, 1, 0.95))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def MemoryAndTime(plan, path):
  """Per-stage stacked memory bars and forward/backward time bars."""
  stages = plan['stages']
  ks = list(range(len(stages)))
  parts = (('weights', 'weight_bytes'), ('optimizer slots', 'slot_bytes'),
           ('gradient accumulators', 'accumulator_bytes'),
           ('stashed activations', 'stash_peak_bytes'),
           ('working', 'working_peak_bytes'))
  fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 3.8))
  bottom = [0.0] * len(stages)
  for label, key in parts:
    vals = [s[key] / 2**20 for s in stages]
    ax_m.bar(ks, vals, bottom=bottom, label=label)
    bottom = [b + v for b, v in zip(bottom, vals)]
  for k, s in enumerate(stages):
    if s.get('budget_bytes'):
      ax_m.hlines(s['budget_bytes'] / 2**20, k - 0.45, k + 0.45, colors='red',
                  label='budget' if k == 0 else None)
  ax_m.set_xticks(ks)
  ax_m.set_xlabel('stage')
  ax_m.set_ylabel('MiB')
  ax_m.set_title('peak memory per stage', fontsize=10)
  ax_m.legend(fontsize=7)
  if stages[0]['forward_s'] is not None:
    fwd = [s['forward_s'] * 1e3 for s in stages]
    bwd = [s['backward_s'] * 1e3 for s in stages]
    ax_t.bar([k - 0.2 for k in ks], fwd, width=0.4, label='forward')
    ax_t.bar([k + 0.2 for k in ks], bwd, width=0.4, label='backward')
    ax_t.legend(fontsize=7)
  ax_t.set_xticks(ks)
  ax_t.set_xlabel('stage')
  ax_t.set_ylabel('ms per micro-batch')
  ax_t.set_title('time per stage (one micro-batch)', fontsize=10)
  fig.suptitle(f"{plan.get('model', '')} K={len(stages)} M="
               f"{plan['num_micro_batches']} partition {plan['partition']}",
               fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
