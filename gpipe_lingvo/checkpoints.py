"""Checkpoint saving and robust restore.

TensorFlow writes a checkpoint's data and index before it updates the
`checkpoint` state file, so a process killed mid-save leaves the previous
checkpoint as the latest. Restore still verifies: if the latest checkpoint
cannot be read (partial or corrupt files), it falls back to the previous one
and says so, instead of failing or silently starting over.
"""
import os

from absl import logging
import tensorflow as tf


class CheckpointError(RuntimeError):
  """No readable checkpoint where one was expected."""


class Checkpointer:
  """Owns a tf.train.CheckpointManager for `objects` under `directory`."""

  def __init__(self, directory, max_to_keep=5, **objects):
    self.directory = directory
    self.checkpoint = tf.train.Checkpoint(**objects)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, directory, max_to_keep=max_to_keep)

  def Save(self, step):
    return self.manager.save(checkpoint_number=int(step))

  def _Candidates(self):
    """Checkpoint prefixes, newest first: the manager's list, then any on disk."""
    found = list(reversed(self.manager.checkpoints))
    state = tf.train.get_checkpoint_state(self.directory)
    if state is not None:
      for path in reversed(list(state.all_model_checkpoint_paths)):
        if path not in found:
          found.append(path)
    return found

  def RestoreLatest(self):
    """Restores the newest readable checkpoint; returns its path or None."""
    candidates = self._Candidates()
    for i, path in enumerate(candidates):
      try:
        self.checkpoint.read(path).assert_existing_objects_matched()
      except Exception as e:  # pylint: disable=broad-except
        # Truncated files raise IndexError, corrupt ones DataLossError, etc.
        nxt = candidates[i + 1] if i + 1 < len(candidates) else None
        logging.warning('Checkpoint %s is unreadable (%s: %s); %s', path,
                        type(e).__name__, str(e).splitlines()[0][:200],
                        f'falling back to {nxt}' if nxt else
                        'no older checkpoint to fall back to')
        print(f'WARNING: checkpoint {path} is unreadable; '
              + (f'falling back to {nxt}.' if nxt else 'no older checkpoint.'),
              flush=True)
        continue
      return path
    if candidates:
      raise CheckpointError(
          f'None of the checkpoints in {self.directory} could be read '
          f'({", ".join(os.path.basename(c) for c in candidates)}). Move the '
          'directory aside to start afresh.')
    return None

  def Restore(self, path):
    """Restores one specific checkpoint (e.g. --checkpoint for eval)."""
    if not tf.io.gfile.exists(path + '.index'):
      raise CheckpointError(f'Checkpoint {path!r} does not exist (no '
                            f'{path}.index).')
    self.checkpoint.read(path).assert_existing_objects_matched().expect_partial()
    return path
