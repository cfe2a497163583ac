#!/usr/bin/env bash
# The one command that runs every test of Oplet: installs what the tests need
# (scripts/setup.sh), then runs the workspace tests (SDK, host, and the end-to-end
# scenarios, which start real PostgreSQL, Redis, nx-27017 and the real `oplet`
# binary, and build the wasm plugins themselves), then the plugins' native tests.
set -euo pipefail
cd "$(dirname "$0")/.."

set -o pipefail
scripts/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "[test] plugins (native unit tests)"
cargo test --manifest-path plugins/Cargo.toml --target-dir target/wasm 2>&1 | tee -a "$log"
echo "[test] examples/hello-plugin (native unit tests)"
(cd examples/hello-plugin && cargo test --target-dir ../../target/wasm) 2>&1 | tee -a "$log"
echo "[test] workspace: sdk, host, end-to-end scenarios"
cargo test --no-fail-fast 2>&1 | tee -a "$log"
# One closing line over every test binary above (the last binary alone is often
# a doc-test run with nothing in it).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
