#!/usr/bin/env python3
"""Example Oplet client: connect, wait for `start_client`, report. No polling.

The seed's client asked MongoDB every 3 s whether its `connection` flag was true.
This one connects once to Oplet's Socket.IO server, proves its uuid, and waits:
when its document's `connection` turns true, the bundled `client-start` plugin
sends it `start_client` with its uuid and key. Zero database queries from clients.

    pip install python-socketio aiohttp
    python3 wait_for_start.py --url http://127.0.0.1:3000 --uuid c-1 --secret "$OPLET_SOCKET_SECRET"
    python3 wait_for_start.py --url http://127.0.0.1:3000 --uuid c-1 --token TOKEN

With --secret the token is computed here: hex HMAC-SHA256 of the uuid under the
host's `[socket] secret` (in production, hand each client its token instead of the
secret). Delivery is at-least-once: a repeated `start_client` must be a no-op, so
this client starts only once. Exits 0 after starting, 1 if refused, 2 on timeout.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import sys

import socketio


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--uuid", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--token", help="this client's token")
    g.add_argument("--secret", help="the host's shared secret (token computed here)")
    p.add_argument("--timeout", type=float, default=0, help="seconds to wait (0: forever)")
    args = p.parse_args()
    token = args.token or hmac.new(args.secret.encode(), args.uuid.encode(), hashlib.sha256).hexdigest()

    started = asyncio.Event()
    refused = {}
    sio = socketio.AsyncClient(reconnection=True)  # reconnects by itself after a host restart

    @sio.event
    async def connect():
        print(f"connected as {args.uuid}; waiting for start_client", flush=True)

    @sio.event
    async def connect_error(data):
        refused["reason"] = data.get("message") if isinstance(data, dict) else data

    @sio.on("start_client")
    async def start_client(data):
        if started.is_set():
            print("start_client again (at-least-once delivery): already started, ignored", flush=True)
            return
        print("start_client " + json.dumps(data), flush=True)
        started.set()

    try:
        await sio.connect(args.url, auth={"uuid": args.uuid, "token": token}, transports=["websocket"])
    except socketio.exceptions.ConnectionError as e:
        print(f"refused: {refused.get('reason', e)}", file=sys.stderr)
        return 1
    try:
        await asyncio.wait_for(started.wait(), timeout=args.timeout or None)
    except asyncio.TimeoutError:
        print(f"no start_client within {args.timeout} s", file=sys.stderr)
        await sio.disconnect()
        return 2
    # The client's real work would start here.
    await sio.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
