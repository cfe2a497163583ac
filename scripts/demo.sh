#!/usr/bin/env bash
# Demo of Oplet's main job, from a fresh machine: MongoDB changes -> plugins ->
# Redis cache invalidation, PostgreSQL sync and an audit log, with no polling.
#
# Installs what is missing (scripts/setup.sh), builds the host and the bundled
# plugins in release, starts a MongoDB-compatible server (nx-27017), Redis and
# PostgreSQL on free loopback ports in a temporary folder, starts `oplet` with the
# bundled cache-invalidate, pg-sync and audit-log plugins, writes to MongoDB with
# pymongo, and shows what happened: live events/s per plugin (from the admin
# listener's /metrics) while a burst runs, and a summary per plugin at the end.
# Everything is stopped and removed at the end (set OPLET_DEMO_KEEP=1 to keep the
# folder); every file it writes is in that folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
say() { printf '\n\033[1m[demo] %s\033[0m\n' "$*"; }

scripts/setup.sh
say "building oplet and the bundled plugins (the first build takes several minutes on 2 cores)"
# The same build as the tests' (scripts/test.sh), so running both compiles the host once.
cargo build -p oplet --bin oplet
cargo build --release --target wasm32-unknown-unknown --manifest-path plugins/Cargo.toml --target-dir target/wasm
OPLET=$ROOT/target/debug/oplet
WASM=$ROOT/target/wasm/wasm32-unknown-unknown/release

DEMO=$(mktemp -d /tmp/oplet-demo.XXXXXX)
chmod 755 "$DEMO"
PIDS=()
cleanup() {
    cd /
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$DEMO/redis.pid" ] && kill "$(cat "$DEMO/redis.pid")" 2>/dev/null || true
    [ -d "$DEMO/pg" ] && runuser -u postgres -- pg_ctl -D "$DEMO/pg" -m immediate stop >/dev/null 2>&1 || true
    if [ "${OPLET_DEMO_KEEP:-0}" = 1 ]; then echo "[demo] kept $DEMO"; else rm -rf "$DEMO"; fi
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MONGO_PORT=$(port); REDIS_PORT=$(port); PG_PORT=$(port); ADMIN_PORT=$(port)

say "starting nx-27017 (MongoDB wire protocol) on $MONGO_PORT, Redis on $REDIS_PORT, PostgreSQL on $PG_PORT"
OPLET_TEST_NX_LOG_LEVEL=WARNING python3 tests/support/nx_launcher.py --db "$DEMO/mongo.db" --host 127.0.0.1 -p "$MONGO_PORT" \
    --pid-file "$DEMO/nx.pid" >"$DEMO/nx.log" 2>&1 &
PIDS+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --pidfile "$DEMO/redis.pid" --logfile "$DEMO/redis.log"
mkdir -p "$DEMO/pg" && chown postgres "$DEMO/pg"
# The postgres user cannot enter root's working directory: run its tools from /.
cd /
runuser -u postgres -- initdb -D "$DEMO/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- pg_ctl -D "$DEMO/pg" -o "-p $PG_PORT -k $DEMO/pg -c listen_addresses=127.0.0.1" -l "$DEMO/pg/log" -w start >/dev/null
cd "$ROOT"
psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c \
    "create table users (id text primary key, email text, name text, doc jsonb)"

say "installing the bundled plugins (rename into place, the way to deploy)"
mkdir -p "$DEMO/plugins"
for p in cache-invalidate pg-sync audit-log; do
    cp "plugins/$p/$p.toml" "$DEMO/plugins/.$p.toml" && mv "$DEMO/plugins/.$p.toml" "$DEMO/plugins/$p.toml"
    cp "$WASM/${p//-/_}.wasm" "$DEMO/plugins/.$p.wasm" && mv "$DEMO/plugins/.$p.wasm" "$DEMO/plugins/$p.wasm"
done
cat >"$DEMO/oplet.toml" <<TOML
state_dir = "state"
[plugins]
dir = "plugins"
[grants."cache-invalidate"]
cache_prefixes = ["model:", "user:"]
[grants."pg-sync"]
tables = ["users"]
[grants."audit-log"]
audit = true
[redis]
url = "redis://127.0.0.1:$REDIS_PORT/"
[postgres]
url = "host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
[[source]]
type = "mongo"
name = "mongo"
uri = "mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
collections = ["app.users"]
full_document = "updateLookup"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
TOML
say "checking the config and reaching every service (oplet config check --connect)"
"$OPLET" config check --config "$DEMO/oplet.toml" --connect | sed 's/^/    check| /'
"$OPLET" run --config "$DEMO/oplet.toml" 2>"$DEMO/oplet.log" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q "3 plugin(s) loaded" "$DEMO/oplet.log" && break; sleep 0.1; done
sleep 1
sed 's/^/    oplet| /' "$DEMO/oplet.log"
say "status page: http://127.0.0.1:$ADMIN_PORT/ (metrics: /metrics, readiness: /readyz) while the demo runs"

say "warming the cache: SET user:<id> and user:<uuid>:profile for three users"
for u in ada bob cy; do
    redis-cli -p "$REDIS_PORT" SET "user:$u" cached >/dev/null
    redis-cli -p "$REDIS_PORT" SET "user:uuid-$u:profile" cached >/dev/null
done
redis-cli -p "$REDIS_PORT" KEYS 'user:*' | sort | sed 's/^/    redis| /'

say "writing to MongoDB: insert three users, update ada, replace bob, delete cy"
python3 - "$MONGO_PORT" <<'PY'
import sys, pymongo
c = pymongo.MongoClient(f"mongodb://127.0.0.1:{sys.argv[1]}/?directConnection=true")
users = c.app.users
for u in ["ada", "bob", "cy"]:
    users.insert_one({"_id": u, "uuid": f"uuid-{u}", "email": f"{u}@example.com", "profile": {"name": u.title()}})
users.update_one({"_id": "ada"}, {"$set": {"email": "ada@lovelace.dev", "actor": "admin"}})
users.replace_one({"_id": "bob"}, {"uuid": "uuid-bob", "email": "bob@builder.io", "profile": {"name": "Bob B."}})
users.delete_one({"_id": "cy"})
print("    wrote 6 changes")
PY
sleep 2

say "a burst: 600 more writes over ~6 s (insert, update, delete of load-N users), with live progress per plugin"
python3 - "$MONGO_PORT" <<'PY' &
import sys, time, pymongo
c = pymongo.MongoClient(f"mongodb://127.0.0.1:{sys.argv[1]}/?directConnection=true")
users = c.app.users
for i in range(200):
    users.insert_one({"_id": f"load-{i}", "uuid": f"uuid-load-{i}", "email": f"l{i}@example.com", "profile": {"name": f"L{i}"}})
    users.update_one({"_id": f"load-{i}"}, {"$set": {"email": f"l{i}@example.org"}})
    users.delete_one({"_id": f"load-{i}"})
    time.sleep(0.02)
PY
WRITER=$!
PIDS+=($WRITER)
python3 - "$ADMIN_PORT" "$WRITER" <<'PY'
import os, re, sys, time, urllib.request
port, writer = sys.argv[1], int(sys.argv[2])
def handled():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for m in re.finditer(r'^oplet_plugin_events_handled_total\{plugin="([^"]+)",version="[^"]*"\} (\S+)$', text, re.M):
        out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out
def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False
prev, t0 = handled(), time.time()
quiet = 0
while quiet < 2:
    time.sleep(1)
    now, t1 = handled(), time.time()
    rates = {p: (now.get(p, 0) - prev.get(p, 0)) / (t1 - t0) for p in sorted(now)}
    print("    live| events/s: " + ", ".join(f"{p} {r:6.1f}" for p, r in rates.items()), flush=True)
    quiet = quiet + 1 if not alive(writer) and all(r == 0 for r in rates.values()) else 0
    prev, t0 = now, t1
PY
wait "$WRITER" 2>/dev/null || true

say "Redis: user:* keys left (every user changed, so each one's keys were deleted)"
left=$(redis-cli -p "$REDIS_PORT" KEYS 'user:*' | sort)
echo "${left:-(none)}" | sed 's/^/    redis| /'
say "PostgreSQL: the users table mirrors the collection"
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "select id, email, name from users order by id"
say "audit log: one record per change"
python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)["record"]
    print("    audit|", r["op"], r["ns"], json.dumps(r["key"]), "fields:", r.get("changed_fields"), "actor:", r.get("actor"))
' "$DEMO/state/audit.jsonl"
say "what each plugin did (from /metrics and state/plugins.json)"
python3 - "$ADMIN_PORT" "$DEMO/state/plugins.json" <<'PY'
import json, re, sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
status = json.load(open(sys.argv[2]))["plugins"]
def series(name):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^' + name + r'\{(.*)\} (\S+)$', text, re.M)}
calls = series("oplet_plugin_call_seconds_sum")
effects = series("oplet_effects_total")
for name, p in sorted(status.items()):
    total = calls.get(f'plugin="{name}"', 0.0)
    mean_us = 1e6 * total / p["handled"] if p["handled"] else 0
    print(f"    summary| {name} v{p['version']}: handled {p['handled']} events, failed {p['failed']}, dead-lettered {p['dead_lettered']}, mean call {mean_us:.0f} µs, state {p['state']}")
print("    summary| effects: " + ", ".join(f"{k.replace('kind=', '').replace('outcome=', '')} {int(v)}" for k, v in sorted(effects.items())))
PY
say "the oplet log after the writes"
sed 's/^/    oplet| /' "$DEMO/oplet.log" | tail -n 8
say "done: no process polled MongoDB; the host saw each change once, from the change stream"
