#!/bin/sh
# Interpreter of the Bazel Python toolchain: runs the project's .venv Python.
# Bazel calls this through a symlink in the runfiles tree; resolving it finds
# the source tree, whose .venv (ignored by Bazel) holds TensorFlow and friends.
self="$(readlink -f "$0")"
root="$(cd "$(dirname "$self")/../.." && pwd)"
py="$root/.venv/bin/python3"
if [ ! -x "$py" ]; then
  echo "venv_python3.sh: $py is missing; run 'make venv' in $root first" >&2
  exit 1
fi
# -P (Python 3.11+): do not put the main script's directory on sys.path.
# Python would resolve the script's runfiles symlink and add its directory in
# the source tree, so undeclared modules would import from there. Bazel's
# launcher already puts the runfiles tree on PYTHONPATH.
exec "$py" -P "$@"
