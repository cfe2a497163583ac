#!/usr/bin/env python3
"""Start nx-27017 (a MongoDB wire-protocol server on SQLite) for Oplet's tests.

nx-27017 0.8.1 numbers change-stream cursors from 1000, which go on the wire as
Int32, and the Rust `mongodb` driver rejects them ("expected Int64"). Starting the
counter at 2**40 makes every cursor id an Int64. All arguments are nx-27017's own,
e.g. `nx_launcher.py --db FILE -p PORT --pid-file FILE --log-file FILE`.

nx-27017 logs at INFO (not each command in its default asyncio mode); set
OPLET_TEST_NX_LOG_LEVEL=WARNING for throughput runs.

Two options of our own (taken out before nx-27017 sees the arguments) make it fail
the way a MongoDB deployment can, for the MongoDB source's tests:
  --no-change-streams  refuse every `$changeStream` as a standalone mongod does
                       (error 40573, "only supported on replica sets");
  --lose-history       refuse every change stream that resumes from a token with
                       error 286 ChangeStreamHistoryLost, as a server whose oplog
                       no longer holds that token does; a stream without one works.
  --refuse-auth        refuse every authentication (saslStart, authenticate) with
                       error 18 AuthenticationFailed, as a server does for a wrong
                       password.
"""

import itertools
import logging
import os
import sys

import nx_27017.changestream

nx_27017.changestream._cursor_id_counter = itertools.count(2**40)

from nx_27017.changestream import extract_change_stream_options  # noqa: E402
from nx_27017.handler import NeoSQLiteHandler  # noqa: E402
from nx_27017.nx_27017 import main  # noqa: E402 - after the patch, on purpose

_open_change_stream = NeoSQLiteHandler._handle_change_stream


def _refuse_change_streams(self, request_id, *args, **kwargs):
    return request_id, {
        "ok": 0,
        "errmsg": "The $changeStream stage is only supported on replica sets",
        "code": 40573,
        "codeName": "Location40573",
    }


def _lose_history(self, request_id, coll_name, pipeline, *args, **kwargs):
    options = extract_change_stream_options(pipeline)
    if options.get("resume_after") is not None or options.get("start_after") is not None:
        return request_id, {
            "ok": 0,
            "errmsg": "Executor error during getMore :: caused by :: cannot resume stream; "
            "the resume token was not found",
            "code": 286,
            "codeName": "ChangeStreamHistoryLost",
        }
    return _open_change_stream(self, request_id, coll_name, pipeline, *args, **kwargs)


for _flag, _patch in (("--no-change-streams", _refuse_change_streams), ("--lose-history", _lose_history)):
    if _flag in sys.argv:
        sys.argv.remove(_flag)
        NeoSQLiteHandler._handle_change_stream = _patch

_handle_command = NeoSQLiteHandler.handle_command


def _refuse_auth(self, msg):
    body = next((doc for kind, doc in msg["sections"] if kind == "body"), None) or {}
    if "saslStart" in body or "authenticate" in body:
        return msg["request_id"], {"ok": 0, "errmsg": "Authentication failed.", "code": 18, "codeName": "AuthenticationFailed"}
    return _handle_command(self, msg)


if "--refuse-auth" in sys.argv:
    sys.argv.remove("--refuse-auth")
    NeoSQLiteHandler.handle_command = _refuse_auth

_level = os.environ.get("OPLET_TEST_NX_LOG_LEVEL")
if _level:
    logging.getLogger("nx_27017").setLevel(_level.upper())

if __name__ == "__main__":
    sys.argv[0] = "nx-27017"
    sys.exit(main())
