#!/bin/bash
# A/B of two host binaries on the mongo_stream flood, in turns within one run, so a
# change to the event path reads as a ratio on this noisy shared machine. Build the
# bench first (`cargo bench -p oplet-benches --bench mongo_stream --no-run`), and the
# other host in a worktree of the commit to compare (copy target/release there first
# so only Oplet's own crates rebuild).
# Usage: benches/ab_mongo_stream.sh BASE_OPLET NEW_OPLET [EVENTS=100000] [ROUNDS=3]
set -euo pipefail
base=${1:?usage: $0 BASE_OPLET NEW_OPLET [EVENTS] [ROUNDS]}
new=${2:?usage: $0 BASE_OPLET NEW_OPLET [EVENTS] [ROUNDS]}
events=${3:-100000}
rounds=${4:-3}
cd "$(dirname "$0")/.."
bench=$(ls -t target/release/deps/mongo_stream-* | grep -v '\.d$' | head -1)
for round in $(seq 1 "$rounds"); do
  for which in base new; do
    bin=$base
    [ "$which" = new ] && bin=$new
    echo "== $which, round $round, load $(cut -d' ' -f1-3 /proc/loadavg)"
    OPLET_TEST_BIN=$bin "$bench" "$events" 10 500 2>&1 | grep -E "throughput|CPU time per event|Floor|by thread, throughput" | grep -v "^| latency" || true
  done
done
