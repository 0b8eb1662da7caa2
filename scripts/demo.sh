#!/usr/bin/env bash
# Sets everything up, then runs the main job end to end on MovieLens-100k (`recsys demo`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/recsys demo "$@"
