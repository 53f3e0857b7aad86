"""Generic trainer entry point: python trainer.py --model=NAME --logdir=DIR.

Thin flag parsing over gpipe_lingvo.trainer_lib. A user error is one line on
stderr without a traceback (--debug shows it) and exit status 1; a run
stopped by SIGINT or SIGTERM saves first and exits with 130 or 143.

It prints the world it runs in first: workers, replicas R, stages K, devices
per stage, and the global, per-replica and micro-batch sizes. With the
standard TF_CONFIG naming several workers (python -m
gpipe_lingvo.distribute.launch sets it for local runs), each worker process
runs one replica of the whole pipeline and gradients are summed across
workers every step (gpipe_lingvo.distribute); a TF_CONFIG that does not fit
the params fails before the first step. --tpu addresses a TPU slice: the
whole step runs there as one XLA program per replica, stages pinned to
logical cores (never run on a TPU in this project's tests; the trainer says
so at start).
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow's BFC allocator on the CPU keeps the statistics every step
# line's `step peak` reads; the default CPU allocator keeps none where
# oneDNN is off (e.g. an x86 CPU without AVX-512). Set it to false to opt
# out (the step lines then carry no peak).
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf

from gpipe_lingvo import devices
from gpipe_lingvo import errors
from gpipe_lingvo import hyperparams
from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from gpipe_lingvo import validation
from gpipe_lingvo.distribute import strategy as strategy_lib
from gpipe_lingvo.distribute import tpu as tpu_lib
from gpipe_lingvo.distribute import world as world_lib
from gpipe_lingvo.planning import auto
from gpipe_lingvo.planning import model_plan

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
flags.DEFINE_string('tpu', '',
                    'TPU to train on: a name or grpc://host:port, as '
                    'TPUClusterResolver takes it (needs topology.device_type '
                    "= 'tpu').")
flags.DEFINE_float('collective_timeout_s', 600,
                   'Multi-worker: a cross-worker sum that waits longer than '
                   'this for a peer fails the run (a dead worker is noticed '
                   'sooner, by heartbeats).')
flags.DEFINE_bool('plan_measure', False,
                  '--mode=plan: run the traced cells once on this device for '
                  'measured times and kernel workspace (allocates weights), '
                  "and the executor on the schedule's table with tiny "
                  'chunks for its per-tick cost (creates the devices).')
flags.DEFINE_bool('search', False,
                  '--mode=plan: search stages x replicas, micro-batches, '
                  'schedules, virtual stages, recompute and the cut on the '
                  "topology's devices and budget; print the ten fastest "
                  'that fit and write plan.json of the first '
                  '(planning/search.py).')
flags.DEFINE_integer('search_devices', 0,
                     '--search: devices to search over (0: '
                     'topology.num_logical_devices, the GPUs, else 1).')
flags.DEFINE_string('search_largest', '',
                    '--search: KNOB=V1,V2,... the largest value of the '
                    "model's size knob (a class attribute of its params, "
                    'e.g. FILTERS=32,64,128) with which some configuration '
                    'fits the devices and budget.')
flags.DEFINE_integer('timeline_at_step', 0,
                     'Training: profile this step and write '
                     'step_timeline.png (measured beside planned) to the '
                     'logdir (0: off).')

# Modes that join the workers of TF_CONFIG; the others run in one process.
_CLUSTER_MODES = ('train', 'train_and_eval')


class UsageError(errors.UserError):
  """Flags that do not go together."""


class PeerLostError(errors.UserError):
  """A multi-worker run lost a peer (it died or timed out)."""


def _SetDataDir(params, data_dir):
  for split in ('train', 'dev', 'test'):
    sp = params.Get(split)
    if 'data_dir' in dict(sp.IterParams()):
      sp.data_dir = data_dir


def _CheckFlags():
  if FLAGS.mode not in ('summary', 'plan', 'check') and not FLAGS.logdir:
    raise UsageError(f'--logdir is required for --mode={FLAGS.mode}.')
  if FLAGS.search and FLAGS.mode != 'plan':
    raise UsageError(f'--search is for --mode=plan, not --mode={FLAGS.mode}; '
                     "to let training choose, set fields to 'auto'.")
  if FLAGS.checkpoint and FLAGS.mode != 'eval':
    raise UsageError(
        f'--checkpoint is for --mode=eval; --mode={FLAGS.mode} resumes from '
        'the newest checkpoint in --logdir. To start training from another '
        "run's weights set task.init_from_checkpoint.checkpoint_path.")


def _CollectiveErrorText(error):
  """TensorFlow's message without the traceback of the op's definition."""
  skip = ('Graph execution error', 'Detected at node', 'File "', '[[')
  lines = [l.strip() for l in error.message.splitlines()]
  return ' '.join(l for l in lines if l and not l.startswith(skip))


def _StartWorld(params):
  """Prints the world of this process, makes its devices and returns its
  replica hooks (gpipe_lingvo.distribute)."""
  world = world_lib.FromParams(params, os.environ.get('TF_CONFIG', ''),
                               FLAGS.tpu)
  # A multi-worker runtime must start as a cluster member: configure the
  # devices now, count them once the strategy exists.
  devices.ConfigureFromParams(params.task, verify=not world.is_multi_worker)
  if world.tpu:
    return tpu_lib.Start(world, params)
  for line in world.Describe():
    print(line)
  if FLAGS.mode not in _CLUSTER_MODES and world.is_multi_worker:
    raise UsageError(f'--mode={FLAGS.mode} runs in one process; unset '
                     'TF_CONFIG (only training joins the workers).')
  return strategy_lib.Start(world, FLAGS.collective_timeout_s)


def _RunMode(trainer, max_steps):
  """Runs FLAGS.mode; returns the exit status."""
  if FLAGS.mode == 'summary':
    trainer.Summary()
  elif FLAGS.mode == 'check':
    return 0 if trainer.Check() else 1
  elif FLAGS.mode == 'eval':
    trainer.Evaluate(FLAGS.eval_split, checkpoint_path=FLAGS.checkpoint)
  else:
    trainer.Train(max_steps, evaluate_splits=(
        (FLAGS.eval_split,) if FLAGS.mode == 'train_and_eval' else ()))
  return 0


def _Largest(params):
  """--search --search_largest=KNOB=V1,V2,...: prints the largest value."""
  knob, _, text = FLAGS.search_largest.partition('=')
  try:
    values = [int(v) for v in text.split(',')]
  except ValueError:
    raise UsageError(f'--search_largest={FLAGS.search_largest!r}: write '
                     'KNOB=V1,V2,... with int values, e.g. '
                     'FILTERS=32,64,128.') from None
  topo = params.task.network.topology
  n = FLAGS.search_devices or auto.NumDevices(topo)
  budget = auto.Budget(topo)
  value, point = auto.LargestModel(
      model_registry.GetClass(FLAGS.model), knob.strip(), values, n, budget,
      FLAGS.model_params_override)
  where = f'{n} device(s)' + (f' of {budget / 2**20:.1f} MiB' if budget
                              else '')
  if value is None:
    print(f'no {knob} in {values} fits {where}')
  else:
    print(f'largest {knob} that fits {where}: {value} '
          f"(--model_params_override='{point.Overrides()}')")


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
  training = FLAGS.mode in _CLUSTER_MODES
  max_steps = FLAGS.max_steps
  if training and max_steps is None:
    max_steps = params.task.train.max_steps
  if FLAGS.mode == 'plan' and FLAGS.search and FLAGS.search_largest:
    _Largest(params)
    return 0
  if FLAGS.mode == 'plan' and FLAGS.search:
    auto.RunSearchMode(params, FLAGS.logdir, num_devices=FLAGS.search_devices)
    return 0
  # 'auto' pipeline fields: chosen before anything checks or builds them.
  auto.Resolve(params, FLAGS.logdir)
  # Before devices: a bad stage count must not reach TensorFlow.
  validation.CheckRun(params, max_steps if training else None)
  if FLAGS.mode == 'plan':  # Needs no devices: nothing is built on them.
    model_plan.RunPlanMode(params, FLAGS.logdir, measure=FLAGS.plan_measure)
    return 0
  replicas, done = None, False
  try:
    replicas = _StartWorld(params)
    trainer = trainer_lib.Trainer(params, FLAGS.logdir or '',
                                  replicas=replicas,
                                  timeline_at_step=FLAGS.timeline_at_step)
    rc = _RunMode(trainer, max_steps)
    done = True
  except tf.errors.OpError as e:
    if replicas is None or not replicas.world.is_multi_worker:
      raise
    # A peer died or timed out: TensorFlow's message names the task.
    raise PeerLostError(
        f'multi-worker training stopped ({type(e).__name__}): '
        f'{_CollectiveErrorText(e)} Restart all workers: training resumes '
        "from the chief's last checkpoint.") from e
  finally:
    if replicas is not None:
      replicas.Close(wait_for_peers=done)
  return rc


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
