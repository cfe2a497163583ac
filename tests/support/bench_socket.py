#!/usr/bin/env python3
"""Bench: write-to-client latency of the client-start flow with N connected clients.

Starts the real `oplet` binary (release) with the Socket.IO server, the bundled
`client-start` plugin and `socket-echo`, connects N python-socketio clients, then:

  1. start_client: for each client, appends one change line (its `connection` turned
     true) to the followed JSON-lines source, paced at --rate lines/s, and measures
     from the write to the client receiving `start_client` (p50/p90/p99/max).
  2. round trip: each client sends `ping`; socket-echo answers; measures send to
     answer (client event in, plugin, emit out), without any source polling.

Prints the figures and the database queries the clients caused: none, since they
only hold a socket (the seed's 3 s polling loop makes N/3 queries/s).

    cargo build --release -p oplet
    cargo build --release --target wasm32-unknown-unknown \
        --manifest-path plugins/Cargo.toml --target-dir target/wasm
    python3 tests/support/bench_socket.py --clients 1000
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import socketio

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "bench-secret-0123456789"


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


def start_host(work, port, oplet):
    wasm = os.path.join(ROOT, "target/wasm/wasm32-unknown-unknown/release")
    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins)
    shutil.copy(os.path.join(wasm, "client_start.wasm"), os.path.join(plugins, "client-start.wasm"))
    shutil.copy(os.path.join(ROOT, "plugins/client-start/client-start.toml"), os.path.join(plugins, "client-start.toml"))
    shutil.copy(os.path.join(wasm, "socket_echo.wasm"), os.path.join(plugins, "socket-echo.wasm"))
    with open(os.path.join(plugins, "socket-echo.toml"), "w") as f:
        f.write('name = "socket-echo"\n[[subscribe]]\nkind = "socket"\nevents = ["ping"]\n'
                '[capabilities]\nemit = ["echo"]\n')
    open(os.path.join(work, "changes.jsonl"), "w").close()
    with open(os.path.join(work, "oplet.toml"), "w") as f:
        f.write(f'state_dir = "state"\n[plugins]\ndir = "plugins"\nwatch = false\n'
                f'[grants."*"]\nemit = ["echo", "start_client"]\n'
                f'[[source]]\ntype = "jsonl"\nname = "changes"\npath = "changes.jsonl"\nfollow = true\n'
                f'[socket]\nlisten = "127.0.0.1:{port}"\nsecret = "{SECRET}"\n')
    log = open(os.path.join(work, "oplet.log"), "w")
    proc = subprocess.Popen([oplet, "run", "--config", "oplet.toml"], cwd=work, stdout=log, stderr=log,
                            env={**os.environ, "RUST_LOG": "warn,oplet::source::socket=info", "NO_COLOR": "1"})
    deadline = time.time() + 60
    while time.time() < deadline:
        if "socket: listening" in open(os.path.join(work, "oplet.log")).read():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit("oplet did not start:\n" + open(os.path.join(work, "oplet.log")).read()[-4000:])


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500, help="change lines written per second")
    ap.add_argument("--oplet", default=os.path.join(ROOT, "target/release/oplet"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="oplet-bench-")
    port = free_port()
    proc = start_host(work, port, args.oplet)
    url = f"http://127.0.0.1:{port}"
    n = args.clients
    uuids = [f"bench-{i:05d}" for i in range(n)]
    sent, got_start, got_echo, ping_sent = {}, {}, {}, {}
    extra = []
    done_start, done_echo = asyncio.Event(), asyncio.Event()
    clients = []
    try:
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

        # 1. start_client after a write to the changes the host follows.
        interval = 1.0 / args.rate
        with open(os.path.join(work, "changes.jsonl"), "a", buffering=1) as f:
            t_next = time.time()
            for i, u in enumerate(uuids):
                line = json.dumps({"body": {"kind": "change", "data": {
                    "op": "update", "db": "app", "coll": "clients", "key": {"_id": i},
                    "full_document": {"_id": i, "uuid": u, "key": f"k{i}", "connection": True}}}})
                f.write(line + "\n")
                f.flush()
                sent[u] = time.time()
                t_next += interval
                await asyncio.sleep(max(0, t_next - time.time()))
        await asyncio.wait_for(done_start.wait(), 60)
        await asyncio.sleep(0.5)
        ms = [(got_start[u] - sent[u]) * 1000 for u in uuids]
        print(summary(f"write -> start_client ({args.rate:.0f} writes/s)", ms), flush=True)
        print(f"duplicates or misrouted start_client: {len(extra)}", flush=True)

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
        print(f"database queries caused by {n} waiting clients: 0/s "
              f"(they hold a socket; the 3 s polling loop: {n / 3:.0f} queries/s)", flush=True)
    finally:
        await asyncio.gather(*(s.disconnect() for _, s in clients), return_exceptions=True)
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
