"""trainer.py --mode=check and pipeline/check.py: the pipelined network
against its cells un-pipelined on one batch."""
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from gpipe_lingvo import layers
from gpipe_lingvo.pipeline import check
from gpipe_lingvo.pipeline import pipelined_network
from tests import pipeline_test_util as util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def testTrainerCheckModeOnDigits():
  """Batch norm per micro-batch and dropout: the pipelined step and the
  un-pipelined cells agree; the trainer prints every variable and exits 0."""
  r = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'trainer.py'),
       '--model=digits.ConvNetPipelined', '--mode=check'],
      capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  # The world lines come first, then the check's.
  lines = r.stdout.splitlines()
  assert lines[0].startswith('world: 1 worker(s)')
  lines = lines[3:]
  assert lines[0].startswith('loss: pipelined')
  assert sum('task/network/' in l for l in lines) == 10
  assert lines[-1].startswith('OK: largest relative difference')


def _Net(**kw):
  return pipelined_network.PipelinedNetwork.Params().Set(
      name='net', cells=util.ConvDenseCells(dropout=0.3), num_stages=2,
      num_micro_batches=4, **kw).Instantiate()


def testCheckAgreesAndDetectsADifference():
  net = _Net(schedule='zb_h1', remat='never')
  x, lab = util.Batch()
  res = check.CompareWithUnpipelined(net, x, lab, util.LossFn(16), step=2)
  assert res.ok and res.loss == pytest.approx(res.reference_loss, rel=1e-6)
  variables = net.TrainableVariables()
  assert [v.name for v in res.variables] == [v.name for v in variables]
  assert all(v.max_abs_grad > 0 for v in res.variables)
  # The same comparison with one gradient off by 1% of its largest entry.
  grads = [tf.ones(v.shape) for v in variables]
  bad = [g + (0.01 if j == 3 else 0.0) for j, g in enumerate(grads)]
  out = check.Compare(variables, 1.0, bad, 1.0, grads, 1e-3)
  assert not out.ok and out.Lines()[-1].startswith('FAILED')
  assert [v.rel_diff > 0 for v in out.variables] == [
      j == 3 for j in range(len(variables))]


def testCheckNeedsAPipelinedNetwork():
  seq = layers.Sequential.Params().Set(
      name='net', cells=util.ConvDenseCells()).Instantiate()
  x, lab = util.Batch()
  with pytest.raises(ValueError, match='not a PipelinedNetwork'):
    check.CompareWithUnpipelined(seq, x, lab, util.LossFn(16))
