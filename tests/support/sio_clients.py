#!/usr/bin/env python3
"""Real Socket.IO clients (python-socketio AsyncClient over aiohttp) for Oplet's tests.

Connects N clients to URL, each with auth={"uuid": ..., "token": ...}, and prints one
JSON line per thing that happens, flushed at once, so a Rust test (or the bench) can
drive it as a subprocess and read its stdout:

  {"type": "connected", "uuid": U, "n": 1}          (n counts connects, 2+ = reconnect)
  {"type": "connect_error", "uuid": U, "message": M} (the server's refusal reason)
  {"type": "ready", "connected": C, "failed": F}     (every client tried once)
  {"type": "event", "uuid": U, "event": E, "data": D, "t": unix_seconds}
  {"type": "disconnected", "uuid": U}

Commands are read from stdin, one JSON object per line:

  {"op": "emit", "uuid": U, "event": E, "data": D}   (a client sends an event)
  {"op": "quit"}                                     (or end of stdin: disconnect all, exit)

Usage: sio_clients.py URL SPEC where SPEC is a JSON file: [{"uuid": U, "token": T}, ...]
(a client with "secret": S instead of "token" sends the hex HMAC-SHA256 of its uuid
under S, computed here with Python's own hmac; one with "auth": X sends X as its auth
payload instead, to test bad auth).
"""

import asyncio
import hashlib
import hmac
import json
import sys
import time

import socketio


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run_client(url, spec, clients, sem):
    uuid = spec["uuid"]
    if "auth" in spec:
        auth = spec["auth"]
    elif "secret" in spec:
        token = hmac.new(spec["secret"].encode(), uuid.encode(), hashlib.sha256).hexdigest()
        auth = {"uuid": uuid, "token": token}
    else:
        auth = {"uuid": uuid, "token": spec.get("token", "")}
    sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.2, reconnection_delay_max=1.0)
    state = {"connects": 0}

    @sio.event
    async def connect():
        state["connects"] += 1
        out({"type": "connected", "uuid": uuid, "n": state["connects"]})

    @sio.event
    async def connect_error(data):
        message = data.get("message") if isinstance(data, dict) else data
        out({"type": "connect_error", "uuid": uuid, "message": message})

    @sio.event
    async def disconnect(*_reason):
        out({"type": "disconnected", "uuid": uuid})

    @sio.on("*")
    async def any_event(event, data=None):
        out({"type": "event", "uuid": uuid, "event": event, "data": data, "t": time.time()})

    async with sem:
        try:
            await sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=10, retry=False)
        except socketio.exceptions.ConnectionError:
            return False  # connect_error has reported the reason
    clients[uuid] = sio
    return True


async def main():
    url, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        specs = json.load(f)
    clients = {}
    sem = asyncio.Semaphore(50)  # connects in flight at once
    results = await asyncio.gather(*(run_client(url, s, clients, sem) for s in specs))
    ok = sum(1 for r in results if r)
    out({"type": "ready", "connected": ok, "failed": len(results) - ok})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)  # commands may carry huge payloads
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            cmd = json.loads(line)
        except ValueError as e:
            out({"type": "error", "message": f"bad command {line!r}: {e}"})
            continue
        if cmd.get("op") == "quit":
            break
        if cmd.get("op") == "emit":
            sio = clients.get(cmd["uuid"])
            if sio is None:
                out({"type": "error", "message": f"no connected client {cmd['uuid']!r}"})
                continue
            await sio.emit(cmd["event"], cmd.get("data"))
    await asyncio.gather(*(c.disconnect() for c in clients.values()), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
