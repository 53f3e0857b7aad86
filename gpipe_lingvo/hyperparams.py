"""The single import of Lingvo in this project: its hierarchical Params.

Lingvo's other modules load compiled ops that do not load on glibc 2.36, so
everything else (layers, engine, trainer) is our own; the Params system is
Lingvo's real one, so params text files and overrides behave as in Lingvo.
"""
import ast

from lingvo.core import hyperparams as _hyperparams

from gpipe_lingvo import errors

Params = _hyperparams.Params
# The value that lets the trainer choose a pipeline field (planning/auto.py).
AUTO = 'auto'
InstantiableParams = _hyperparams.InstantiableParams


class OverrideError(errors.UserError, ValueError):
  """A params override names a key that does not exist or has a bad value."""


def _KnownKeys(params):
  return sorted(k for k, _ in params.IterParams())


def _TypeOfNoneOverride(value):
  """Lingvo cannot parse a value for a param that is None (it silently keeps
  None for e.g. a path); give it the type of the literal written, or str."""
  try:
    v = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return 'str'
  if v is None:
    return None
  return type(v).__name__


def ApplyOverrides(params, text):
  """Applies 'a.b = v' / 'a.b : v' lines (';' or newline separated) to params.

  Raises OverrideError naming the unknown key and its parent's known keys,
  instead of Lingvo's bare AttributeError, so a typo is fixed in one try.
  """
  if not text:
    return params
  lines = []
  type_overrides = {}
  for chunk in text.replace(';', '\n').split('\n'):
    chunk = chunk.strip()
    if not chunk or chunk.startswith('#'):
      continue
    if ':' in chunk and ('=' not in chunk or chunk.index(':') < chunk.index('=')):
      key, value = chunk.split(':', 1)
    elif '=' in chunk:
      key, value = chunk.split('=', 1)
    else:
      raise OverrideError(
          f'Cannot parse override {chunk!r}: write "key = value", e.g. '
          '"task.learning_rate = 0.1".')
    key, value = key.strip(), value.strip()
    parent, parts = params, key.split('.')
    for i, part in enumerate(parts):
      known = _KnownKeys(parent) if isinstance(parent, Params) else []
      if not isinstance(parent, Params) or part not in known:
        where = '.'.join(parts[:i]) or '<root>'
        raise OverrideError(
            f'Unknown param {key!r}: {where!r} has no key {part!r}. '
            f'Known keys of {where!r}: {", ".join(known) or "(none)"}.')
      if i < len(parts) - 1:
        parent = parent.Get(part)
    if parent.Get(parts[-1]) is None and _TypeOfNoneOverride(value):
      type_overrides[key] = _TypeOfNoneOverride(value)
    elif value.strip('\'"') == AUTO:
      type_overrides[key] = 'str'  # 'auto' in an int field (num_stages)
    lines.append(f'{key} : {value}')
  try:
    params.FromText('\n'.join(lines), type_overrides=type_overrides)
  except Exception as e:  # Lingvo raises several types for bad values.
    raise OverrideError(f'Bad override value in {text!r}: {e}') from e
  return params
