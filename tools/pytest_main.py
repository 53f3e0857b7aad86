"""Bazel entry point of every gpipe_py_test target: runs pytest on one module.

Bazel runs a py_test's `main` as a script, while our test modules are plain
pytest files; tools/pytest.bzl passes the module path (and any `-m` filter)
as arguments. The working directory is the workspace root in the runfiles
tree, so pytest finds pytest.ini and tests/conftest.py there.
"""
import os
import sys

_ALLOW_EMPTY = '--gpipe-allow-empty'


def main(argv):
  # Python put this file's directory (tools/) first on sys.path; the tests
  # must import project modules from the workspace root, as under pytest.
  # (Python adds the resolved directory: the source tree's tools/.)
  here = {os.path.dirname(os.path.abspath(__file__)),
          os.path.dirname(os.path.realpath(__file__))}
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') not in here]
  sys.dont_write_bytecode = True  # The runfiles tree is not ours to write.
  # Bazel runs tests without HOME; give libraries that keep caches there
  # (matplotlib, TFDS) the test's private scratch directory instead.
  # Python subprocesses of a test (e.g. `python trainer.py`) import from the
  # runfiles tree on PYTHONPATH too, not from the script's resolved directory.
  os.environ.setdefault('PYTHONSAFEPATH', '1')
  scratch = os.environ.get('TEST_TMPDIR')
  if scratch:
    os.environ.setdefault('HOME', scratch)
    os.environ.setdefault('MPLCONFIGDIR', os.path.join(scratch, 'matplotlib'))
  import pytest  # pylint: disable=g-import-not-at-top

  allow_empty = _ALLOW_EMPTY in argv
  args = [a for a in argv if a != _ALLOW_EMPTY]
  if os.environ.get('XML_OUTPUT_FILE'):
    args += ['--junitxml', os.environ['XML_OUTPUT_FILE']]
  code = pytest.main(args)
  if code == pytest.ExitCode.NO_TESTS_COLLECTED and allow_empty:
    return 0
  return int(code)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
