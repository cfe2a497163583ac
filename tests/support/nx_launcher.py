#!/usr/bin/env python3
"""Start nx-27017 (a MongoDB wire-protocol server on SQLite) for Oplet's tests.

nx-27017 0.8.1 numbers change-stream cursors from 1000, which go on the wire as
Int32, and the Rust `mongodb` driver rejects them ("expected Int64"). Starting the
counter at 2**40 makes every cursor id an Int64. All arguments are nx-27017's own,
e.g. `nx_launcher.py --db FILE -p PORT --pid-file FILE --log-file FILE`.

nx-27017 logs every command at INFO (useful when a test fails, ~12% slower); set
OPLET_TEST_NX_LOG_LEVEL=WARNING for throughput runs.
"""

import itertools
import logging
import os
import sys

import nx_27017.changestream

nx_27017.changestream._cursor_id_counter = itertools.count(2**40)

from nx_27017.nx_27017 import main  # noqa: E402 - after the patch, on purpose

_level = os.environ.get("OPLET_TEST_NX_LOG_LEVEL")
if _level:
    logging.getLogger("nx_27017").setLevel(_level.upper())

if __name__ == "__main__":
    sys.argv[0] = "nx-27017"
    sys.exit(main())
