#!/usr/bin/env bash
# Installs the `oplet` binary on PATH (and, with --plugins, the bundled plugins).
#
#   scripts/install.sh                   # /usr/local/bin/oplet (release build)
#   scripts/install.sh --prefix ~/.local # ~/.local/bin/oplet
#   scripts/install.sh --plugins DIR     # also the bundled plugins (.wasm + .toml) into DIR
#
# The release build goes to target/release (shared with `cargo build --release`),
# so a second install after a small change rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
plugins=
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
        --plugins) plugins=${2:?--plugins needs a folder}; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

echo "[install] building oplet (release; the first build takes several minutes on 2 cores)"
cargo build --release --locked -p oplet --bin oplet
install -D -m 0755 target/release/oplet "$prefix/bin/oplet"
echo "[install] $prefix/bin/oplet ($("$prefix/bin/oplet" --version))"
case ":$PATH:" in
    *":$prefix/bin:"*) ;;
    *) echo "[install] note: $prefix/bin is not on PATH; add it: export PATH=\"$prefix/bin:\$PATH\"" ;;
esac

if [ -n "$plugins" ]; then
    echo "[install] building the bundled plugins (wasm32-unknown-unknown, release)"
    cargo build --release --locked --target wasm32-unknown-unknown --manifest-path plugins/Cargo.toml --target-dir target/wasm
    mkdir -p "$plugins"
    for p in cache-invalidate pg-sync audit-log client-start; do
        # Write aside, then rename: a watching host never sees a half-written file.
        install -m 0644 "target/wasm/wasm32-unknown-unknown/release/${p//-/_}.wasm" "$plugins/.$p.wasm"
        install -m 0644 "plugins/$p/$p.toml" "$plugins/.$p.toml"
        mv "$plugins/.$p.wasm" "$plugins/$p.wasm"
        mv "$plugins/.$p.toml" "$plugins/$p.toml"
        echo "[install] $plugins/$p.wasm"
    done
fi
