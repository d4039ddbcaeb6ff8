#!/usr/bin/env bash
# The README test command: set up what is missing, then lint, then every test (vitest, then pytest).
# Each runner prints its own summary; the exit code is non-zero if any step failed.
#   npm test
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh || exit 1

status=0
run() {
  printf '\n=== %s\n' "$*"
  "$@" || { status=1; printf '=== FAILED: %s\n' "$*"; }
}
run npm run --silent lint
run npx vitest run
# -n 2: two test processes (pytest-xdist), a file each at a time (--dist loadfile keeps a file's module fixtures in one
# process): most of these tests use one core, and the machine has two.
# --durations: the slowest tests, so a suite that grows slower says where (target: the whole suite well under 30 min).
run python-worker/.venv/bin/pytest python-worker -q -n 2 --dist loadfile --durations=15
exit $status
