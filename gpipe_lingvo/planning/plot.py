"""Pictures of a plan (matplotlib, PNG): the schedule timeline, simulated
beside measured, and per-device memory and time bars.

Both draw from data only: a plan dict (planning/plan.py) and, for the
measured side, boxes [device, kind, chunk, micro-batch, start, end,
recompute_end] in seconds (planning/measure.py reads them from a profiled
step; recompute_end is None unless a B reran its forward first).
"""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

_COLORS = {'F': '#4c8bd6', 'B': '#e07b39', 'W': '#7bb661', 'R': '#f2c14e'}


def _Bar(ax, device, start, end, color):
  ax.broken_barh([(start * 1e3, (end - start) * 1e3)], (device - 0.4, 0.8),
                 facecolors=color, edgecolor='black', lw=0.5)


def _DrawTimeline(ax, boxes, num_devices, title):
  for device, kind, chunk, mb, start, end, rerun_end in boxes:
    if rerun_end is not None:  # the recomputed forward, then the backward
      _Bar(ax, device, start, rerun_end, _COLORS['R'])
      _Bar(ax, device, rerun_end, end, _COLORS[kind])
    else:
      _Bar(ax, device, start, end, _COLORS.get(kind, 'grey'))
    width = (end - start) * 1e3
    if width > 0:
      ax.text(start * 1e3 + width / 2, device, f'{chunk}{kind}{mb}',
              ha='center', va='center', fontsize=6)
  ax.set_yticks(range(num_devices))
  ax.set_yticklabels([f'device {d}' for d in range(num_devices)])
  ax.invert_yaxis()
  ax.set_xlabel('ms')
  ax.set_title(title, fontsize=10)


def Timeline(plan, path, measured=None):
  """Simulated timeline of `plan`, and the measured one if given (boxes
  labelled chunk, kind, micro-batch, as the tick table prints them)."""
  k_all = plan['num_stages']
  cols = 2 if measured else 1
  fig, axes = plt.subplots(1, cols, figsize=(7 * cols, 1.2 + 0.6 * k_all),
                           squeeze=False)
  _DrawTimeline(axes[0][0], plan['timeline'] or [], k_all,
                f"simulated: step {plan['step_s'] * 1e3:.0f} ms, bubble "
                f"{plan['bubble']:.2f}" if plan['step_s'] else 'simulated')
  if measured:
    span = max(b[5] for b in measured) - min(b[4] for b in measured)
    _DrawTimeline(axes[0][1], measured, k_all,
                  f'measured: step {span * 1e3:.0f} ms')
  kinds = (('forward', 'F'), ('recompute', 'R'), ('backward', 'B'))
  if plan['timeline'] and any(b[1] == 'W' for b in plan['timeline']):
    kinds += (('weight gradient', 'W'),)
  handles = [matplotlib.patches.Patch(color=_COLORS[k], label=l)
             for l, k in kinds]
  fig.legend(handles=handles, loc='lower center', ncol=len(kinds),
             fontsize=8)
  v = plan.get('virtual_stages', 1)
  fig.suptitle(f"{plan.get('model', '')} K={k_all}"
               f"{f' v={v}' if v > 1 else ''} M={plan['num_micro_batches']}"
               f" {plan['schedule']}", fontsize=11)
  fig.tight_layout(rect=(0, 0.08, 1, 0.95))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def MemoryAndTime(plan, path):
  """Per-device stacked memory bars and F/B/W time bars."""
  stages = plan['stages']
  ks = list(range(len(stages)))
  parts = (('weights', 'weight_bytes'), ('optimizer slots', 'slot_bytes'),
           ('gradient accumulators', 'accumulator_bytes'),
           ('weight-decay gradients', 'decay_bytes'),
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
  ax_m.set_xlabel('device')
  ax_m.set_ylabel('MiB')
  ax_m.set_title('peak memory per device', fontsize=10)
  ax_m.legend(fontsize=7)
  if stages[0]['forward_s'] is not None:
    parts = [('F', lambda s: s['forward_s']),
             ('B', lambda s: s['backward_s']), ('W', lambda s: s['weight_s'])]
    if not any(b[1] == 'W' for b in plan['timeline'] or []):
      parts = [parts[0], ('B (with W)',
                          lambda s: s['backward_s'] + s['weight_s'])]
    width = 0.8 / len(parts)
    for j, (label, value) in enumerate(parts):
      ax_t.bar([k - 0.4 + width * (j + 0.5) for k in ks],
               [value(s) * 1e3 for s in stages], width=width, label=label)
    ax_t.legend(fontsize=7)
  ax_t.set_xticks(ks)
  ax_t.set_xlabel('device')
  ax_t.set_ylabel('ms per micro-batch')
  ax_t.set_title('time per device (one micro-batch)', fontsize=10)
  fig.suptitle(f"{plan.get('model', '')} K={len(stages)} M="
               f"{plan['num_micro_batches']} partition {plan['partition']}",
               fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
