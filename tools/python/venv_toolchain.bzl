"""Repository rule for the Python toolchain that runs the project's .venv.

A generated repository because py_runtime's `stub_shebang` exists from Bazel 3
on: Bazel 4.2.3 (Debian) needs it (Debian has no `python` for the launcher's
default `#!/usr/bin/env python`), while Bazel 2.1.0 (npm) rejects it and gets
`python` from the venv through tools/bazelw instead.
"""

def _major(version):
    head = version.split(".")[0]
    if head.isdigit():
        return int(head)
    return None  # Debian's build reports "no_version": a recent Bazel.

def _venv_python_repo_impl(rctx):
    major = _major(rctx.attr.bazel_version)
    shebang = ""
    if major == None or major >= 3:
        shebang = '    stub_shebang = "#!/usr/bin/env python3",\n'
    rctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % rctx.name)
    rctx.file("BUILD", """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "venv_py3",
    interpreter = "@//tools/python:venv_python3.sh",
    python_version = "PY3",
%s)

py_runtime_pair(
    name = "venv_runtime_pair",
    py3_runtime = ":venv_py3",
)

toolchain(
    name = "toolchain",
    toolchain = ":venv_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""" % shebang)

_venv_python_repo = repository_rule(
    implementation = _venv_python_repo_impl,
    attrs = {"bazel_version": attr.string()},
)

def venv_python_toolchain(name):
    """Declares @<name> with the toolchain; register @<name>//:toolchain."""
    _venv_python_repo(name = name, bazel_version = native.bazel_version)
