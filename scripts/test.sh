#!/usr/bin/env bash
# Sets everything up, checks the layer contract (lint-imports) and lint (ruff), then runs the whole test
# suite (extra arguments go to pytest).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
echo "[test] lint-imports (layers go one way) and ruff" >&2
.venv/bin/lint-imports --no-cache
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
