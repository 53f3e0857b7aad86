"""Generic trainer entry point: python trainer.py --model=NAME --logdir=DIR.

Thin flag parsing over gpipe_lingvo.trainer_lib; user errors are printed
without a traceback and exit with status 1.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from gpipe_lingvo import devices
from gpipe_lingvo import hyperparams
from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'digits.ConvNet', 'Registered model name.')
flags.DEFINE_string('logdir', None, 'Directory for checkpoints and summaries.')
flags.DEFINE_enum('mode', 'train_and_eval', list(trainer_lib.MODES),
                  'What to run.')
flags.DEFINE_integer('max_steps', None, 'Override task.train.max_steps.')
flags.DEFINE_multi_string('model_params_override', [],
                          'Params overrides, e.g. "task.train.max_steps = 10".')
flags.DEFINE_string('data_dir', None,
                    'Dataset directory for TFDS-backed inputs.')
flags.DEFINE_string('checkpoint', None,
                    'Specific checkpoint prefix to evaluate (--mode=eval).')
flags.DEFINE_string('eval_split', 'test', 'Split evaluated: dev or test.')
flags.DEFINE_bool('list_models', False, 'List registered models and exit.')


def _Fail(msg):
  print(f'ERROR: {msg}', file=sys.stderr)
  return 1


def _SetDataDir(params, data_dir):
  for split in ('train', 'dev', 'test'):
    sp = params.Get(split)
    if 'data_dir' in dict(sp.IterParams()):
      sp.data_dir = data_dir


def Run(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.list_models:
    for name in model_registry.GetAllRegisteredClasses():
      print(name)
    return 0
  try:
    params = model_registry.GetParams(FLAGS.model)
  except model_registry.ModelNotFoundError as e:
    return _Fail(str(e))
  try:
    for text in FLAGS.model_params_override:
      hyperparams.ApplyOverrides(params, text)
  except hyperparams.OverrideError as e:
    return _Fail(str(e))
  if FLAGS.data_dir:
    _SetDataDir(params, FLAGS.data_dir)
  try:
    devices.ConfigureFromParams(params.task)
    trainer = trainer_lib.Trainer(params, FLAGS.logdir or '')
    if FLAGS.mode == 'summary':
      trainer.Summary()
      return 0
    if FLAGS.mode == 'check':
      return 0 if trainer.Check() else 1
    if not FLAGS.logdir:
      return _Fail('--logdir is required for --mode=' + FLAGS.mode)
    if FLAGS.mode == 'train':
      trainer.Train(FLAGS.max_steps)
    elif FLAGS.mode == 'eval':
      trainer.Evaluate(FLAGS.eval_split, checkpoint_path=FLAGS.checkpoint)
    else:
      trainer.Train(FLAGS.max_steps, evaluate_splits=(FLAGS.eval_split,))
  except (trainer_lib.TrainerError, ValueError, devices.DeviceError) as e:
    return _Fail(str(e))
  return 0


def main():
  app.run(lambda argv: sys.exit(Run(argv)))


if __name__ == '__main__':
  main()
