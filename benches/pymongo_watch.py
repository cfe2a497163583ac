#!/usr/bin/env python3
"""Baseline for `cargo bench -p oplet-benches --bench mongo_stream`: a change-stream
watcher written the way the seed guides write one, pymongo's `watch()` and a
Python callback per change.

Usage: pymongo_watch.py URI DB COLL

Prints `ready` once the stream is open. The callback notes each change's latency
when its document carries `t` (the writer's clock, ms since the epoch). The first
`update` event is the bench's end marker: the watcher then prints one JSON line
{"events", "latencies_ms", "cpu_s"} and exits.
"""

import json
import sys
import time

import pymongo


def main() -> None:
    uri, db, coll = sys.argv[1:4]
    client = pymongo.MongoClient(uri)
    latencies = []
    events = 0

    def on_change(change):
        nonlocal events
        events += 1
        doc = change.get("fullDocument") or {}
        t = doc.get("t")
        if t is not None:
            latencies.append(time.time() * 1000.0 - t)

    with client[db][coll].watch() as stream:
        print("ready", flush=True)
        for change in stream:
            if change["operationType"] == "update":
                break
            on_change(change)
    print(json.dumps({"events": events, "latencies_ms": latencies, "cpu_s": time.process_time()}), flush=True)


if __name__ == "__main__":
    main()
