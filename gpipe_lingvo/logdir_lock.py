"""One trainer per logdir: an exclusive lock on LOGDIR/trainer.lock.

Two processes writing one logdir would both write checkpoints and both
append to metrics.jsonl. The lock is flock(2) on a file in the logdir: the
kernel releases it when its process exits in any way (SIGKILL and crashes
included), so a dead trainer's lock is free at once and the next trainer
takes it over; no pid-liveness guessing, no stale-lock timeout. The file
records who holds the lock (pid, host, start time) for the refusal message;
its presence alone means nothing, which is why it is never deleted.

flock works on local filesystems and, on Linux, on NFS (as a POSIX lock).
Paths with a scheme (gs://...) are not locked.
"""
import errno
import fcntl
import os
import socket
import time

from gpipe_lingvo import errors

LOCK_FILE = 'trainer.lock'


class LogdirLockedError(errors.UserError):
  """Another live process holds the logdir's lock."""


class LogdirLock:
  """Context manager holding the lock of `logdir` (created if needed)."""

  def __init__(self, logdir: str, print_fn=print, hint: str = ''):
    self.path = os.path.join(logdir, LOCK_FILE)
    self._print = print_fn
    self._hint = hint
    self._fd = None

  def Acquire(self) -> 'LogdirLock':
    if '://' in self.path or self._fd is not None:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 1024).decode(errors='replace').strip() or 'unknown'
      os.close(fd)
      raise LogdirLockedError(
          f'Another trainer is using logdir {os.path.dirname(self.path)} '
          f'({holder}; lock {self.path}). Wait for it to finish or stop it, '
          'or pass another --logdir.' + (f' {self._hint}' if self._hint
                                         else '')) from None
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      self._print(f'WARNING: the filesystem of {self.path} does not support '
                  'locks; nothing stops a second trainer on this logdir.')
      return self
    os.ftruncate(fd, 0)
    os.write(fd, (f'pid {os.getpid()} on {socket.gethostname()}, since '
                  f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n').encode())
    self._fd = fd
    return self

  def Release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.Acquire()

  def __exit__(self, *exc):
    self.Release()
