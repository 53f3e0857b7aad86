"""Counts passed and failed tests from a Bazel build event file.

Bazel's own summary is not a pytest-style line, so CI (tools/bazel_ci.sh)
prints one of its own: `bazel: N passed, M failed`. Usage:

  bazel test --build_event_json_file=events.json //...
  python tools/bazel_summary.py events.json
"""
import json
import sys

# Statuses counted as passing; every other test status is a failure.
PASSING = ('PASSED', 'FLAKY')


def Count(lines):
  """(passed labels, failed labels) from the lines of a JSON event file."""
  status = {}
  test_targets = set()
  unbuilt = set()
  for line in lines:
    line = line.strip()
    if not line:
      continue
    event = json.loads(line)
    ident = event.get('id', {})
    if 'targetConfigured' in ident:
      kind = event.get('configured', {}).get('targetKind', '')
      if kind.endswith('_test rule'):
        test_targets.add(ident['targetConfigured']['label'])
    elif 'testSummary' in ident:
      status[ident['testSummary']['label']] = (
          event.get('testSummary', {}).get('overallStatus', 'NO_STATUS'))
    elif 'targetCompleted' in ident:
      label = ident['targetCompleted']['label']
      if not event.get('completed', {}).get('success', False):
        unbuilt.add(label)
  passed = sorted(l for l, s in status.items() if s in PASSING)
  failed = sorted(l for l, s in status.items() if s not in PASSING)
  # A test target that failed to build has no test summary.
  failed += sorted((unbuilt & test_targets) - set(status))
  return passed, failed


def main(argv):
  if len(argv) != 1:
    print(__doc__, file=sys.stderr)
    return 2
  with open(argv[0]) as f:
    passed, failed = Count(f)
  for label in failed:
    print('bazel: FAILED %s' % label)
  print('bazel: %d passed, %d failed' % (len(passed), len(failed)))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
