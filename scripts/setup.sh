#!/usr/bin/env bash
# Sets up everything the project needs, idempotently: redis-server (Debian package), the
# virtual environment at .venv/ with the package installed editable, pinned by constraints.txt.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# 1. redis-server and redis-cli from Debian's packages (tests start their own servers and Redis Clusters;
#    the demo starts one).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server redis-tools >/dev/null
  else
    log "redis-server or redis-cli is missing and this is not root: run 'sudo apt-get install redis-server redis-tools'"
    exit 1
  fi
fi

# 1b. prometheus + promtool from Debian's packages: the alert-rule unit tests and the drift-alert test
#     run them (deploy/prometheus/); operators start it with the shipped config.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing prometheus (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq prometheus >/dev/null
  else
    log "prometheus/promtool are missing and this is not root: run 'sudo apt-get install prometheus'"
    exit 1
  fi
fi

# 2. Python >= 3.10 and the virtual environment.
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
  log "Python >= 3.10 is required (found $("$PYTHON" --version 2>&1))"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi

# 3. Dependencies, reinstalled only when pyproject.toml or constraints.txt change.
STAMP=".venv/.recsys-installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  log "installing dependencies into .venv (first run: about 2 minutes)"
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]" \
      > .venv/pip-install.log 2>&1; then
    grep -v '^WARNING: Location' .venv/pip-install.log | tail -30 >&2
    log "pip install failed (full log: .venv/pip-install.log)"; exit 1
  fi
  .venv/bin/python -c "import core.tf_env, faiss, apache_beam, grpc, redis, dask.distributed" || { log "install check failed"; exit 1; }
  rm -f .venv/.recsys-installed-*
  touch "$STAMP"
fi
log "ready: $(.venv/bin/python --version), $(redis-server --version | cut -d' ' -f3), $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)"
