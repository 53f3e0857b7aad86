"""The Bazel BUILD files cover every package, module and test, honestly.

Fails when someone adds a package, module or tests/test_*.py without the
matching BUILD lines; the failure message lists what to add (the same as
`python tools/check_build.py`). Runs with plain pytest and under Bazel.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tools import check_build

# Under Bazel this file is a symlink in the runfiles tree, which holds only
# this target's inputs; the check needs the whole source tree behind it.
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def testRepositoryBuildFilesAreComplete():
  assert os.path.exists(os.path.join(ROOT, 'WORKSPACE')), ROOT
  problems = check_build.Check(ROOT)
  assert not problems, (
      'The BUILD files are incomplete (fix, then rerun '
      '`python tools/check_build.py`):\n' + '\n'.join(problems))


def testProjectModulesComeFromBazelRunfiles():
  """Under Bazel, imports must resolve inside the sandboxed runfiles tree."""
  runfiles = os.environ.get('TEST_SRCDIR')
  if not runfiles:
    pytest.skip('only meaningful under `bazel test`')
  import gpipe_lingvo  # pylint: disable=g-import-not-at-top
  assert os.path.abspath(gpipe_lingvo.__file__).startswith(
      os.path.abspath(runfiles) + os.sep), gpipe_lingvo.__file__
  assert os.path.abspath(check_build.__file__).startswith(
      os.path.abspath(runfiles) + os.sep), check_build.__file__


def testTrainerBinaryFindsRegisteredModels():
  """//:trainer lists //params models, which it imports by name only."""
  if os.environ.get('TEST_SRCDIR'):
    # Bazel's launcher of the py_binary (data of this test) sets up the
    # binary's own runfiles; running trainer.py directly would import from
    # the source tree, where Python resolves the script's symlink.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [os.path.join(here, 'trainer')]
  else:
    command = [sys.executable, os.path.join(ROOT, 'trainer.py')]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run(command + ['--list_models'], capture_output=True,
                       text=True, timeout=300, env=env, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'digits.ConvNet' in out.stdout.split(), out.stdout


# -- the checker itself, on small synthetic repositories ----------------------


def _Write(root, files):
  for path, text in files.items():
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'w') as f:
      f.write(textwrap.dedent(text))


def _MiniRepo(tmp_path, files):
  """A complete little workspace (library, test) plus `files` on top."""
  root = str(tmp_path / 'repo')
  base = {
      'WORKSPACE': 'workspace(name = "mini")\n',
      'pytest.ini': '[pytest]\n',
      'BUILD': 'exports_files(["pytest.ini"])\n',
      'tools/BUILD': 'exports_files(["pytest_main.py"])\n',
      'tools/pytest_main.py': 'import pytest\n',
      'lib/__init__.py': '',
      'lib/core.py': 'import os\n',
      'lib/BUILD': 'py_library(name = "lib", srcs = glob(["*.py"]))\n',
      'tests/__init__.py': '',
      'tests/conftest.py': 'import sys\n',
      'tests/test_core.py': """\
          from lib import core

          def test_core():
            assert core
          """,
      'tests/BUILD': """\
          load("//tools:pytest.bzl", "gpipe_py_test")
          py_library(name = "test_support", srcs = ["__init__.py", "conftest.py"])
          gpipe_py_test(name = "test_core", deps = ["//lib"])
          """,
  }
  base.update(files)
  _Write(root, {k: v for k, v in base.items() if v is not None})
  shutil.copy(os.path.join(ROOT, 'tools', 'pytest.bzl'),
              os.path.join(root, 'tools', 'pytest.bzl'))
  return root


def testCheckerAcceptsACompleteRepository(tmp_path):
  assert check_build.Check(_MiniRepo(tmp_path, {})) == []


def testCheckerReportsATestModuleWithoutTarget(tmp_path):
  root = _MiniRepo(tmp_path, {'tests/test_new.py': """\
      from lib import core

      @pytest.mark.slow
      def test_slow():
        assert core
      """})
  problems = check_build.Check(root)
  assert len(problems) == 1, problems
  # The message carries a ready-made stanza with the deps and slow setting.
  assert 'tests/test_new.py has no py_test target' in problems[0]
  assert 'name = "test_new"' in problems[0]
  assert 'deps = ["//lib"]' in problems[0]
  assert 'slow = "all"' in problems[0]


def testCheckerReportsAMissingDep(tmp_path):
  root = _MiniRepo(tmp_path, {'tests/BUILD': """\
      load("//tools:pytest.bzl", "gpipe_py_test")
      py_library(name = "test_support", srcs = ["__init__.py", "conftest.py"])
      gpipe_py_test(name = "test_core")
      """})
  problems = check_build.Check(root)
  assert any('tests/test_core.py:1 imports lib.core: add "//lib"' in p
             for p in problems), problems


def testCheckerReportsAPackageWithoutBuildFile(tmp_path):
  root = _MiniRepo(tmp_path, {'extra/__init__.py': '',
                              'extra/mod.py': 'from lib import core\n',
                              'tool.py': 'import extra\n'
                                         "if __name__ == '__main__': pass\n"})
  problems = check_build.Check(root)
  # The package gets a ready stanza, with deps from its modules' imports.
  assert any('Python package extra/ has no BUILD file' in p and
             'name = "extra"' in p and 'deps = ["//lib"]' in p
             for p in problems), problems
  # A script outside packages gets a py_binary, whose dep on the package
  # uses the label the package's BUILD file will have.
  assert any('tool.py is in no Python target' in p and 'py_binary(' in p and
             'deps = ["//extra"]' in p for p in problems), problems


def testCheckerReportsSlowTestsInTheFastSubset(tmp_path):
  root = _MiniRepo(tmp_path, {'tests/test_core.py': """\
      import pytest
      from lib import core

      def test_fast():
        assert core

      @pytest.mark.slow
      def test_slow():
        assert core
      """})
  problems = check_build.Check(root)
  assert any('set slow = "some"' in p for p in problems), problems


def testCheckerAcceptsSplitSlowModule(tmp_path):
  root = _MiniRepo(tmp_path, {
      'tests/test_core.py': """\
          import pytest
          from lib import core

          def test_fast():
            assert core

          @pytest.mark.slow
          def test_slow():
            assert core
          """,
      'tests/BUILD': """\
          load("//tools:pytest.bzl", "gpipe_py_test")
          py_library(name = "test_support", srcs = ["__init__.py", "conftest.py"])
          gpipe_py_test(name = "test_core", deps = ["//lib"], slow = "some")
          """})
  assert check_build.Check(root) == []


def testCheckerReportsACycleAndSuggestsTheWayOut(tmp_path):
  root = _MiniRepo(tmp_path, {
      'lib/core.py': 'from lib.sub import leaf\n',
      'lib/sub/__init__.py': '',
      'lib/sub/leaf.py': 'from lib import other\n',
      'lib/other.py': '',
      'lib/sub/BUILD': 'py_library(name = "sub", srcs = glob(["*.py"]), '
                       'deps = ["//lib"])\n'})
  problems = check_build.Check(root)
  assert any('lib/core.py:1 imports lib.sub.leaf' in p and 'cycle' in p
             for p in problems), problems


def testCheckerKnowsModelRegistryNeedsParams(tmp_path):
  root = _MiniRepo(tmp_path, {
      'gpipe_lingvo/__init__.py': '',
      'gpipe_lingvo/model_registry.py': 'import importlib\n',
      'gpipe_lingvo/BUILD': 'py_library(name = "gpipe_lingvo", '
                            'srcs = glob(["*.py"]))\n',
      'params/__init__.py': '',
      'params/BUILD': 'py_library(name = "params", srcs = glob(["*.py"]))\n',
      'tests/test_core.py': """\
          from gpipe_lingvo import model_registry

          def test_registry():
            assert model_registry
          """,
      'tests/BUILD': """\
          load("//tools:pytest.bzl", "gpipe_py_test")
          py_library(name = "test_support", srcs = ["__init__.py", "conftest.py"])
          gpipe_py_test(name = "test_core", deps = ["//gpipe_lingvo"])
          """})
  problems = check_build.Check(root)
  assert len(problems) == 1, problems
  assert 'imports params modules by name' in problems[0], problems
  assert 'add "//params"' in problems[0], problems


def testCheckerReportsANamedFileMissingFromRunfiles(tmp_path):
  root = _MiniRepo(tmp_path, {
      'run.py': 'import lib\n',
      'BUILD': """\
          exports_files(["pytest.ini"])
          py_binary(name = "run", srcs = ["run.py"], deps = ["//lib"])
          """,
      'tests/test_core.py': """\
          from lib import core

          def test_script():
            assert core and 'run.py'
          """})
  problems = check_build.Check(root)
  assert any('names run.py' in p and 'add "//:run"' in p
             for p in problems), problems


# -- CI's count line -----------------------------------------------------------


def _Event(kind, label, **payload):
  import json  # pylint: disable=g-import-not-at-top
  return json.dumps({'id': {kind: {'label': label}}, **payload})


def testSummaryCountsPassesFailuresAndUnbuiltTests():
  from tools import bazel_summary  # pylint: disable=g-import-not-at-top
  events = [
      _Event('targetConfigured', '//t:a', configured={'targetKind': 'py_test rule'}),
      _Event('targetConfigured', '//t:b', configured={'targetKind': 'py_test rule'}),
      _Event('targetConfigured', '//t:c', configured={'targetKind': 'py_test rule'}),
      _Event('targetConfigured', '//t:d', configured={'targetKind': 'py_test rule'}),
      _Event('targetConfigured', '//t:lib', configured={'targetKind': 'py_library rule'}),
      _Event('targetCompleted', '//t:lib', completed={'success': False}),
      _Event('targetCompleted', '//t:c', completed={'success': False}),
      _Event('testSummary', '//t:a', testSummary={'overallStatus': 'PASSED'}),
      _Event('testSummary', '//t:b', testSummary={'overallStatus': 'TIMEOUT'}),
      '',
  ]
  passed, failed = bazel_summary.Count(events)
  # //t:d was filtered out (no summary, built fine): neither count.
  assert passed == ['//t:a']
  assert failed == ['//t:b', '//t:c']
