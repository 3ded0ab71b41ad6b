#!/usr/bin/env bash
# The test suite as `make test` runs it: two pytest processes side by side.
#
# - the tests marked `wallclock` (tests/e2e/test_faults.py: a real `for: 2m` alert, a 60 s read timeout) in
#   one process: they sleep minutes and use little CPU;
# - everything else on two xdist workers (--dist loadgroup: the end-to-end modules share one loopback fleet
#   per xdist group, see tests/e2e; the rest is spread test by test).
#
# Inside the xdist run the sleepers held a worker for ~5 of ~12 minutes while the other did the CPU work
# alone; beside it they cost the two cores almost nothing. Extra pytest arguments go to both runs.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTEST=${PYTEST:-.venv/bin/pytest}

side_log=$(mktemp)
trap 'rm -f "$side_log"' EXIT
# No cache plugin: the two runs would both write .pytest_cache.
"$PYTEST" -q -m wallclock -p no:cacheprovider "$@" >"$side_log" 2>&1 &
side=$!

"$PYTEST" -q -n 2 --dist loadgroup -m "not wallclock" "$@"
main_status=$?

wait "$side"
side_status=$?
echo "---- wallclock tests (run beside the above) ----"
cat "$side_log"
# 5 is pytest's "no tests collected": arguments that select no wallclock test (or only those) are fine.
for status in "$main_status" "$side_status"; do
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
done
