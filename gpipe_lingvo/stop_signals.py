"""Stopping a run between steps on SIGTERM (schedulers, preemptible VMs)
or Ctrl-C (SIGINT), so that the trainer can save before it exits.

The handler only records the signal; the training loop looks at it after
each step, saves a checkpoint at that step and raises Stopped (the workers
of a multi-worker run first agree, through the step's cross-worker sum, to
stop after the same step: distribute/replicas.py). Python runs
handlers between bytecodes, so a signal that arrives inside a step is seen
when the step returns: a save never interleaves with a step. The first
signal also restores the default action, so a second one ends the process
at once without saving (the previous checkpoint stays intact, as after a
SIGKILL).

Exit codes follow the shell's convention for death by signal: 130 for
SIGINT and 143 for SIGTERM, after the checkpoint is written.
"""
import os
import signal
import threading

from gpipe_lingvo import errors

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(errors.UserError):
  """The run stopped on a signal after saving; not an error."""

  prefix = ''

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum
    self.exit_code = 128 + signum


class StopSignals:
  """Context manager: `signum` is the first SIGINT/SIGTERM received, or
  None. Handlers are installed only in the main thread (the only one that
  can) and the previous ones are restored on exit."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ''

  def Stopped(self, step: int, saved: str) -> Stopped:
    """The exception that ends a run stopped at `step`, now in `saved`
    (None: another worker, the chief, saved it); if this process received
    no signal, another worker of the run did."""
    where = f'saved {saved}' if saved else "the chief saved the checkpoint"
    if self.signum:
      return Stopped(self.signum, f'Stopped by {self.name} at step {step}; '
                     f'{where}. Rerun the same command to resume.')
    return Stopped(signal.SIGTERM, f'Stopped at step {step}: another worker '
                   f'received a stop signal; {where}. Rerun the same command '
                   'to resume.')

  def _Handle(self, signum, frame):
    del frame
    self.signum = signum
    for s in SIGNALS:
      signal.signal(s, signal.SIG_DFL)
    if signum == signal.SIGINT:
      # os.write: print() from a handler can re-enter a buffered write.
      os.write(2, b'\nCtrl-C: stopping after this step to save a checkpoint '
               b'(Ctrl-C again exits at once without saving).\n')

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._Handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    self._previous = {}
