"""Reports names a function reads that no scope defines.

The benchmarks run for tens of minutes and print their tables at the end;
no test runs them whole, so a name left undefined by a rename (an import
moved into one function and still used in another) fails only at the end
of a long run. Python's own symbol tables (the `symtable` module) say which
names a scope reads as globals; each must be bound at module level or be a
builtin. Usage: python tools/check_names.py [FILE...] (default: every .py
file of the repository; exit 1 on findings).
"""
import builtins
import os
import sys
import symtable
from typing import Iterator, List, Set, Tuple

_ALWAYS = set(dir(builtins)) | {'__file__', '__builtins__', '__spec__',
                                '__loader__', '__path__'}


def _ModuleNames(table: symtable.SymbolTable) -> Set[str]:
  return {s.get_name() for s in table.get_symbols()
          if s.is_assigned() or s.is_imported() or s.is_namespace()}


def _Scopes(table: symtable.SymbolTable, outer: str = ''
            ) -> Iterator[Tuple[str, symtable.SymbolTable]]:
  """(dotted name, table) of every scope below `table`."""
  for child in table.get_children():
    name = outer + child.get_name()
    yield name, child
    yield from _Scopes(child, name + '.')


def Undefined(source: str, path: str = '<source>') -> List[Tuple[str, str]]:
  """[(dotted scope name, name)] of globals read inside a scope but never bound
  at module level. A module that binds names dynamically (`import *`,
  globals() writes) can give false reports; none here does."""
  top = symtable.symtable(source, path, 'exec')
  known = _ModuleNames(top) | _ALWAYS
  found = []
  for where, scope in _Scopes(top):
    for s in scope.get_symbols():
      if (s.is_referenced() and s.is_global() and not s.is_assigned() and
          s.get_name() not in known):
        found.append((where, s.get_name()))
  return found


def SourceFiles(root: str) -> List[str]:
  """The repository's Python files (no virtual environment, no Bazel or
  hidden directories)."""
  out = []
  for d, subdirs, files in os.walk(root):
    subdirs[:] = sorted(s for s in subdirs if not s.startswith(('.', 'bazel-'))
                        and s != '__pycache__')
    out += [os.path.join(d, f) for f in sorted(files) if f.endswith('.py')]
  return out


def main(paths: List[str]) -> int:
  paths = paths or SourceFiles(
      os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
  bad = 0
  for path in paths:
    with open(path, encoding='utf-8') as f:
      for scope, name in Undefined(f.read(), path):
        print(f'{path}: {scope} reads {name!r}, which nothing defines')
        bad += 1
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
