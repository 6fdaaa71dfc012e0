#!/usr/bin/env bash
# README command 2: set up (first run only), lint, and run the whole test suite on real
# weights and real speech (offline: nothing is fetched from a model hub).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh >&2
export HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false
.venv/bin/ruff check .
.venv/bin/mypy  # mypy.ini: src/, typed defs required
exec .venv/bin/python -m pytest "$@"
