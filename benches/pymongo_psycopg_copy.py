#!/usr/bin/env python3
# Baseline for the snapshot benchmark (benches/snapshot.rs, issue 13): a collection
# copied into PostgreSQL the way the guides teach it. pymongo iterates `find()`;
# psycopg runs one parameterized INSERT ... ON CONFLICT per document (the same row
# pg-sync writes: id, email, profile.name, the whole document as jsonb) and commits
# every 1000 rows (the guides' "commit in batches", so a failure loses one batch).
# Prints one JSON line: {"docs": N, "seconds": S, "mongo_seconds": M}; M is the time
# spent waiting for the next document from the MongoDB-compatible server.
#
# usage: pymongo_psycopg_copy.py MONGO_URI DB COLL PG_URL TABLE [LIMIT]
import json
import sys
import time

import psycopg
import pymongo
from bson import json_util

COMMIT_EVERY = 1000


def main():
    mongo_uri, db, coll, pg_url, table = sys.argv[1:6]
    limit = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    client = pymongo.MongoClient(mongo_uri)
    cursor = client[db][coll].find().sort("_id", 1)
    if limit:
        cursor = cursor.limit(limit)
    n = 0
    mongo_s = 0.0
    start = time.perf_counter()
    with psycopg.connect(pg_url) as conn:
        with conn.cursor() as cur:
            while True:
                t = time.perf_counter()
                doc = next(cursor, None)
                mongo_s += time.perf_counter() - t
                if doc is None:
                    break
                cur.execute(
                    f"INSERT INTO {table} (id, email, name, doc) VALUES (%s, %s, %s, %s::jsonb) "
                    "ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name, doc = excluded.doc",
                    (str(doc["_id"]), doc.get("email"), (doc.get("profile") or {}).get("name"), json_util.dumps(doc)),
                )
                n += 1
                if n % COMMIT_EVERY == 0:
                    conn.commit()
        conn.commit()
    print(json.dumps({"docs": n, "seconds": time.perf_counter() - start, "mongo_seconds": mongo_s}))


if __name__ == "__main__":
    main()
