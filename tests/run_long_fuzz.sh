#!/usr/bin/env bash
# The long fuzz run: `pytest -m fuzz` again and again, a new Hypothesis seed each time, until
# MINUTES have passed (default 30); one line per round in fuzz_long.log, each round's output kept.
#   bash tests/run_long_fuzz.sh [MINUTES] [EXAMPLES_PER_TEST_PER_ROUND]
set -uo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}" examples="${2:-400}" log="${FUZZ_LOG:-fuzz_long.log}"
end=$((SECONDS + 60 * minutes)) round=0 failed=0
while [ "$SECONDS" -lt "$end" ]; do
  round=$((round + 1))
  NPSHUFFLE_FUZZ=1 NPSHUFFLE_FUZZ_EXAMPLES="$examples" python -m pytest -q -m fuzz -p no:cacheprovider \
    --hypothesis-seed="$round" > "fuzz_round_$round.log" 2>&1 || failed=$((failed + 1))
  echo "round $round (seed $round, $examples examples per test) at ${SECONDS}s: $(tail -1 "fuzz_round_$round.log")" >> "$log"
done
echo "$round rounds in ${SECONDS}s, $failed failed" >> "$log"
[ "$failed" -eq 0 ]
