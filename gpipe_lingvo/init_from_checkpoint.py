"""Initialising a task's variables from another run's checkpoint (transfer
learning, e.g. CIFAR fine-tuning from an ImageNet model).

Checkpoint keys are layer paths (`task/network/<cell>/.../w`), independent
of how the network is split into pipeline stages, so variables are matched
by name. By default every variable of the task is loaded except the
classifier head (layers emitting `num_classes` logits), whose shape usually
changes with the number of classes. Optimizer slots and the step are not
loaded: fine-tuning starts a fresh optimizer at step 0.

The trainer applies this only at the start of a fresh run; a run that
resumes from its own checkpoint ignores it.
"""
import os
import re

import tensorflow as tf

from gpipe_lingvo import errors
from gpipe_lingvo import hyperparams

_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_ROOT = 'task'  # the task's attribute name in the trainer's tf.train.Checkpoint


class InitFromCheckpointError(errors.UserError, ValueError):
  """The checkpoint does not provide what the rules select."""


def Params():
  p = hyperparams.Params()
  p.Define('checkpoint_path', None,
           'Checkpoint to initialise from: a prefix (.../ckpt/ckpt-N), a '
           'checkpoint directory or a run\'s logdir (latest checkpoint). '
           'None: train from scratch.')
  p.Define('load_rules', ['.*'],
           'Regexes (re.match) on variable keys such as '
           '"task/network/cell_3/conv/w": variables matching any are loaded.')
  p.Define('ignore_rules', None,
           'Regexes of variables not loaded even if a load rule matches. '
           'None: the classifier head, i.e. the variables of every '
           'FullyConnected layer with output_dim == task.num_classes; [] '
           'loads everything.')
  return p


def CheckParams(p):
  """Fails at Instantiate time on rules that are not valid regexes."""
  for field in ('load_rules', 'ignore_rules'):
    rules = getattr(p, field)
    if rules is None:
      continue
    if isinstance(rules, str) or not all(isinstance(r, str) for r in rules):
      raise ValueError(f'init_from_checkpoint.{field} must be a list of regex '
                       f'strings, got {rules!r}.')
    for r in rules:
      try:
        re.compile(r)
      except re.error as e:
        raise ValueError(f'init_from_checkpoint.{field}: bad regex {r!r}: '
                         f'{e}.') from e


def ResolveCheckpoint(path):
  """A checkpoint prefix for a prefix, checkpoint directory or logdir."""
  if tf.io.gfile.exists(path + '.index'):
    return path
  for d in (path, os.path.join(path, 'ckpt')):
    if tf.io.gfile.isdir(d):
      latest = tf.train.latest_checkpoint(d)
      if latest:
        return latest
  raise InitFromCheckpointError(
      f'init_from_checkpoint.checkpoint_path {path!r} is not a checkpoint '
      '(no .index file) nor a directory holding one (or a logdir with ckpt/).')


def TaskVariables(task):
  """{checkpoint key: variable} of every variable of the task's layers."""
  out = {}
  prefix_len = len(task.path)
  for layer in task.Layers():
    rel = layer.path[prefix_len:]
    for name, var in layer.vars.items():
      out[f'{_ROOT}{rel}/{name}'] = var
  return out


def HeadVariableKeys(task):
  """Keys of the classifier head: FullyConnected layers emitting num_classes."""
  from gpipe_lingvo.layers import dense  # pylint: disable=import-outside-toplevel
  n = task.params.num_classes
  prefix_len = len(task.path)
  keys = []
  for layer in task.Layers():
    if (isinstance(layer, dense.FullyConnected) and
        layer.params.output_dim == n):
      rel = layer.path[prefix_len:]
      keys += [f'{_ROOT}{rel}/{name}' for name, _ in layer.vars.items()]
  return keys


def Select(task, p):
  """(selected keys, ignored keys) of the task's variables under p's rules."""
  keys = list(TaskVariables(task))
  if p.ignore_rules is None:
    ignored = set(HeadVariableKeys(task))
    if not ignored:
      raise InitFromCheckpointError(
          'init_from_checkpoint: cannot find the classifier head (no '
          f'FullyConnected layer with output_dim == {task.params.num_classes}) '
          'to leave out; set init_from_checkpoint.ignore_rules explicitly '
          '([] to load every variable).')
  else:
    ignored = {k for k in keys if any(re.match(r, k) for r in p.ignore_rules)}
  unused_rules = [r for r in p.load_rules if not any(re.match(r, k) for k in keys)]
  if unused_rules:
    raise InitFromCheckpointError(
        f'init_from_checkpoint.load_rules {unused_rules} match no variable of '
        f'the model; its variables look like {keys[:3]}.')
  selected = [k for k in keys if k not in ignored and
              any(re.match(r, k) for r in p.load_rules)]
  return selected, sorted(ignored)


def Apply(task, p, print_fn=print):
  """Loads the selected variables from p.checkpoint_path into `task`.

  Every selected variable must exist in the checkpoint with the same shape;
  otherwise InitFromCheckpointError lists each missing or mismatched one (and
  nothing is assigned). Returns {'checkpoint', 'loaded', 'not_loaded'}.
  """
  path = ResolveCheckpoint(p.checkpoint_path)
  reader = tf.train.load_checkpoint(path)
  ckpt_shapes = {k[:-len(_SUFFIX)]: s for k, s in
                 reader.get_variable_to_shape_map().items()
                 if k.endswith(_SUFFIX) and k.startswith(_ROOT + '/') and
                 not k.startswith(_ROOT + '/optimizer/')}
  variables = TaskVariables(task)
  selected, ignored = Select(task, p)
  if not selected:
    raise InitFromCheckpointError(
        'init_from_checkpoint: the rules select no variable (load_rules='
        f'{p.load_rules}, ignore_rules={p.ignore_rules}).')
  missing = [k for k in selected if k not in ckpt_shapes]
  mismatched = [(k, variables[k].shape.as_list(), ckpt_shapes[k])
                for k in selected if k in ckpt_shapes and
                variables[k].shape.as_list() != list(ckpt_shapes[k])]
  if missing or mismatched:
    lines = [f'Cannot initialise from {path}: {len(missing) + len(mismatched)} '
             f'of the {len(selected)} selected variables do not match.']
    lines += [f'  not in the checkpoint: {k}' for k in missing]
    lines += [f'  shape differs: {k} model {m} vs checkpoint {c}'
              for k, m, c in mismatched]
    extra = sorted(set(ckpt_shapes) - set(variables))[:10]
    if extra:
      lines.append(f'  (checkpoint variables the model lacks, first 10: '
                   f'{", ".join(extra)})')
    lines.append('Exclude what should not be loaded with '
                 'task.init_from_checkpoint.ignore_rules (regexes).')
    raise InitFromCheckpointError('\n'.join(lines))
  for k in selected:
    var = variables[k]
    var.assign(tf.cast(reader.get_tensor(k + _SUFFIX), var.dtype))
  not_loaded = sorted(set(variables) - set(selected))
  print_fn(f'Initialised {len(selected)} variables from {path}; not loaded '
           f'({len(not_loaded)}): {", ".join(not_loaded) or "none"}.')
  return {'checkpoint': path, 'loaded': selected, 'not_loaded': not_loaded,
          'ignored': ignored}
