#!/usr/bin/env bash
# The `tutorial` dataset configuration, end to end: extract the tutorial's code blocks,
# lift them into templates, render each block itself (the templates' defaults), keep the
# templates whose block renders ok (audible, no error), expand N programs of each, render
# them and build the dataset's `tutorial` configuration.
#   scripts/tutorial.sh [WORK_DIR] [N]        (defaults: work/tutorial 10)
# Every step resumes or rewrites its own folder; rendering is the long part.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work/tutorial}
N=${2:-10}
PY=${PY:-.venv/bin/python}
GEN="$PY -m sonicpi_gen.cli"

$PY scripts/extract_tutorial.py --out "$W/blocks"
$GEN templatize "$W/blocks" --out "$W/templates" --min-programs "$N" | tail -n 1
$GEN expand --defaults --templates-dir "$W/templates" --out "$W/blocks_programs" --check
$GEN render --in "$W/blocks_programs" --out "$W/blocks_renders"
# A template whose own block does not render ok (silent, an error) is left out.
audible=$($PY - "$W/blocks_renders" <<'PYEOF'
import sys
from sonicpi_gen.slot_report import report_slot_failures
report = report_slot_failures([sys.argv[1]])
print(",".join(t for t, counts in sorted(report.templates.items()) if set(counts) == {"ok"}))
PYEOF
)
echo "$(tr ',' '\n' <<<"$audible" | grep -c .) templates whose block renders ok"
$GEN expand --n "$N" --seed 0 --templates "$audible" --templates-dir "$W/templates" \
  --out "$W/programs" --check
$GEN render --in "$W/programs" --out "$W/renders"
$GEN slot-report --in "$W/renders" --out "$W/slot_report.md"
$GEN dataset build --tutorial-in "$W/renders" --out "$W/dataset" --configs tutorial
