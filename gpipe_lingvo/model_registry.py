"""Registry of model params classes, keyed Lingvo-style.

The key of a class defined in `params/digits.py` is `digits.ConvNet`: the
module path below the `params` package plus the class name.
"""
import difflib
import importlib
import pkgutil

from gpipe_lingvo import errors

_REGISTRY = {}
_PARAMS_PACKAGE = 'params'


class ModelNotFoundError(errors.UserError, KeyError):
  """Unknown model name; the message lists the closest registered names."""

  def __str__(self):
    return self.args[0]


def _Key(cls):
  module = cls.__module__
  prefix = _PARAMS_PACKAGE + '.'
  if module.startswith(prefix):
    module = module[len(prefix):]
  elif module == '__main__' or '.' not in module:
    module = module.rsplit('.', 1)[-1]
  return f'{module}.{cls.__name__}'


def RegisterSingleTaskModel(cls):
  """Class decorator: registers a SingleTaskModelParams subclass."""
  key = _Key(cls)
  if key in _REGISTRY and _REGISTRY[key] is not cls:
    raise ValueError(f'Model {key!r} is registered twice '
                     f'({_REGISTRY[key].__module__} and {cls.__module__}).')
  _REGISTRY[key] = cls
  cls.REGISTRY_KEY = key
  return cls


def ImportAllParams():
  """Imports every module under params/ so their decorators run."""
  pkg = importlib.import_module(_PARAMS_PACKAGE)
  for info in pkgutil.walk_packages(pkg.__path__, _PARAMS_PACKAGE + '.'):
    importlib.import_module(info.name)


def GetAllRegisteredClasses():
  ImportAllParams()
  return dict(sorted(_REGISTRY.items()))


def GetClass(name):
  """Returns the registered class for `name` or raises ModelNotFoundError."""
  if name not in _REGISTRY:
    module = name.rsplit('.', 1)[0] if '.' in name else ''
    if module:
      try:
        importlib.import_module(f'{_PARAMS_PACKAGE}.{module}')
      except ModuleNotFoundError:
        pass
  if name not in _REGISTRY:
    ImportAllParams()
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
    hint = (f' Did you mean: {", ".join(close)}?' if close else '')
    raise ModelNotFoundError(
        f'Unknown model {name!r}.{hint} Run `trainer.py --list_models` for '
        f'all {len(_REGISTRY)} registered models.')
  return _REGISTRY[name]


def GetParams(name, dataset='Train'):
  """Model params instance of `name` (its Task() with input for dataset)."""
  del dataset
  return GetClass(name)().Model()
