#!/usr/bin/env bash
# The main job on a small default: 27 templates x N programs -> audio -> a local
# Hugging Face dataset in work/dataset. Reruns resume. N defaults to 2 (54 clips).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-2}"
bash scripts/setup.sh
.venv/bin/sonicpi-gen expand --n "$N" --seed 0 --out work/programs --check
.venv/bin/sonicpi-gen render --in work/programs --out work/renders
.venv/bin/sonicpi-gen dataset build --in work/renders --out work/dataset
