"""The user-error family: what trainer.py reports in one line.

Everything a user fixes by changing a flag, a params value or the files in
the logdir raises a subclass of UserError, with a message that names what is
wrong and how to fix it. trainer.py catches this one family, prints the
message without a traceback (`--debug` shows it) and exits with the error's
`exit_code`. Any other exception is a bug and keeps its traceback.
"""
import contextlib


class UserError(Exception):
  """A problem the user can fix; str(e) says what and how."""

  exit_code = 1
  prefix = 'ERROR: '


class ParamsError(UserError, ValueError):
  """A params value is invalid (still a ValueError, as params checks were)."""


@contextlib.contextmanager
def ParamsErrors():
  """Re-raises ValueError as ParamsError while building from params.

  Layers, tasks and input generators validate their params in their
  constructors and raise ValueError naming the field (the project's
  convention); inside this context that is a user error.
  """
  try:
    yield
  except UserError:
    raise
  except ValueError as e:
    raise ParamsError(str(e)) from e
