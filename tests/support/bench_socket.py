#!/usr/bin/env python3
"""Bench: MongoDB-write-to-client latency of the client-start flow with N connected clients.

Starts a MongoDB-compatible server (nx-27017 through tests/support/nx_launcher.py, or
uses the one named by OPLET_TEST_MONGODB_URI), then the real `oplet` binary (release)
watching `<db>.clients` with a change stream, with the Socket.IO server, the bundled
`client-start` plugin and `socket-echo`. Inserts one client document per client
(`connection: false`), connects N python-socketio clients, then:

  0. quiet window: for ~10 s while the N clients wait, counts the MongoDB commands the
     server receives (own server only): Oplet's one change stream, whatever N is, where
     the 3 s polling loop makes N/3 queries/s.
  1. start_client: for each client, sets its document's `connection` to true with
     pymongo, paced at --rate writes/s, and measures from the write to the client
     receiving `start_client` (p50/p90/p99/max).
  2. round trip: each client sends `ping`; socket-echo answers; measures send to
     answer (client event in, plugin, emit out), without MongoDB.

nx-27017 does not log each command (in its default asyncio mode only the few that
fall through to its generic `db.command` are), so step 0 reads the kernel's TCP
counters of the server's connections (`ss -ti`, `data_segs_in`): a MongoDB client
waits for each reply before the next request, and a small command is one segment.

    cargo build --release -p oplet
    cargo build --release --target wasm32-unknown-unknown \
        --manifest-path plugins/Cargo.toml --target-dir target/wasm
    python3 tests/support/bench_socket.py --clients 1000
"""

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pymongo
import socketio

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "bench-secret-0123456789"
MONGODB_URI_ENV = "OPLET_TEST_MONGODB_URI"
QUIET_WINDOW_S = 10.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(name, ms):
    return (f"{name}: n={len(ms)} p50={pct(ms, 50):.2f} ms p90={pct(ms, 90):.2f} ms "
            f"p99={pct(ms, 99):.2f} ms max={max(ms):.2f} ms")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tail(path, chars=4000):
    try:
        with open(path) as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def wait_for_log(path, lines, proc, what, timeout=60):
    """Waits until every one of `lines` is in the log at `path`; exits if `proc` dies."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = tail(path, 10**7)
        if all(line in text for line in lines):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit(f"{what} did not start (waited for {lines}):\n" + tail(path))


def stop(proc, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_mongo(work):
    """Starts nx-27017 on a free port and waits until pymongo can ping it; returns
    (process, uri)."""
    port = free_port()
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    log = open(os.path.join(work, "nx.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-u", os.path.join(ROOT, "tests/support/nx_launcher.py"),
         "--db", os.path.join(work, "nx.db"), "--host", "127.0.0.1", "-p", str(port),
         "--pid-file", os.path.join(work, "nx.pid"), "--log-file", os.path.join(work, "nx-server.log")],
        cwd=work, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000) as client:
                client.admin.command("ping")
            return proc, uri
        except pymongo.errors.PyMongoError:
            time.sleep(0.2)
    stop(proc)
    sys.exit(f"nx-27017 did not answer a ping at {uri}:\n" + tail(os.path.join(work, "nx.log")))


def start_host(work, port, oplet, uri, db):
    wasm = os.path.join(ROOT, "target/wasm/wasm32-unknown-unknown/release")
    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins)
    shutil.copy(os.path.join(wasm, "client_start.wasm"), os.path.join(plugins, "client-start.wasm"))
    # The manifest names the namespace twice: in its subscription and its [config].
    with open(os.path.join(ROOT, "plugins/client-start/client-start.toml")) as f:
        manifest = f.read()
    if manifest.count('"app.clients"') != 2:
        sys.exit('client-start.toml no longer names "app.clients" twice; update the bench')
    with open(os.path.join(plugins, "client-start.toml"), "w") as f:
        f.write(manifest.replace('"app.clients"', f'"{db}.clients"'))
    shutil.copy(os.path.join(wasm, "socket_echo.wasm"), os.path.join(plugins, "socket-echo.wasm"))
    with open(os.path.join(plugins, "socket-echo.toml"), "w") as f:
        f.write('name = "socket-echo"\n[[subscribe]]\nkind = "socket"\nevents = ["ping"]\n'
                '[capabilities]\nemit = ["echo"]\n')
    with open(os.path.join(work, "oplet.toml"), "w") as f:
        f.write(f'state_dir = "state"\n[plugins]\ndir = "plugins"\nwatch = false\n'
                f'[grants."*"]\nemit = ["echo", "start_client"]\n'
                f'[[source]]\ntype = "mongo"\nname = "mongo"\nuri = "{uri}"\n'
                f'collections = ["{db}.clients"]\nfull_document = "updateLookup"\n'
                f'[socket]\nlisten = "127.0.0.1:{port}"\nsecret = "{SECRET}"\n')
    log_path = os.path.join(work, "oplet.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([oplet, "run", "--config", "oplet.toml"], cwd=work, stdout=log, stderr=log,
                            env={**os.environ, "RUST_LOG": "warn,oplet::source=info", "NO_COLOR": "1"})
    wait_for_log(log_path, ["socket: listening", "watching the change stream"], proc, "oplet")
    return proc


def received_segments(port):
    """Data segments each client connection of the server on `port` has sent it so far,
    as {client address: (segments, owning process)}, from `ss`; None without `ss`."""
    try:
        out = subprocess.run(["ss", "-H", "-t", "-i", "-n", "-p", "state", "established",
                              f"( sport = :{port} or dport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    owners, segments, conn = {}, {}, None
    for line in out.splitlines():
        head = re.match(r"\s*\d+\s+\d+\s+(\S+:\d+)\s+(\S+:\d+)(.*)", line)
        if head:
            local, peer, rest = head.groups()
            conn = (local, peer)
            user = re.search(r'users:\(\("([^"]+)",pid=(\d+)', rest)
            if user and peer.endswith(f":{port}"):  # the client's side: who owns it
                owners[local] = (user.group(1), int(user.group(2)))
        elif conn and conn[0].endswith(f":{port}"):  # the server's side: what it got
            got = re.search(r"data_segs_in:(\d+)", line)
            segments[conn[1]] = int(got.group(1)) if got else 0
    return {addr: (n, owners.get(addr)) for addr, n in segments.items()}


def commands_per_second(before, after, seconds, oplet_pid):
    """Commands received per second over a window, in total and by sender."""
    by_sender = {}
    for addr, (n, owner) in after.items():
        pid = owner[1] if owner else None
        sender = ("oplet" if pid == oplet_pid else "this bench (pymongo)" if pid == os.getpid()
                  else f"{owner[0]} (pid {pid})" if owner else "unknown")
        by_sender[sender] = by_sender.get(sender, 0) + n - before.get(addr, (0, None))[0]
    return sum(by_sender.values()) / seconds, {s: c / seconds for s, c in by_sender.items()}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500, help="MongoDB writes (and client events) per second")
    ap.add_argument("--oplet", default=os.path.join(ROOT, "target/release/oplet"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="oplet-bench-")
    n = args.clients
    db = f"bench_{os.getpid()}"
    mongo_proc, host_proc, mongo, clients = None, None, None, []
    try:
        uri = os.environ.get(MONGODB_URI_ENV, "").strip()
        if not uri:
            mongo_proc, uri = start_mongo(work)
        mongo = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
        port = free_port()
        host_proc = start_host(work, port, args.oplet, uri, db)
        url = f"http://127.0.0.1:{port}"
        uuids = [f"bench-{i:05d}" for i in range(n)]
        ids = [f"id-{i}" for i in range(n)]
        coll = mongo[db]["clients"]
        coll.insert_many([{"_id": ids[i], "uuid": u, "key": f"k{i}", "connection": False}
                          for i, u in enumerate(uuids)])

        sent, got_start, got_echo, ping_sent = {}, {}, {}, {}
        extra = []
        done_start, done_echo = asyncio.Event(), asyncio.Event()
        sem = asyncio.Semaphore(100)
        t_conn = time.time()

        async def connect(u):
            sio = socketio.AsyncClient(reconnection=False)

            @sio.on("start_client")
            async def on_start(data, u=u):
                if u in got_start or data.get("uuid") != u:
                    extra.append((u, data))
                    return
                got_start[u] = time.time()
                if len(got_start) == n:
                    done_start.set()

            @sio.on("echo")
            async def on_echo(data, u=u):
                got_echo[u] = time.time()
                if len(got_echo) == n:
                    done_echo.set()

            token = hmac.new(SECRET.encode(), u.encode(), hashlib.sha256).hexdigest()
            async with sem:
                await sio.connect(url, auth={"uuid": u, "token": token}, transports=["websocket"], wait_timeout=30)
            clients.append((u, sio))

        await asyncio.gather(*(connect(u) for u in uuids))
        print(f"{n} clients connected in {time.time() - t_conn:.2f} s", flush=True)

        # 0. What the waiting clients cost MongoDB: the server's commands while they wait.
        await asyncio.sleep(2)  # let Oplet finish the insert events first
        if mongo_proc is None:
            print(f"MongoDB commands while {n} clients wait: not available with {MONGODB_URI_ENV} "
                  f"(other clients share that server); the clients send none "
                  f"(the 3 s polling loop: {n / 3:.0f} queries/s)", flush=True)
        else:
            mongo_port = int(re.search(r":(\d+)/", uri).group(1))
            t0, before = time.time(), received_segments(mongo_port)
            await asyncio.sleep(QUIET_WINDOW_S)
            t1, after = time.time(), received_segments(mongo_port)
            if before is None or after is None:
                print("MongoDB commands while clients wait: not available (`ss` from iproute2 "
                      "is needed to count them)", flush=True)
            else:
                total, by_sender = commands_per_second(before, after, t1 - t0, host_proc.pid)
                senders = ", ".join(f"{s} {r:.1f}/s" for s, r in sorted(by_sender.items()))
                print(f"MongoDB commands received while {n} clients wait: {total:.1f}/s over {t1 - t0:.1f} s "
                      f"({senders}; the clients send none) vs the 3 s polling loop: {n / 3:.0f} queries/s",
                      flush=True)

        # 1. start_client after a MongoDB write. pymongo blocks, so it writes from a
        # thread while this event loop keeps receiving.
        interval = 1.0 / args.rate

        def write_all():
            t_next = time.time()
            for i, u in enumerate(uuids):
                sent[u] = time.time()
                coll.update_one({"_id": ids[i]}, {"$set": {"connection": True}})
                t_next += interval
                time.sleep(max(0, t_next - time.time()))

        t_write = time.time()
        await asyncio.to_thread(write_all)
        write_s = time.time() - t_write
        try:
            await asyncio.wait_for(done_start.wait(), 60)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(0.5)
        missing = [u for u in uuids if u not in got_start]
        ms = [(got_start[u] - sent[u]) * 1000 for u in uuids if u in got_start]
        print(f"{n} updates written in {write_s:.2f} s ({n / write_s:.0f} writes/s achieved)", flush=True)
        if ms:
            print(summary(f"write -> start_client ({args.rate:.0f} writes/s)", ms), flush=True)
        print(f"duplicates or misrouted start_client: {len(extra)}", flush=True)
        if missing:
            print(f"start_client never arrived (60 s) for {len(missing)} clients, e.g. {missing[:5]}",
                  flush=True)

        # 2. client event -> plugin -> emit back.
        t_next = time.time()
        for u, sio in clients:
            ping_sent[u] = time.time()
            await sio.emit("ping", {"u": u})
            t_next += interval
            await asyncio.sleep(max(0, t_next - time.time()))
        await asyncio.wait_for(done_echo.wait(), 60)
        ms = [(got_echo[u] - ping_sent[u]) * 1000 for u, _ in clients]
        print(summary(f"client event -> plugin -> emit back ({args.rate:.0f} events/s)", ms), flush=True)
    finally:
        await asyncio.gather(*(s.disconnect() for _, s in clients), return_exceptions=True)
        stop(host_proc, 30)
        if mongo is not None:
            try:
                mongo.drop_database(db)
            except pymongo.errors.PyMongoError:
                pass
            mongo.close()
        stop(mongo_proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
