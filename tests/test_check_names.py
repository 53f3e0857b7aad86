"""No function reads a name that nothing defines (tools/check_names.py).

The benchmarks are not run by tests and print their tables only after
tens of minutes; a name a rename left behind would fail them at the end.
"""
import os
import textwrap

from tools import check_names

# Under Bazel this file is a symlink in the runfiles tree; the check reads
# the whole source tree behind it.
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def testNoSourceFileReadsAnUndefinedName():
  files = check_names.SourceFiles(ROOT)
  assert os.path.join(ROOT, 'bench', 'autoplan_bench.py') in files
  problems = []
  for path in files:
    with open(path, encoding='utf-8') as f:
      problems += [f'{os.path.relpath(path, ROOT)}: {scope} reads {name}'
                   for scope, name in check_names.Undefined(f.read(), path)]
  assert not problems, '\n'.join(problems)


def testAnImportInsideOneFunctionIsNotSeenInAnother():
  source = textwrap.dedent('''
      import json
      LIMIT = 3

      def Plan():
        from os import path as path_lib
        return path_lib.join('a', 'b')

      def Row(points):
        return [path_lib.basename(p) for p in points[:LIMIT]], json

      class Table:
        width = 2

        def Cells(self):
          return width
      ''')
  found = check_names.Undefined(source)
  # (Python 3.12 folds a comprehension into its function's scope.)
  assert [(scope.split('.')[0], name) for scope, name in found] == [
      ('Row', 'path_lib'), ('Table', 'width')], found
