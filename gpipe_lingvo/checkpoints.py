"""Checkpoints that a fault cannot lose or poison.

- Restore reads the files themselves: every `ckpt-N.index` on disk and every
  path the `checkpoint` state file lists, newest first. A missing or stale
  state file therefore loses nothing; it is rebuilt from the files.
- A checkpoint that cannot be read (truncated, corrupt) or holds NaN/Inf is
  skipped with a warning; when training, it is moved to `unusable/` so
  that no later save writes over a checkpoint that was not read. If none
  can be used the run stops and the files stay as they are.
- A checkpoint whose variables are not the model's (another model, other
  params) is an error naming the first variable that differs.
- Save checks that every variable is finite first (one is_finite
  reduction per variable, far cheaper than writing them), so no checkpoint
  with a NaN or Inf is ever written. A full disk removes the partial files,
  keeps the earlier checkpoints and says how much space was needed.

TensorFlow writes a checkpoint's data and index (through `ckpt-N_temp/`)
before it updates the state file, so a process killed mid-save leaves the
previous checkpoints intact; the partial directory is removed at the next
start.
"""
import contextlib
import errno
import gc
import os
import re
import shutil

import tensorflow as tf

from gpipe_lingvo import errors

_VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_IGNORED_KEYS = ('save_counter', '_CHECKPOINTABLE_OBJECT_GRAPH')
UNUSABLE_DIR = 'unusable'


class CheckpointError(errors.UserError, RuntimeError):
  """No usable checkpoint where one was expected."""


class ModelMismatchError(CheckpointError):
  """The checkpoint holds another model's variables."""


class DiskFullError(CheckpointError):
  """A checkpoint could not be written for lack of space."""


class NonFiniteError(errors.UserError):
  """A step or the variables became NaN/Inf; nothing of it was saved."""


def CheckpointNumber(path):
  m = re.search(r'-(\d+)$', path)
  return int(m.group(1)) if m else -1


def ErrorLine(e, limit=160):
  """`Type: first line of the message`, without TensorFlow's
  {{function_node ...}} prefix and empty ` name:` suffix."""
  text = re.sub(r'^\{\{function_node [^}]*\}\}\s*', '',
                str(e).strip()).splitlines()
  first = re.sub(r'\s+name:\s*$', '', text[0]) if text else ''
  return f'{type(e).__name__}: {first[:limit]}'


def _Escape(name):
  # How tf.train.Checkpoint spells an attribute name inside a key.
  return name.replace('.', '..').replace('/', '.S')


def VariablesByKey(root):
  """{checkpoint key: variable} of everything tf.train.Checkpoint(root)
  saves, found breadth-first as TensorFlow names them (shortest path)."""
  view = tf.train.TrackableView(root)
  out, seen, queue = {}, set(), [((), root)]
  while queue:
    path, obj = queue.pop(0)
    if id(obj) in seen:
      continue
    seen.add(id(obj))
    if isinstance(obj, tf.Variable):
      key = '/'.join(_Escape(p) for p in path)
      if key not in _IGNORED_KEYS:
        out[key] = obj
      continue
    for name, child in view.children(obj).items():
      queue.append((path + (name,), child))
  return out


@contextlib.contextmanager
def QuietTfLogger():
  """TensorFlow's Python warnings off: a read that fails leaves restore
  statuses whose deletion lists every value not restored, and the state
  file update warns of its deprecation; we say what happened ourselves."""
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel('ERROR')
  try:
    yield
  finally:
    logger.setLevel(level)


def ReadQuietly(make_checkpoint, path, match_existing=False):
  """Reads checkpoint `path` into a tf.train.Checkpoint that
  make_checkpoint() builds (values the checkpoint holds beyond its objects
  are ignored); returns None, or the first line of the error.

  After a failed read, the objects it touched are freed before TensorFlow
  can warn about every value not restored: the caller says what failed.
  """
  with QuietTfLogger():
    try:
      status = make_checkpoint().read(path)
      if match_existing:
        status.assert_existing_objects_matched()
      status.expect_partial()
      return None
    except Exception as e:  # pylint: disable=broad-except
      # Truncated or corrupt data raises DataLossError, IndexError,
      # ValueError...
      error = ErrorLine(e)
    status = None
    gc.collect()
  return error


def _MB(n):
  return f'{n / 2**20:.1f} MB'


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _DiskFullReason(e):
  """The OS's words if `e` (OSError or TensorFlow error) means the disk,
  quota or file-size limit is full; else None."""
  if isinstance(e, OSError) and e.errno in _DISK_FULL:
    return os.strerror(e.errno)
  for code in _DISK_FULL:
    if os.strerror(code) in str(e):
      return os.strerror(code)
  return None


def _ReadState(directory):
  try:
    return tf.train.get_checkpoint_state(directory)
  except ValueError:  # An empty or invalid state file.
    return None


def _OnDisk(directory):
  """{prefix: N} of the ckpt-N checkpoints in `directory`."""
  if not tf.io.gfile.isdir(directory):
    return {}
  return {os.path.join(directory, m.group(1)): int(m.group(2))
          for m in (re.fullmatch(r'(ckpt-(\d+))\.index', name)
                    for name in tf.io.gfile.listdir(directory)) if m}


def Candidates(directory):
  """Checkpoint prefixes in `directory`, newest first: the files on disk
  and those the state file lists (whichever is missing or stale, the other
  counts) that have an index file."""
  found = _OnDisk(directory)
  state = _ReadState(directory)
  if state is not None:
    for path in state.all_model_checkpoint_paths:
      if path not in found and tf.io.gfile.exists(path + '.index'):
        found[path] = CheckpointNumber(path)
  return sorted(found, key=lambda p: found[p], reverse=True)


class Checkpointer:
  """Saves and restores `objects` (the model: a tf.train.Checkpoint of them)
  under `directory`, in files ckpt-N (N: the step). Objects attached with
  Attach() are saved along and restored by their owners (the input
  position)."""

  def __init__(self, directory, max_to_keep=5, print_fn=print, **objects):
    self.directory = directory
    self.max_to_keep = max_to_keep
    self._print = print_fn
    self._objects = objects
    self._attached = {}
    self._checkpoint = None
    self._manager = None
    self._variables = None
    # The newest checkpoint this process restored or wrote; every variable
    # in it was checked to be finite.
    self.latest_finite = None

  # -- what the model holds ----------------------------------------------------

  @property
  def checkpoint(self):
    """The tf.train.Checkpoint every save writes: the model's objects and
    the attached ones. It never reads: a read that fails leaves deferred
    restorations behind (e.g. of the save counter, created at the first
    save), which would later read the failed checkpoint."""
    if self._checkpoint is None:
      self._checkpoint = tf.train.Checkpoint(**self._objects, **self._attached)
    return self._checkpoint

  def Attach(self, name, trackable):
    """Saves `trackable` as `name` in every later checkpoint."""
    self._attached[name] = trackable
    self._checkpoint = None
    self._manager = None

  @property
  def variables(self):
    """{key: variable} of the model (the attached objects excluded)."""
    if self._variables is None:
      self._variables = VariablesByKey(tf.train.Checkpoint(**self._objects))
    return self._variables

  def NonFiniteVariables(self):
    """Keys of the floating-point variables that hold a NaN or an Inf
    (one is_finite reduction per variable, dispatched without waiting;
    one transfer of the flags at the end)."""
    floats = sorted((k, v) for k, v in self.variables.items()
                    if v.dtype.is_floating)
    if not floats:
      return []
    flags = tf.stack([tf.reduce_all(tf.math.is_finite(v))
                      for _, v in floats]).numpy()
    return [k for (k, _), ok in zip(floats, flags) if not ok]

  def SizeBytes(self):
    """Bytes a checkpoint needs: the size of the newest one written or
    read (it holds the attached objects too, e.g. the input iterator), at
    least the model's variable data."""
    size = sum(v.shape.num_elements() * v.dtype.size
               for v in self.variables.values())
    if self.latest_finite:
      size = max(size, sum(tf.io.gfile.stat(f).length for f in
                           tf.io.gfile.glob(self.latest_finite + '.*')))
    return size

  def Mismatch(self, path, reader):
    """None, or a sentence naming the first model variable that is missing
    from checkpoint `path` or has another shape or dtype there."""
    shapes = {k[:-len(_VALUE_SUFFIX)]: s for k, s in
              reader.get_variable_to_shape_map().items()
              if k.endswith(_VALUE_SUFFIX)}
    dtypes = {k[:-len(_VALUE_SUFFIX)]: d for k, d in
              reader.get_variable_to_dtype_map().items()
              if k.endswith(_VALUE_SUFFIX)}
    diffs = []
    for key, var in sorted(self.variables.items()):
      model = (var.shape.as_list(), var.dtype.base_dtype.name)
      if key not in shapes:
        diffs.append(f'{key} (shape {model[0]}) is in the model but not in '
                     'the checkpoint')
      elif (list(shapes[key]), dtypes[key].name) != model:
        ckpt = (list(shapes[key]), dtypes[key].name)
        diffs.append(f'{key} is {model[1]}{model[0]} in the model but '
                     f'{ckpt[1]}{ckpt[0]} in the checkpoint')
    if not diffs:
      return None
    extra = sorted(set(shapes) - set(self.variables) - set(_IGNORED_KEYS))
    more = (f' (the checkpoint also has {len(extra)} variables the model '
            f'lacks, e.g. {extra[0]})' if extra else '')
    return (f'The model does not match checkpoint {path}: {diffs[0]}; '
            f'{len(diffs)} of the model\'s {len(self.variables)} variables '
            f'differ{more}. It was written by another model or other params '
            "(its logdir's params.txt has them): use those, or another "
            '--logdir.')

  # -- restore -----------------------------------------------------------------

  def _ReadState(self):
    return _ReadState(self.directory)

  def _OnDisk(self):
    return _OnDisk(self.directory)

  def Candidates(self):
    return Candidates(self.directory)

  def _TryRestore(self, path, require_finite=True):
    """Restores `path`; returns None, or why it cannot be used. Raises
    ModelMismatchError if it holds other variables than the model's."""
    try:
      reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError, OSError) as e:
      return f'cannot read its index ({ErrorLine(e)})'
    mismatch = self.Mismatch(path, reader)
    if mismatch:
      raise ModelMismatchError(mismatch)
    # A checkpoint object of its own per read (see `checkpoint`).
    error = ReadQuietly(lambda: tf.train.Checkpoint(**self._objects), path,
                        match_existing=True)
    if error:
      return f'cannot read its values ({error})'
    bad = self.NonFiniteVariables() if require_finite else []
    if bad:
      return f'holds non-finite values ({bad[0]}' + (
          f' and {len(bad) - 1} more)' if len(bad) > 1 else ')')
    return None

  def RestoreLatest(self, for_training=True):
    """Restores the newest usable checkpoint; returns its path or None.

    Unusable newer ones are skipped with a warning and, when for_training,
    moved to unusable/ (so a later save cannot overwrite them), stale
    partial saves are removed and the state file is rebuilt from the files.
    """
    rejected = []
    candidates = self.Candidates()
    for i, path in enumerate(candidates):
      reason = self._TryRestore(path)
      if reason is None:
        if for_training:
          self._SetAside(rejected)
          self._SyncState(path)
        self.latest_finite = path
        return path
      rejected.append(path)
      nxt = candidates[i + 1] if i + 1 < len(candidates) else None
      verb = ('holds non-finite values' if reason.startswith('holds')
              else 'is unreadable')
      self._print(f'WARNING: checkpoint {path} {verb}; '
                  + (f'falling back to {nxt}' if nxt else
                     'no older checkpoint') + f': {reason}.')
    if rejected:
      raise CheckpointError(
          f'None of the {len(rejected)} checkpoints in {self.directory} can '
          f'be used ({", ".join(os.path.basename(p) for p in rejected)}; '
          'see the warnings above). They are left as they are: move them '
          'aside to start afresh in this logdir, or pass another --logdir.')
    if for_training:
      self._SyncState(None)
    return None

  def Restore(self, path):
    """Restores one given checkpoint prefix (e.g. --checkpoint for eval)."""
    if tf.io.gfile.isdir(path):
      inside = Candidates(path) or Candidates(os.path.join(path, 'ckpt'))
      raise CheckpointError(
          f'Checkpoint {path!r} is a directory; '
          + (f'pass a checkpoint prefix, e.g. {inside[0]} (the newest).'
             if inside else 'it holds no checkpoint.'))
    near = [c for c in Candidates(os.path.dirname(path) or '.') if c != path]
    hint = (f'e.g. {near[0]} (the newest there)' if near else
            'such as LOGDIR/ckpt/ckpt-N')
    stem = re.sub(r'\.(index|data-\d+-of-\d+)$', '', path)
    if stem != path and tf.io.gfile.exists(stem + '.index'):
      raise CheckpointError(f'Checkpoint {path!r} names one file of the '
                            f'checkpoint; pass its prefix {stem!r}.')
    if not tf.io.gfile.exists(path + '.index'):
      raise CheckpointError(f'Checkpoint {path!r} does not exist (no '
                            f'{path}.index); pass a checkpoint prefix, {hint}.')
    reason = self._TryRestore(path, require_finite=False)
    if reason is not None:
      raise CheckpointError(f'Cannot use checkpoint {path}: {reason}. It is '
                            f'truncated or corrupt; pass another one, {hint}.')
    return path

  def _SetAside(self, paths):
    """Moves the files of each checkpoint prefix into unusable/."""
    if not paths:
      return
    dest_dir = os.path.join(self.directory, UNUSABLE_DIR)
    tf.io.gfile.makedirs(dest_dir)
    for path in paths:
      name, n = os.path.basename(path), 0
      while tf.io.gfile.glob(os.path.join(dest_dir, re.escape(name) + '.*')):
        n += 1
        name = f'{os.path.basename(path)}.{n}'
      for f in tf.io.gfile.glob(path + '.*'):
        tf.io.gfile.rename(f, os.path.join(dest_dir,
                                           name + f[len(path):]))
      self._print(f'Moved the unusable checkpoint {os.path.basename(path)} '
                  f'to {dest_dir}/{name}.')

  def _SyncState(self, restored):
    """Makes the state file list the checkpoints on disk up to `restored`
    (the manager keeps max_to_keep of them), and removes stale partial
    saves; a run starting from scratch gets no state file."""
    for temp in tf.io.gfile.glob(os.path.join(self.directory, 'ckpt-*_temp')):
      tf.io.gfile.rmtree(temp)
      self._print(f'Removed {temp}, left by a save that did not finish.')
    for temp in tf.io.gfile.glob(os.path.join(self.directory,
                                              'checkpoint.tmp*')):
      tf.io.gfile.remove(temp)
    state_file = os.path.join(self.directory, 'checkpoint')
    if restored is None:
      if tf.io.gfile.exists(state_file):
        tf.io.gfile.remove(state_file)
      return
    limit = CheckpointNumber(restored)
    keep = sorted((n, p) for p, n in self._OnDisk().items() if n <= limit)
    names = [os.path.basename(p) for _, p in keep]
    state = self._ReadState()
    if state is not None and os.path.basename(
        state.model_checkpoint_path) == os.path.basename(restored) and [
            os.path.basename(p) for p in
            state.all_model_checkpoint_paths] == names:
      return
    # The deprecated v1 call: the manager cannot rebuild the state file
    # from the files.
    with QuietTfLogger():
      tf.compat.v1.train.update_checkpoint_state(
          self.directory, os.path.basename(restored),
          all_model_checkpoint_paths=names,
          all_model_checkpoint_timestamps=[
              tf.io.gfile.stat(p + '.index').mtime_nsec / 1e9
              for _, p in keep])
    self._manager = None
    self._print(f'Rebuilt {state_file} from the files (it was '
                f'{"stale" if state is not None else "missing"}).')

  # -- save --------------------------------------------------------------------

  @property
  def manager(self):
    if self._manager is None:
      self._manager = tf.train.CheckpointManager(
          self.checkpoint, self.directory, max_to_keep=self.max_to_keep)
    return self._manager

  def Save(self, step):
    """Writes ckpt-<step> if every variable is finite; returns its path.

    Raises NonFiniteError (nothing written) or DiskFullError (partial files
    removed, earlier checkpoints intact).
    """
    step = int(step)
    if self.latest_finite and CheckpointNumber(self.latest_finite) == step:
      return self.latest_finite
    bad = self.NonFiniteVariables()
    if bad:
      raise NonFiniteError(
          f'Not saving step {step}: {bad[0]} holds non-finite values'
          + (f' (and {len(bad) - 1} more)' if len(bad) > 1 else '')
          + f'. {self._LatestFiniteText()} Lower the learning rate '
          '(task.train.lr_schedule.learning_rate) and rerun to resume.')
    prefix = os.path.join(self.directory, f'ckpt-{step}')
    try:
      path = self.manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
      reason = _DiskFullReason(e)
      if reason is None:
        raise
      self._RemovePartial(prefix)
      raise DiskFullError(self._DiskFullText(prefix, reason)) from e
    self.latest_finite = path
    return path

  def _RemovePartial(self, prefix):
    state_temp = os.path.join(self.directory, 'checkpoint.tmp*')
    for f in tf.io.gfile.glob(prefix + '.*') + tf.io.gfile.glob(state_temp):
      tf.io.gfile.remove(f)
    if tf.io.gfile.exists(prefix + '_temp'):
      tf.io.gfile.rmtree(prefix + '_temp')

  def _DiskFullText(self, prefix, reason):
    try:
      free = f'{_MB(shutil.disk_usage(self.directory).free)} is free'
    except OSError:
      free = 'the free space is unknown'
    return (f'Disk full: checkpoint {os.path.basename(prefix)} needs about '
            f'{_MB(self.SizeBytes())} in {self.directory} and {free} '
            f'({reason}). Removed its partial files; earlier '
            f'checkpoints are intact. {self._LatestFiniteText()} Free some '
            'space (or lower task.train.keep_checkpoint_max) and rerun to '
            'resume.')

  def NonFiniteStep(self, step, finite, loss, grad_norm):
    """The error for a training step that was not applied: `finite` maps
    'loss', 'grad_norm' and batch-norm layer paths to whether they were."""
    bad = [k for k, ok in finite.items() if not ok]
    what = ', '.join('the loss' if k == 'loss' else
                     'the gradient norm' if k == 'grad_norm' else
                     f'the new moving statistics of {k}' for k in bad[:3])
    return NonFiniteError(
        f'Step {step} was not applied: not finite: {what} (loss {loss:.4g}, '
        f'gradient norm {grad_norm:.4g}). {self._LatestFiniteText()} Lower '
        'the learning rate (task.train.lr_schedule.learning_rate) and rerun '
        'to resume from it (if the run had diverged before it, move the '
        'newer ckpt-N files out of the checkpoint directory to resume from '
        'an older one).')

  def _LatestFiniteText(self):
    if not self.latest_finite:
      return 'No checkpoint was written yet.'
    return (f'The newest checkpoint is {self.latest_finite} (step '
            f'{CheckpointNumber(self.latest_finite)}); all its values are '
            'finite, and the steps after it are not saved.')
