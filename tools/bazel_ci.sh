#!/usr/bin/env bash
# CI's Bazel step: installs Bazel if missing, builds every target and tests
# the CI subset (--config=ci: targets tagged "ci" and not "slow"; pytest has
# already run every test in `make test`), prints `bazel: N passed, M failed`
# and stops the Bazel server. BAZEL_TEST_FLAGS changes the selection, e.g.
# BAZEL_TEST_FLAGS=--config=fast for all fast targets, BAZEL_TEST_FLAGS= for all.
set -uo pipefail
cd "$(dirname "$0")/.."

make -s bazel-install venv || exit 1
PY=.venv/bin/python
events="$(mktemp -t bazel-events.XXXXXX.json)"
trap 'rm -f "$events"' EXIT

flags="${BAZEL_TEST_FLAGS---config=ci}"
# shellcheck disable=SC2086  # flags is a list of words.
tools/bazelw test $flags --build_event_json_file="$events" //...
rc=$?
tools/bazelw shutdown

"$PY" tools/bazel_summary.py "$events"
count_rc=$?
if [ "$rc" -ne 0 ] && [ "$count_rc" -eq 0 ]; then
  echo "bazel: bazel test exited with $rc before all tests could run" >&2
  exit "$rc"
fi
exit "$count_rc"
