#!/usr/bin/env bash
# Installs what the tests need (Sonic Pi server stack, venv, torch CPU) and runs them all,
# including the integration tests that boot real Sonic Pi servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --ml
exec .venv/bin/python -m pytest -q -rs "$@"
