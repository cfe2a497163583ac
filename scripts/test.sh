#!/usr/bin/env bash
# The one command that runs every test of Oplet: installs what the tests need
# (scripts/setup.sh), then runs the workspace tests (SDK, host, and the end-to-end
# scenarios, which start real PostgreSQL, Redis, nx-27017 and the real `oplet`
# binary, and build the wasm plugins themselves), then the plugins' native tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "[test] plugins (native unit tests)"
cargo test --manifest-path plugins/Cargo.toml --target-dir target/wasm
echo "[test] examples/hello-plugin (native unit tests)"
(cd examples/hello-plugin && cargo test --target-dir ../../target/wasm)
echo "[test] workspace: sdk, host, end-to-end scenarios"
cargo test --workspace
