#!/usr/bin/env bash
# Installs what Oplet's build and end-to-end tests need on a fresh Debian-like machine
# (CI runs it first; developers run it once). Idempotent and fast when everything is
# present: each step checks first and says what it found or did. Run as root.
set -euo pipefail

say() { printf '[setup] %s\n' "$*"; }
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

# Rust toolchain and the wasm target (rust-toolchain.toml pins both; rustup installs
# the target on first use, but doing it here keeps the first build's output clean).
if command -v rustup >/dev/null 2>&1; then
    if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        say "wasm32-unknown-unknown target: present"
    else
        say "rustup target add wasm32-unknown-unknown"
        rustup target add wasm32-unknown-unknown
    fi
else
    say "rustup not found: make sure the toolchain in rust-toolchain.toml has wasm32-unknown-unknown"
fi

# Redis.
if command -v redis-server >/dev/null 2>&1; then
    say "redis-server: $(command -v redis-server)"
else
    apt_install redis-server
    # The tests start their own servers; the packaged service is not needed.
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

# Headless Chromium: the admin status page is tested in a real browser.
if command -v chromium >/dev/null 2>&1; then
    say "chromium: $(command -v chromium)"
else
    apt_install --no-install-recommends chromium
fi

# PostgreSQL server binaries (initdb, pg_ctl) on PATH.
find_pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}
if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    say "PostgreSQL: $(initdb --version)"
else
    if ! find_pg_bin >/dev/null; then
        apt_install postgresql
    fi
    pg_bin=$(find_pg_bin) || { say "ERROR: no initdb after installing postgresql"; exit 1; }
    # Debian keeps initdb and pg_ctl off PATH; link them where the tests look.
    for tool in initdb pg_ctl postgres; do
        say "linking $pg_bin/$tool into /usr/local/bin"
        $SUDO ln -sf "$pg_bin/$tool" "/usr/local/bin/$tool"
    done
    say "PostgreSQL: $(initdb --version)"
fi

# initdb refuses to run as root: the tests run it as the `postgres` user.
if id postgres >/dev/null 2>&1; then
    say "user postgres: present"
else
    say "creating system user postgres"
    $SUDO useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
fi

# The MongoDB-compatible server and the real clients the tests drive it with.
PYTHON=${OPLET_TEST_PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    apt_install python3 python3-pip
fi
# psycopg (with its bundled libpq) runs the snapshot benchmark's baseline
# (benches/pymongo_psycopg_copy.py).
if "$PYTHON" -c 'import nx_27017.nx_27017, pymongo, socketio, aiohttp, psycopg' >/dev/null 2>&1; then
    say "python packages nx-27017, pymongo, python-socketio, aiohttp, psycopg: present"
else
    say "pip install nx-27017 pymongo python-socketio aiohttp psycopg[binary]"
    pip_flags=()
    # Debian's own python refuses system-wide pip installs without this flag.
    if "$PYTHON" -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
        pip_flags+=(--break-system-packages)
    fi
    "$PYTHON" -m pip install -q "${pip_flags[@]}" nx-27017==0.8.1 pymongo python-socketio aiohttp "psycopg[binary]"
fi

# The AssemblyScript compiler for the PDK in pdk/assemblyscript (its tests build
# plugins with it), pinned by package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if [ -x pdk/assemblyscript/node_modules/.bin/asc ]; then
    say "assemblyscript (pdk/assemblyscript): present"
else
    say "npm ci in pdk/assemblyscript (the assemblyscript compiler)"
    (cd pdk/assemblyscript && npm ci --no-audit --no-fund --loglevel=error)
fi

# The Socket.IO browser client the browser scenario serves to a page, pinned by
# tests/support/browser/package-lock.json.
if [ -f tests/support/browser/node_modules/socket.io-client/dist/socket.io.min.js ]; then
    say "socket.io-client (tests/support/browser): present"
else
    say "npm ci in tests/support/browser (the socket.io-client browser bundle)"
    (cd tests/support/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# openssl: the TLS scenario (tests/scenarios/tls.rs) makes a throwaway CA with it.
if command -v openssl >/dev/null 2>&1; then
    say "openssl: $(command -v openssl)"
else
    apt_install openssl
fi

say "done"
