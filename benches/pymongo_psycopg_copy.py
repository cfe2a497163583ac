#!/usr/bin/env python3
# Baseline for the snapshot benchmark (issue 13): what the seed guides would write to
# copy a collection into PostgreSQL — pymongo reads every document, psycopg inserts
# them row by row (one INSERT ... ON CONFLICT per document, one commit at the end).
# Prints one JSON line: {"docs": N, "seconds": S, "mongo_seconds": M} where M is the
# time spent waiting on the MongoDB-compatible server (reading), the rest is Python
# and PostgreSQL.
#
# usage: pymongo_psycopg_copy.py MONGO_URI DB COLL PG_URL TABLE
import json
import sys
import time

import psycopg
import pymongo
from bson import json_util


def main():
    mongo_uri, db, coll, pg_url, table = sys.argv[1:6]
    client = pymongo.MongoClient(mongo_uri)
    cursor = client[db][coll].find().sort("_id", 1)
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
                key = str(doc["_id"])
                cur.execute(
                    f"INSERT INTO {table} (id, email, name, doc) VALUES (%s, %s, %s, %s::jsonb) "
                    "ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name, doc = excluded.doc",
                    (key, doc.get("email"), (doc.get("profile") or {}).get("name"), json_util.dumps(doc)),
                )
                n += 1
        conn.commit()
    print(json.dumps({"docs": n, "seconds": time.perf_counter() - start, "mongo_seconds": mongo_s}))


if __name__ == "__main__":
    main()
