"""Generic trainer entry point: python trainer.py --model=NAME --logdir=DIR.

Thin flag parsing over gpipe_lingvo.trainer_lib. A user error is one line on
stderr without a traceback (--debug shows it) and exit status 1; a run
stopped by SIGINT or SIGTERM saves first and exits with 130 or 143.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from gpipe_lingvo import devices
from gpipe_lingvo import errors
from gpipe_lingvo import hyperparams
from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from gpipe_lingvo import validation

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
flags.DEFINE_enum('eval_split', 'test', list(trainer_lib.EVAL_SPLITS),
                  'Split evaluated.')
flags.DEFINE_bool('list_models', False, 'List registered models and exit.')
flags.DEFINE_bool('debug', False,
                  'Show the Python traceback of user errors (for developers).')


class UsageError(errors.UserError):
  """Flags that do not go together."""


def _SetDataDir(params, data_dir):
  for split in ('train', 'dev', 'test'):
    sp = params.Get(split)
    if 'data_dir' in dict(sp.IterParams()):
      sp.data_dir = data_dir


def _CheckFlags():
  if FLAGS.mode != 'summary' and not FLAGS.logdir:
    raise UsageError(f'--logdir is required for --mode={FLAGS.mode}.')
  if FLAGS.checkpoint and FLAGS.mode != 'eval':
    raise UsageError(
        f'--checkpoint is for --mode=eval; --mode={FLAGS.mode} resumes from '
        'the newest checkpoint in --logdir. To start training from another '
        "run's weights set task.init_from_checkpoint.checkpoint_path.")


def _Run():
  if FLAGS.list_models:
    for name in model_registry.GetAllRegisteredClasses():
      print(name)
    return 0
  params = model_registry.GetParams(FLAGS.model)
  for text in FLAGS.model_params_override:
    hyperparams.ApplyOverrides(params, text)
  if FLAGS.data_dir:
    _SetDataDir(params, FLAGS.data_dir)
  _CheckFlags()
  training = FLAGS.mode in ('train', 'train_and_eval')
  max_steps = FLAGS.max_steps
  if training and max_steps is None:
    max_steps = params.task.train.max_steps
  # Before devices: a bad stage count must not reach TensorFlow.
  validation.CheckRun(params, max_steps if training else None)
  devices.ConfigureFromParams(params.task)
  trainer = trainer_lib.Trainer(params, FLAGS.logdir or '')
  if FLAGS.mode == 'summary':
    trainer.Summary()
  elif FLAGS.mode == 'eval':
    trainer.Evaluate(FLAGS.eval_split, checkpoint_path=FLAGS.checkpoint)
  else:
    trainer.Train(max_steps, evaluate_splits=(
        (FLAGS.eval_split,) if FLAGS.mode == 'train_and_eval' else ()))
  return 0


def Run(argv):
  """Runs the trainer; user errors (errors.UserError) are one line on
  stderr and their exit code, unless --debug asks for the traceback."""
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    return _Run()
  except errors.UserError as e:
    if FLAGS.debug:
      raise
    print(f'{e.prefix}{e}', file=sys.stderr, flush=True)
    return e.exit_code
  except KeyboardInterrupt:
    if FLAGS.debug:
      raise
    print('Interrupted (Ctrl-C); checkpoints already written are intact.',
          file=sys.stderr, flush=True)
    return 130


def main():
  app.run(lambda argv: sys.exit(Run(argv)))


if __name__ == '__main__':
  main()
