"""Checks that the Bazel BUILD files cover the project's Python code honestly.

Run `python tools/check_build.py` after adding modules or tests: it prints
every problem with the line to add, and exits 1 if there is any. The checks:

  * every Python package (directory with __init__.py) has a BUILD file, and
    every .py file of the project is in the srcs of some Python target;
  * every tests/**/test_*.py module has a py_test (tools/pytest.bzl's
    gpipe_py_test), whose `slow` setting matches its @pytest.mark.slow tests;
  * every import of a project module, in any target's sources, is provided by
    the target itself or one of its direct deps (strict deps, as in Lingvo),
    and the packages' __init__.py files are in the target's runfiles;
  * file paths a test names in string literals (e.g. 'trainer.py') are in its
    runfiles;
  * deps name existing targets and the target graph has no cycle.

BUILD and .bzl files are read by executing them as Python with stand-ins for
Bazel's rules (Starlark is close enough for the files of this project), so
the check needs neither Bazel nor TensorFlow. tests/test_bazel_build.py runs
it on the repository.
"""
import argparse
import ast
import fnmatch
import os
import sys

PY_RULES = ('py_library', 'py_binary', 'py_test')
BUILD_NAMES = ('BUILD.bazel', 'BUILD')
WORKSPACE_NAMES = ('WORKSPACE', 'WORKSPACE.bazel')
RUNNER = 'tools/pytest_main.py'

# Modules that import others by name at run time, which no import statement
# shows: a target whose sources import the key needs the value's package in
# its runfiles (model_registry looks registered models up in params.*).
RUNTIME_IMPORTS = {
    'gpipe_lingvo/model_registry.py': 'params/__init__.py',
}
ALWAYS_SKIPPED_DIRS = {'.git', '.venv', '__pycache__', '.pytest_cache'}


class BuildError(Exception):
  """A BUILD or .bzl file could not be read."""


class Target:
  """One rule instance, with labels normalised to //pkg:name."""

  def __init__(self, kind, package, attrs, where):
    self.kind = kind
    self.package = package
    self.name = attrs['name']
    self.label = '//%s:%s' % (package, self.name)
    self.attrs = attrs
    self.where = where
    self.srcs = []  # Repository-relative files, filled in by _Resolve.
    self.deps = [Normalise(l, package) for l in attrs.get('deps', [])]
    self.data = [Normalise(l, package) for l in attrs.get('data', [])]
    self.tags = list(attrs.get('tags', []))
    self.args = list(attrs.get('args', []))

  def __repr__(self):
    return self.label

  @property
  def macro_label(self):
    """The label to name in messages: the gpipe_py_test, for its _slow half."""
    if (self.kind == 'py_test' and self.name.endswith('_slow') and
        self.args[1:3] == ['-m', 'slow']):
      return self.label[:-len('_slow')]
    return self.label


def Normalise(label, package):
  """'//a/b' -> '//a/b:b', ':x' and 'x' -> '//package:x'."""
  if label.startswith('@'):
    if label.startswith('@//'):
      label = label[1:]
    else:
      return label
  if label.startswith('//'):
    if ':' in label:
      return label
    return '%s:%s' % (label, label.rstrip('/').split('/')[-1])
  if label.startswith(':'):
    label = label[1:]
  return '//%s:%s' % (package, label)


def LabelToPath(label):
  """'//a/b:c.py' -> 'a/b/c.py' (a path relative to the repository)."""
  package, name = label[2:].split(':', 1)
  return '%s/%s' % (package, name) if package else name


def PathToLabel(path):
  package, name = os.path.split(path)
  return '//%s:%s' % (package, name)


def ShortLabel(label):
  """'//a/b:b' -> '//a/b', the way BUILD files usually spell it."""
  package, name = label[2:].split(':', 1)
  if package and package.split('/')[-1] == name:
    return '//' + package
  return label


class Repo:
  """The source tree: files, BUILD targets and what each one imports."""

  def __init__(self, root):
    self.root = os.path.abspath(root)
    self.problems = []
    self.targets = {}  # label -> Target
    self.files = set()  # repository-relative paths of all files seen
    self.packages = set()  # directories with a BUILD file
    self.py_files = []
    self.ignored = self._ReadBazelIgnore()
    self._Walk()
    for package in sorted(self.packages):
      self._LoadBuild(package)
    for target in self.targets.values():
      self._Resolve(target)
    self.owners = {}  # file -> [Target] whose srcs hold it
    for target in self.targets.values():
      if target.kind in PY_RULES:
        for f in target.srcs:
          self.owners.setdefault(f, []).append(target)

  # -- reading the tree ------------------------------------------------------

  def _ReadBazelIgnore(self):
    path = os.path.join(self.root, '.bazelignore')
    if not os.path.exists(path):
      return set()
    with open(path) as f:
      return {l.strip().strip('/') for l in f
              if l.strip() and not l.startswith('#')}

  def _Walk(self):
    for dirpath, dirnames, filenames in os.walk(self.root):
      rel = os.path.relpath(dirpath, self.root)
      rel = '' if rel == '.' else rel
      keep = []
      for d in sorted(dirnames):
        sub = os.path.join(rel, d) if rel else d
        full = os.path.join(dirpath, d)
        if (d in ALWAYS_SKIPPED_DIRS or d.startswith('bazel-') or
            sub in self.ignored or os.path.islink(full) or
            any(os.path.exists(os.path.join(full, w))
                for w in WORKSPACE_NAMES)):
          continue  # Not ours, or another Bazel repository.
        keep.append(d)
      dirnames[:] = keep
      for name in filenames:
        path = os.path.join(rel, name) if rel else name
        self.files.add(path)
        if name.endswith('.py'):
          self.py_files.append(path)
        if name in BUILD_NAMES:
          self.packages.add(rel)
    self.py_files.sort()

  def _BuildFile(self, package):
    for name in BUILD_NAMES:
      path = os.path.join(package, name) if package else name
      if path in self.files:
        return path
    return None

  def _LoadBuild(self, package):
    build = self._BuildFile(package)
    env = _Environment(self, package)
    try:
      env.ExecFile(build)
    except BuildError as e:
      self.problems.append(str(e))

  def _Resolve(self, target):
    for src in target.attrs.get('srcs', []):
      label = Normalise(src, target.package)
      if label.startswith('@'):
        continue
      if label in self.targets:
        target.srcs.extend(self.targets[label].srcs or [])
        continue
      path = LabelToPath(label)
      if path in self.files:
        target.srcs.append(path)
      else:
        self.problems.append('%s (%s): source %r does not exist.'
                             % (target.label, target.where, src))

  # -- queries ---------------------------------------------------------------

  def Exists(self, label):
    if label.startswith('@'):
      return True
    return label in self.targets or LabelToPath(label) in self.files

  def Runfiles(self, target, _seen=None):
    """Files a target brings into the runfiles tree (srcs, data, deps)."""
    seen = set() if _seen is None else _seen
    if target.label in seen:
      return set()
    seen.add(target.label)
    files = set(target.srcs)
    for label in target.deps + target.data:
      if label in self.targets:
        files |= self.Runfiles(self.targets[label], seen)
      elif not label.startswith('@'):
        files.add(LabelToPath(label))
    return files

  def DependsOn(self, target, label, _seen=None):
    """Whether `label` is in the transitive deps of `target`."""
    seen = set() if _seen is None else _seen
    for dep in target.deps:
      if dep == label:
        return True
      if dep in self.targets and dep not in seen:
        seen.add(dep)
        if self.DependsOn(self.targets[dep], label, seen):
          return True
    return False

  def ModuleFile(self, module):
    """The project file `import module` loads, or None if not ours."""
    parts = module.split('.')
    for i in range(len(parts), 0, -1):
      base = '/'.join(parts[:i])
      for path in (base + '.py', base + '/__init__.py'):
        if path in self.files:
          return path
    return None


class _Native:
  """Stand-in for Starlark's `native` module, recording rule calls."""

  def __init__(self, env):
    self._env = env

  def package_name(self):
    return self._env.package

  def __getattr__(self, kind):
    if kind.startswith('_'):
      raise AttributeError(kind)
    return self._env.Rule(kind)


class _Environment:
  """Evaluates one package's BUILD file and the .bzl files it loads."""

  def __init__(self, repo, package):
    self.repo = repo
    self.package = package
    self.current_file = None

  def Rule(self, kind):
    def Record(**attrs):
      if 'name' not in attrs:
        raise BuildError('%s: %s() without a name.' % (self.current_file, kind))
      target = Target(kind, self.package, attrs, self.current_file)
      if target.label in self.repo.targets:
        raise BuildError('%s: target %s defined twice.'
                         % (self.current_file, target.label))
      self.repo.targets[target.label] = target
    return Record

  def Glob(self, include, exclude=(), exclude_directories=1, allow_empty=True):
    del exclude_directories, allow_empty
    prefix = self.package + '/' if self.package else ''
    out = []
    for path in sorted(self.repo.files):
      if not path.startswith(prefix):
        continue
      rel = path[len(prefix):]
      # A subdirectory with its own BUILD file is another package.
      parts = rel.split('/')
      if any(os.path.join(prefix, *parts[:i]) in self.repo.packages
             for i in range(1, len(parts))):
        continue
      if (any(_GlobMatch(rel, p) for p in include) and
          not any(_GlobMatch(rel, p) for p in exclude)):
        out.append(rel)
    return out

  def Globals(self):
    def Fail(msg, *unused):
      raise BuildError('%s: fail(): %s' % (self.current_file, msg))

    def Load(label, *symbols, **aliases):
      loaded = self.LoadBzl(label)
      for s in symbols:
        namespace[s] = loaded(s)
      for alias, s in aliases.items():
        namespace[alias] = loaded(s)

    def Package(**unused):
      pass

    namespace = {
        '__builtins__': __builtins__,
        'glob': self.Glob,
        'native': _Native(self),
        'fail': Fail,
        'load': Load,
        'package': Package,
        'select': lambda d, **unused: list(d.values())[0],
        'struct': lambda **kw: argparse.Namespace(**kw),
    }
    return namespace

  def LoadBzl(self, label):
    """Returns a lookup of the symbols a .bzl file defines."""
    if label.startswith('@') and not label.startswith('@//'):
      # An external repository: treat what it defines as plain rules.
      return lambda symbol: self.Rule(symbol)
    path = LabelToPath(Normalise(label, self.package))
    if path not in self.repo.files:
      raise BuildError('%s: load(%r): no such file.' % (self.current_file,
                                                         label))
    namespace = self.Globals()
    self._Exec(path, namespace)

    def Lookup(symbol):
      if symbol not in namespace:
        raise BuildError('%s: load(%r): %s does not define %s.'
                         % (self.current_file, label, path, symbol))
      return namespace[symbol]
    return Lookup

  def ExecFile(self, path):
    namespace = self.Globals()
    for kind in ('py_library', 'py_binary', 'py_test', 'py_runtime',
                 'toolchain', 'sh_binary', 'sh_library', 'sh_test',
                 'filegroup', 'test_suite', 'genrule', 'alias',
                 'config_setting'):
      namespace[kind] = self.Rule(kind)
    namespace['exports_files'] = lambda *unused, **unused_kw: None
    self._Exec(path, namespace)

  def _Exec(self, path, namespace):
    previous, self.current_file = self.current_file, path
    try:
      with open(os.path.join(self.repo.root, path)) as f:
        code = compile(f.read(), path, 'exec')
      exec(code, namespace)  # pylint: disable=exec-used
    except BuildError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise BuildError('%s: cannot be read as Python (%s: %s); keep BUILD '
                       'and .bzl files to the Starlark subset Python shares.'
                       % (path, type(e).__name__, e)) from e
    finally:
      self.current_file = previous


def _GlobMatch(path, pattern):
  if '**' in pattern:
    return fnmatch.fnmatchcase(path, pattern.replace('**/', '*'))
  return (path.count('/') == pattern.count('/') and
          fnmatch.fnmatchcase(path, pattern))


# -- what the sources say ------------------------------------------------------


def _Parse(repo, path):
  with open(os.path.join(repo.root, path), 'rb') as f:
    return ast.parse(f.read(), path)


def Imports(repo, path, tree):
  """[(project file, module name, line)] that the module at `path` imports."""
  package = os.path.dirname(path).replace('/', '.')
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        out.append((alias.name, node.lineno))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.') if package else []
        parts = parts[:len(parts) - (node.level - 1)]
        base = '.'.join(parts + ([base] if base else []))
      for alias in node.names:
        out.append((base + '.' + alias.name if base else alias.name,
                    node.lineno))
  resolved = []
  for module, line in out:
    f = repo.ModuleFile(module)
    if f and f != path:
      resolved.append((f, module, line))
  return resolved


def _IsSlowMark(node):
  """True for the expression `pytest.mark.slow` (or `mark.slow`)."""
  return (isinstance(node, ast.Attribute) and node.attr == 'slow' and
          isinstance(node.value, ast.Attribute) and node.value.attr == 'mark')


def _MarksSlow(node):
  return any(_IsSlowMark(n) for n in ast.walk(node))


def SlowInfo(tree):
  """(has slow tests, all tests slow) of a pytest module."""
  has_slow = _MarksSlow(tree)
  module_slow = False
  tests = []
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == 'pytestmark' for t in node.targets):
      module_slow = module_slow or _MarksSlow(node.value)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      if node.name.startswith('test'):
        tests.append(any(_MarksSlow(d) for d in node.decorator_list))
    elif isinstance(node, ast.ClassDef) and node.name.startswith('Test'):
      class_slow = any(_MarksSlow(d) for d in node.decorator_list) or any(
          isinstance(n, ast.Assign) and _MarksSlow(n.value) and any(
              isinstance(t, ast.Name) and t.id == 'pytestmark'
              for t in n.targets) for n in node.body)
      for item in node.body:
        if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and
            item.name.startswith('test')):
          tests.append(class_slow or
                       any(_MarksSlow(d) for d in item.decorator_list))
  all_slow = module_slow or (bool(tests) and all(tests))
  return has_slow, all_slow


def NamedFiles(repo, path, tree):
  """Project files (not modules) that a module names in string literals."""
  here = os.path.dirname(path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      s = node.value.strip()
      if not s or len(s) > 200 or '\n' in s or '.' not in s:
        continue
      for candidate in (s, os.path.normpath(os.path.join(here, s))):
        if candidate in repo.files and candidate != path:
          out.add((candidate, node.lineno))
  return out


# -- the checks ----------------------------------------------------------------


def _Suggest(repo, f):
  """The label to add to deps for file f.

  For a file in no target yet, the label its package's library will have by
  this project's convention (py_library named after the directory).
  """
  owners = repo.owners.get(f, [])
  libs = [t for t in owners if t.kind == 'py_library']
  best = (libs or owners)
  if best:
    return ShortLabel(best[0].label)
  d = os.path.dirname(f)
  if d and os.path.join(d, '__init__.py') in repo.files:
    return '//' + d
  return None


def _SuggestDeps(repo, paths, trees, exclude=()):
  deps = set()
  for path in paths:
    for f, _, _ in Imports(repo, path, trees[path]):
      if f in paths:
        continue
      for g in (f, RUNTIME_IMPORTS.get(f)):
        label = g and g in repo.files and _Suggest(repo, g)
        if label and label not in exclude:
          deps.add(label)
  return sorted(deps)


def _Stanza(rule, name, srcs, deps, extra=()):
  lines = ['%s(' % rule, '    name = "%s",' % name]
  if srcs:
    lines.append('    srcs = %s,' % srcs)
  if deps:
    lines.append('    deps = [%s],' % ', '.join('"%s"' % d for d in deps))
  lines.extend('    ' + e for e in extra)
  lines.append(')')
  return '\n'.join('      ' + l for l in lines)


def _StanzaForTest(repo, path, trees):
  name = os.path.splitext(os.path.basename(path))[0]
  deps = _SuggestDeps(repo, [path], trees, exclude={'//tests:test_support'})
  has_slow, all_slow = SlowInfo(trees[path])
  extra = []
  if has_slow:
    extra.append('slow = "%s",' % ('all' if all_slow else 'some'))
  data = sorted({_Suggest(repo, g) or ShortLabel(PathToLabel(g))
                 for g, _ in NamedFiles(repo, path, trees[path])})
  if data:
    extra.append('data = [%s],' % ', '.join('"%s"' % d for d in data))
  return _Stanza('gpipe_py_test', name, None, deps, extra)


def _CheckPackages(repo, problems, trees):
  init_dirs = sorted(os.path.dirname(f) for f in repo.py_files
                     if os.path.basename(f) == '__init__.py')
  reported = set()
  for d in init_dirs:
    if d not in repo.packages:
      reported.add(d)
      files = [f for f in repo.py_files if os.path.dirname(f) == d]
      problems.append(
          'Python package %s/ has no BUILD file; create %s/BUILD:\n'
          '      package(default_visibility = ["//visibility:public"])\n%s'
          % (d, d, _Stanza('py_library', os.path.basename(d),
                           'glob(["*.py"])',
                           _SuggestDeps(repo, files, trees))))
  for f in repo.py_files:
    package = os.path.dirname(f)
    if f in repo.owners or package in reported:
      continue
    if fnmatch.fnmatch(os.path.basename(f), 'test_*.py'):
      continue  # Reported by _CheckTests.
    name = os.path.splitext(os.path.basename(f))[0]
    stanza = _Stanza('py_binary' if '__main__' in _Names(trees[f])
                     else 'py_library', name, '["%s.py"]' % name,
                     _SuggestDeps(repo, [f], trees),
                     ['python_version = "PY3",'] if '__main__' in
                     _Names(trees[f]) else [])
    problems.append('%s is in no Python target; add to %s:\n%s'
                    % (f, repo._BuildFile(package) or  # pylint: disable=protected-access
                       os.path.join(package, 'BUILD'), stanza))


def _Names(tree):
  return {n.value for n in ast.walk(tree)
          if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _CheckTests(repo, problems, trees):
  for f in repo.py_files:
    base = os.path.basename(f)
    if not fnmatch.fnmatch(base, 'test_*.py') or not f.startswith('tests/'):
      continue
    tree = trees[f]
    tests = [t for t in repo.owners.get(f, []) if t.kind == 'py_test']
    if not tests:
      problems.append(
          '%s has no py_test target; add to %s:\n%s'
          % (f, repo._BuildFile(os.path.dirname(f)) or  # pylint: disable=protected-access
             os.path.dirname(f) + '/BUILD', _StanzaForTest(repo, f, trees)))
      continue
    has_slow, all_slow = SlowInfo(tree)
    slow_targets = [t for t in tests if 'slow' in t.tags]
    fast_targets = [t for t in tests if 'slow' not in t.tags]
    for t in tests:
      if Normalise(t.attrs.get('main') or '', t.package) != PathToLabel(
          RUNNER) or f not in t.args:
        problems.append('%s (%s) does not run %s through %s; declare it with '
                        'gpipe_py_test (tools/pytest.bzl).'
                        % (t.label, t.where, f, RUNNER))
    if not has_slow and slow_targets:
      problems.append(
          '%s is tagged slow but %s has no @pytest.mark.slow test: '
          'drop slow = ... from its gpipe_py_test, or the fast subset '
          '(--test_tag_filters=-slow) misses it.'
          % (', '.join(t.label for t in slow_targets), f))
    if has_slow:
      if not slow_targets:
        problems.append(
            '%s has @pytest.mark.slow tests but no target tagged slow: set '
            'slow = "%s" in its gpipe_py_test.'
            % (f, 'all' if all_slow else 'some'))
      unfiltered = [t for t in fast_targets
                    if not any('not slow' in a for a in t.args)]
      if unfiltered:
        problems.append(
            '%s runs the slow tests of %s in the fast subset: set slow = '
            '"%s" in its gpipe_py_test.'
            % (', '.join(t.label for t in unfiltered), f,
               'all' if all_slow else 'some'))
      if not all_slow and not fast_targets:
        problems.append(
            '%s has fast tests but every target of it is tagged slow, so the '
            'fast subset skips them: set slow = "some" in its gpipe_py_test.'
            % f)
    named = NamedFiles(repo, f, tree)
    for t in tests:
      runfiles = repo.Runfiles(t)
      for g, line in sorted(named):
        if g not in runfiles:
          owner = _Suggest(repo, g)
          problems.append(
              '%s:%d names %s, which is not in the runfiles of %s: add %s to '
              'its data (or deps).'
              % (f, line, g, t.macro_label, '"%s"' % owner if owner else
                 '"%s"' % ShortLabel(PathToLabel(g))))


def _CheckDeps(repo, problems, trees):
  for label in sorted(repo.targets):
    t = repo.targets[label]
    for dep in t.deps + t.data:
      if not repo.Exists(dep):
        problems.append('%s (%s) refers to %s, which does not exist.'
                        % (label, t.where, dep))
    if t.kind not in PY_RULES:
      continue
    provided = set(t.srcs)
    for dep in t.deps:
      if dep in repo.targets:
        provided |= set(repo.targets[dep].srcs)
    runfiles = repo.Runfiles(t)
    for src in t.srcs:
      if not src.endswith('.py') or src == RUNNER and t.kind == 'py_test':
        continue
      for f, module, line in Imports(repo, src, trees[src]):
        if f not in provided:
          owner = _Suggest(repo, f)
          if owner is None:
            problems.append('%s:%d imports %s, but %s is in no target.'
                            % (src, line, module, f))
            continue
          owner_label = Normalise(owner, '')
          msg = ('%s:%d imports %s: add "%s" to the deps of %s (%s)%s.'
                 % (src, line, module, owner, t.macro_label, t.where,
                    '' if f in repo.owners else
                    ' once %s has its BUILD file' % os.path.dirname(f)))
          if repo.targets.get(owner_label) and repo.DependsOn(
              repo.targets[owner_label], label):
            movers = _Importers(repo, t, src, trees)
            msg += (' %s already depends on %s, so that would be a cycle: '
                    'move %s to a target above both (for gpipe_lingvo/*.py, '
                    'list %s in _USES_SUBPACKAGES in gpipe_lingvo/BUILD).'
                    % (owner, ShortLabel(label),
                       ', '.join([src] + movers) if movers else src,
                       'them' if movers else 'it'))
          problems.append(msg)
          continue  # Adding that dep brings the __init__.py files too.
        needed = RUNTIME_IMPORTS.get(f)
        if needed and needed in repo.files and needed not in runfiles:
          problems.append(
              '%s:%d imports %s, which imports %s modules by name at run '
              'time: add "%s" to the deps of %s (%s).'
              % (src, line, module, os.path.dirname(needed),
                 _Suggest(repo, needed), t.macro_label, t.where))
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = f.split('/')[:-1]
        for i in range(1, len(parts) + 1):
          init = '/'.join(parts[:i]) + '/__init__.py'
          if init != f and init in repo.files and init not in runfiles:
            problems.append('%s: %s is not in the runfiles of %s (needed to '
                            'import %s); add "%s" to its deps.'
                            % (src, init, t.macro_label, module,
                               _Suggest(repo, init) or init))


def _Importers(repo, target, module, trees):
  """Sources of `target` that import `module`, directly or not: they have
  to move along with it."""
  found = set()
  todo = [module]
  while todo:
    m = todo.pop()
    for src in target.srcs:
      if src in found or src == module or not src.endswith('.py'):
        continue
      if any(f == m for f, _, _ in Imports(repo, src, trees[src])):
        found.add(src)
        todo.append(src)
  return sorted(found)


def _CheckCycles(repo, problems):
  state = {}

  def Visit(label, stack):
    state[label] = 'open'
    for dep in repo.targets[label].deps:
      if dep not in repo.targets:
        continue
      if state.get(dep) == 'open':
        cycle = stack[stack.index(dep):] + [dep]
        problems.append('dependency cycle: %s' % ' -> '.join(cycle))
      elif dep not in state:
        Visit(dep, stack + [dep])
    state[label] = 'done'

  for label in sorted(repo.targets):
    if label not in state:
      Visit(label, [label])


def Check(root):
  """Returns the list of problems found in the repository at `root`."""
  repo = Repo(root)
  problems = list(repo.problems)
  trees = {}
  for f in repo.py_files:
    try:
      trees[f] = _Parse(repo, f)
    except SyntaxError as e:
      problems.append('%s: cannot parse (%s).' % (f, e))
      trees[f] = ast.Module(body=[], type_ignores=[])
  _CheckPackages(repo, problems, trees)
  _CheckTests(repo, problems, trees)
  _CheckDeps(repo, problems, trees)
  _CheckCycles(repo, problems)
  # One message per problem, in a stable order.
  return sorted(set(problems))


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      'root', nargs='?',
      default=os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
      help='repository root (default: the one holding this script)')
  args = parser.parse_args(argv)
  problems = Check(args.root)
  for p in problems:
    print('- ' + p)
  if problems:
    print('check_build: %d problem(s) in the BUILD files' % len(problems))
    return 1
  print('check_build: BUILD files cover every package, module and test')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
