"""The out-of-the-box demo: digits.ConvNet through the real trainer CLI."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def testDigitsDemoReaches97Percent(tmp_path):
  r = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'trainer.py'), '--model=digits.ConvNet',
       f'--logdir={tmp_path}', '--mode=train_and_eval'],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  final = json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-1])
  assert final['split'] == 'test' and final['num_examples'] == 360
  assert final['accuracy'] >= 0.97, final
  assert 'eval test @ step' in r.stdout
