#!/usr/bin/env bash
# Start time and peak RSS of `oplet run` over a 1M-record audit file (issue 9, item 4).
# Usage: scripts/bench-audit-start.sh OPLET_BINARY [RECORDS]
# Runs the host on an empty JSON-lines source (so the run is the start plus a stop)
# three ways: an empty state_dir (the floor), a 1M-record file from an older host
# (no mark: read once in full), and a 1M-record file whose mark leaves the last
# 1,000 records to replay (the steady state). Prints wall time and max RSS per case.
set -euo pipefail
bin=$(realpath "$1")
n=${2:-1000000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
mkdir plugins
: > empty.jsonl
python3 - "$n" <<'PY'
import json, sys
n = int(sys.argv[1])
with open('old.jsonl', 'w') as old, open('new.jsonl', 'w') as new:
    mark = 0
    for i in range(1, n + 1):
        rec = {"op": "insert", "ns": "app.orders", "id": i, "status": "paid"}
        key = f"audit-log:events:{i}:0"
        old.write(json.dumps({"event_id": f"events:{i}", "key": key, "plugin": "audit-log", "record": rec,
                              "seq": i, "source": "events", "time_ms": 1700000000000 + i}, separators=(',', ':')) + "\n")
        line = ('{"key":%s,"checkpoint":"events","unsaved":%d,"plugin":"audit-log","source":"events","seq":%d,'
                '"event_id":"events:%d","time_ms":%d,"record":%s}\n') % (json.dumps(key), 1 if i > n - 1000 else 0, i, i,
                1700000000000 + i, json.dumps(rec, separators=(',', ':')))
        new.write(line)
        if i == n - 1000:
            mark = new.tell()
    open('new.mark', 'w').write(json.dumps({"offset": mark}))
PY
run() {
  local label=$1 state=$2
  cat > "$label.toml" <<TOML
state_dir = "$state"
[plugins]
dir = "plugins"
watch = false
[[source]]
type = "jsonl"
name = "events"
path = "empty.jsonl"
TOML
  /usr/bin/time -f "$label: wall %e s, max RSS %M KB" "$bin" run --config "$label.toml" 2>&1 >/dev/null | grep "^$label:"
}
mkdir s-empty s-old s-new
cp old.jsonl s-old/audit.jsonl
cp new.jsonl s-new/audit.jsonl
cp new.mark s-new/audit.jsonl.mark
run empty s-empty
run old-file-no-mark s-old
run marked-file s-new
