#!/usr/bin/env bash
# One entry point for people and CI: `./run.sh demo`, `./run.sh test`, `./run.sh setup`.
# Creates ./.venv on first use (Python >= 3.11) and installs chargebridge into it.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    command -v apt-get >/dev/null || { echo "run.sh: please install: $*" >&2; exit 1; }
    if [ ! -f /tmp/.chargebridge-apt-updated ]; then
        as_root apt-get update -qq && touch /tmp/.chargebridge-apt-updated
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "run.sh: chargebridge needs Python >= 3.11 ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }
    local stamp="$VENV/.installed"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV" 2>/dev/null || {
            rm -rf "$VENV"
            echo "run.sh: installing python3-venv" >&2
            apt_install python3-venv
            "$PY" -m venv "$VENV"
        }
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
        echo "run.sh: installing chargebridge into $VENV ..." >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e ".[dev,fast,postgres]"
        touch "$stamp"
    fi
}

ensure_mosquitto() {
    if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
        echo "run.sh: installing Mosquitto (broker used by the tests)" >&2
        apt_install mosquitto mosquitto-clients
        # The packaged service is not needed: the tests start their own broker.
        as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
}

ensure_postgres() {
    # The store tests start private clusters with initdb/pg_ctl (tests/postgres.py).
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "run.sh: installing PostgreSQL (database used by the store tests)" >&2
        apt_install postgresql
        # The packaged cluster is not needed: the tests start their own.
        as_root systemctl disable --now postgresql >/dev/null 2>&1 || true
    fi
}

ensure_chromium() {
    # The dashboard's tests drive Debian's chromium through Playwright (no browser download).
    if ! command -v chromium >/dev/null; then
        echo "run.sh: installing chromium (browser used by the dashboard tests)" >&2
        apt_install chromium
    fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
    demo)
        ensure_venv
        exec "$VENV/bin/chargebridge" demo "$@"
        ;;
    test)
        ensure_venv
        ensure_mosquitto
        ensure_postgres
        ensure_chromium
        export PATH="$PWD/$VENV/bin:$PATH:/usr/sbin"
        echo "== ruff" && ruff check . && ruff format --check . >/dev/null
        echo "== mypy" && mypy
        echo "== import contracts" && lint-imports >/dev/null
        echo "== pytest" && exec python -m pytest -q "$@"
        ;;
    setup)
        ensure_venv
        ;;
    *)
        echo "usage: ./run.sh demo [options] | ./run.sh test [pytest args] | ./run.sh setup" >&2
        exit 2
        ;;
esac
