"""Training, evaluation metrics and fine-tuning on offline-prepared CIFAR
(real TFDS datasets on disk), through the generic trainer."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo import init_from_checkpoint
from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from tasks import tfds_data
from tests import tasks_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _Params(model, data_dir, test_batch=8):
  p = model_registry.GetParams(model)
  for split in ('train', 'dev', 'test'):
    p.Get(split).data_dir = data_dir
  p.test.batch_size = test_batch
  p.train.batch_size = 16
  p.task.train.log_interval_steps = 1
  return p


def _EventTags(directory):
  tags = set()
  for f in glob.glob(os.path.join(directory, 'events.*')):
    for e in tf.compat.v1.train.summary_iterator(f):
      tags.update(v.tag for v in e.summary.value)
  return tags


def testEvaluationCoversWholeSplitAndMatchesDirectComputation(tmp_path):
  data_dir, labels, _ = tasks_data.Cifar('cifar10')
  p = _Params('cifar10.SmallConvNet', data_dir)
  trainer = trainer_lib.Trainer(p, str(tmp_path), print_fn=lambda *_: None)
  res = trainer.Train(max_steps=3, evaluate_splits=('test',))['test']
  # 20 test examples in batches of 8: each counted exactly once.
  assert res['num_examples'] == tasks_data.NUM_TEST
  # Recompute loss / top-1 / top-5 directly over the split, unbatched.
  gen = p.test.Copy().Instantiate()
  xs, ys = [], []
  for b in gen.GetDataset():
    keep = b['weight'].numpy() > 0
    xs.append(b['image'].numpy()[keep])
    ys.append(b['label'].numpy()[keep])
  x, y = np.concatenate(xs), np.concatenate(ys)
  assert sorted(y) == sorted(labels['test'])
  with context.Scope(training=False):
    logits = trainer.task.network.FProp(tf.constant(x)).numpy()
  loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits).numpy()
  top5 = np.argsort(-logits, axis=1)[:, :5]
  np.testing.assert_allclose(res['loss'], loss.mean(), rtol=1e-4)
  assert res['accuracy'] == pytest.approx(np.mean(logits.argmax(1) == y))
  assert res['top5'] == pytest.approx(np.mean([t in r for t, r in zip(y, top5)]))
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert lines[-1]['split'] == 'test' and lines[-1]['step'] == 3
  assert lines[-1]['top5'] == pytest.approx(res['top5'])
  assert {'loss', 'accuracy', 'top5'} <= _EventTags(str(tmp_path / 'eval_test'))


def testMissingEvalDataFailsBeforeTraining(tmp_path):
  data_dir, _, _ = tasks_data.Cifar('cifar10')
  p = _Params('cifar10.SmallConvNet', data_dir)
  p.test.data_dir = str(tmp_path / 'empty')
  p.test.download = False
  trainer = trainer_lib.Trainer(p, str(tmp_path / 'log'),
                                print_fn=lambda *_: None)
  with pytest.raises(tfds_data.MissingDataError, match='cifar10'):
    trainer.Train(max_steps=2, evaluate_splits=('test',))
  assert not glob.glob(str(tmp_path / 'log' / 'ckpt' / 'ckpt-2*'))


def _Values(task):
  return {k: v.numpy() for k, v in
          init_from_checkpoint.TaskVariables(task).items()}


def testFineTuneIntoMoreClassesLoadsEveryNonHeadVariable(tmp_path):
  c10, _, _ = tasks_data.Cifar('cifar10')
  c100, _, _ = tasks_data.Cifar('cifar100')
  src = trainer_lib.Trainer(_Params('cifar10.SmallConvNet', c10),
                            str(tmp_path / 'src'), print_fn=lambda *_: None)
  src.Train(max_steps=3)
  src_values = _Values(src.task)

  p = _Params('cifar100.SmallConvNet', c100)
  p.task.init_from_checkpoint.checkpoint_path = str(tmp_path / 'src')
  fresh = _Values(p.task.Instantiate())
  printed = []
  tuned = trainer_lib.Trainer(p, str(tmp_path / 'tuned'),
                              print_fn=printed.append)
  tuned.Train(max_steps=0)
  got = _Values(tuned.task)
  head = set(init_from_checkpoint.HeadVariableKeys(tuned.task))
  assert head == {'task/network/logits/w', 'task/network/logits/b'}
  assert set(got) == set(src_values)  # same layer paths
  for k, v in got.items():
    if k in head:
      assert v.shape[-1] == 100
      np.testing.assert_array_equal(v, fresh[k])  # left at its initial value
    else:
      np.testing.assert_array_equal(v, src_values[k])
      # ... and loading changed it (the source was trained / its BN stats moved).
      if 'moving' in k or 'conv' in k:
        assert not np.array_equal(v, fresh[k]), k
  assert any('Initialised 10 variables' in str(l) for l in printed)

  # Resuming the fine-tuning run continues from its own checkpoint and does
  # not initialise from the source again.
  tuned.Train(max_steps=2)
  after = _Values(tuned.task)
  printed.clear()
  again = trainer_lib.Trainer(p, str(tmp_path / 'tuned'),
                              print_fn=printed.append)
  again.Train(max_steps=2)
  assert any('Resumed' in str(l) for l in printed)
  assert not any('Initialised' in str(l) for l in printed)
  for k, v in _Values(again.task).items():
    np.testing.assert_array_equal(v, after[k])


def testInitErrorsListWhatDidNotMatch(tmp_path):
  c10, _, _ = tasks_data.Cifar('cifar10')
  src = trainer_lib.Trainer(_Params('cifar10.SmallConvNet', c10),
                            str(tmp_path / 'src'), print_fn=lambda *_: None)
  src.Train(max_steps=1)
  from params import cifar10 as cifar10_params
  # Wider network: every conv / bn variable has another shape.
  p = cifar10_params.SmallConvNetTask(10, width=8)
  p.init_from_checkpoint.checkpoint_path = str(tmp_path / 'src' / 'ckpt')
  with pytest.raises(init_from_checkpoint.InitFromCheckpointError) as e:
    init_from_checkpoint.Apply(p.Instantiate(), p.init_from_checkpoint)
  msg = str(e.value)
  assert ('shape differs: task/network/block1/conv/w model [3, 3, 3, 8] vs '
          'checkpoint [3, 3, 3, 16]') in msg
  assert 'logits' not in msg.split('(checkpoint')[0]  # head left out
  # A renamed block is missing from the checkpoint.
  p = cifar10_params.SmallConvNetTask(10)
  p.network.cells[1].name = 'block2_renamed'
  p.init_from_checkpoint.checkpoint_path = str(tmp_path / 'src')
  with pytest.raises(init_from_checkpoint.InitFromCheckpointError) as e:
    init_from_checkpoint.Apply(p.Instantiate(), p.init_from_checkpoint)
  msg = str(e.value)
  assert 'not in the checkpoint: task/network/block2_renamed/conv/w' in msg
  assert 'task/network/block2/conv/w' in msg  # what the checkpoint has
  # ignore_rules=[] loads the head too: it has 10 classes, so that works here.
  p = cifar10_params.SmallConvNetTask(10)
  p.init_from_checkpoint.Set(checkpoint_path=str(tmp_path / 'src'),
                             ignore_rules=[])
  task = p.Instantiate()
  out = init_from_checkpoint.Apply(task, p.init_from_checkpoint,
                                   print_fn=lambda *_: None)
  assert 'task/network/logits/w' in out['loaded']
  assert out['not_loaded'] == []
  # Bad rules and bad paths.
  p.init_from_checkpoint.load_rules = ['task/(']
  with pytest.raises(ValueError, match='bad regex'):
    p.Instantiate()
  p.init_from_checkpoint.load_rules = ['nothing/.*']
  with pytest.raises(init_from_checkpoint.InitFromCheckpointError,
                     match='match no variable'):
    init_from_checkpoint.Apply(p.Instantiate(), p.init_from_checkpoint)
  p.init_from_checkpoint.Set(load_rules=['.*'],
                             checkpoint_path=str(tmp_path / 'nope'))
  with pytest.raises(init_from_checkpoint.InitFromCheckpointError,
                     match='is not a checkpoint'):
    init_from_checkpoint.Apply(p.Instantiate(), p.init_from_checkpoint)


def _Cli(*args):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'trainer.py'), *args],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, PYTHONUNBUFFERED='1'))


@pytest.mark.slow  # ~20 s: three trainer.py subprocesses
def testTrainerCliTrainsAndEvaluatesCifar10EndToEnd(tmp_path):
  data_dir, _, _ = tasks_data.Cifar('cifar10')
  logdir = str(tmp_path / 'log')
  r = _Cli('--model=cifar10.SmallConvNet', f'--data_dir={data_dir}',
           f'--logdir={logdir}', '--max_steps=6',
           '--model_params_override=task.train.save_interval_steps = 3')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'eval test @ step 6' in r.stdout
  lines = [json.loads(l) for l in open(os.path.join(logdir, 'metrics.jsonl'))]
  assert lines[-1]['step'] == 6 and lines[-1]['split'] == 'test'
  assert lines[-1]['num_examples'] == tasks_data.NUM_TEST
  assert {'loss', 'accuracy', 'top5'} <= set(lines[-1])
  # --mode=eval of a specific (earlier) checkpoint.
  r = _Cli('--model=cifar10.SmallConvNet', f'--data_dir={data_dir}',
           f'--logdir={logdir}', '--mode=eval',
           f'--checkpoint={os.path.join(logdir, "ckpt", "ckpt-3")}')
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [json.loads(l) for l in open(os.path.join(logdir, 'metrics.jsonl'))]
  assert lines[-1]['step'] == 3
  assert lines[-1]['num_examples'] == tasks_data.NUM_TEST
  # Missing data: a clear error, no traceback, exit status 1.
  empty = str(tmp_path / 'empty')
  r = _Cli('--model=cifar10.SmallConvNet', f'--data_dir={empty}',
           f'--logdir={tmp_path / "log2"}', '--max_steps=2',
           '--model_params_override=train.download = False; '
           'test.download = False')
  assert r.returncode == 1
  assert 'Traceback' not in r.stderr
  assert f'tasks.prepare_data --dataset=cifar10 --data_dir={empty}' in r.stderr


def testCliOverridesSetParamsWhoseDefaultIsNone():
  # Fine-tuning from the command line sets None-valued params by text.
  from gpipe_lingvo import hyperparams
  p = model_registry.GetParams('cifar100.SmallConvNet')
  hyperparams.ApplyOverrides(
      p, 'task.init_from_checkpoint.checkpoint_path = /runs/c10/ckpt; '
      'task.init_from_checkpoint.ignore_rules = ["task/network/logits/.*"]; '
      'train.mean = (0.5, 0.5, 0.5); train.data_dir = /data/tfds')
  ifc = p.task.init_from_checkpoint
  assert ifc.checkpoint_path == '/runs/c10/ckpt'
  assert ifc.ignore_rules == ['task/network/logits/.*']
  assert tuple(p.train.mean) == (0.5, 0.5, 0.5)
  assert p.train.data_dir == '/data/tfds'


def testSummaryNeedsNoData(tmp_path):
  p = model_registry.GetParams('cifar100.SmallConvNet')
  for split in ('train', 'dev', 'test'):
    p.Get(split).Set(data_dir=str(tmp_path / 'none'), download=False)
  rows = []
  total = trainer_lib.Trainer(p, '', print_fn=rows.append).Summary()
  assert total == p.task.Instantiate().NumParams()
  assert any('[None, 100]' in r for r in rows)
  assert not os.path.exists(tmp_path / 'none')
