"""gpipe_py_test: one Bazel py_test target per pytest module.

Test modules are plain pytest files; every target made here runs
//tools:pytest_main.py, which calls pytest on the module. Modules with tests
marked @pytest.mark.slow are split so that `--test_tag_filters=-slow` (or
`--config=fast`) still runs their fast tests:

  slow = "none"  one target, the whole module (no slow tests in it);
  slow = "some"  NAME runs `-m "not slow"`, NAME_slow runs `-m slow` and is
                 tagged "slow";
  slow = "all"   one target tagged "slow" (every test in it is slow).

tools/check_build.py (run by tests/test_bazel_build.py) checks that the value
matches the module, and that deps cover the module's project imports.

ci = True adds the tag "ci": CI (tools/bazel_ci.sh) runs only targets tagged
"ci" and not "slow", because `make test` has already run every test with
pytest there. Keep that set to cheap modules; the rest run with
`bazel test //...`.

This file is also read by tools/check_build.py as Python: keep to the common
subset of Starlark and Python.
"""

_RUNNER = "//tools:pytest_main.py"

# Every test module runs with tests/conftest.py (and other non-test files of
# tests/) and the pytest.ini at the root (markers, options).
_COMMON_DEPS = ["//tests:test_support"]
_COMMON_DATA = ["//:pytest.ini"]

def gpipe_py_test(
        name,
        srcs = None,
        deps = [],
        data = [],
        slow = "none",
        ci = False,
        size = "medium",
        slow_size = "large",
        tags = [],
        **kwargs):
    """Declares the py_test target(s) for one pytest module (see above)."""
    if slow not in ("none", "some", "all"):
        fail("gpipe_py_test(name = \"%s\"): slow must be \"none\", \"some\" or \"all\", got %r" % (name, slow))
    if ci:
        tags = tags + ["ci"]
    if srcs == None:
        srcs = [name + ".py"]
    if len(srcs) != 1:
        fail("gpipe_py_test(name = \"%s\"): srcs must name exactly one test module" % name)
    module = srcs[0]
    path = module
    if native.package_name():
        path = native.package_name() + "/" + module
    common = dict(
        srcs = [module, _RUNNER],
        main = _RUNNER,
        deps = deps + _COMMON_DEPS,
        data = data + _COMMON_DATA,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
    if slow == "none":
        native.py_test(name = name, args = [path], size = size, tags = tags, **common)
    elif slow == "all":
        native.py_test(name = name, args = [path], size = slow_size, tags = tags + ["slow"], **common)
    else:
        # The fast half may find nothing to run if every test became slow.
        native.py_test(
            name = name,
            # Bazel splits args like a shell: quote the marker expression.
            args = [path, "-m", "'not slow'", "--gpipe-allow-empty"],
            size = size,
            tags = tags,
            **common
        )
        native.py_test(
            name = name + "_slow",
            args = [path, "-m", "slow"],
            size = slow_size,
            tags = tags + ["slow"],
            **common
        )
