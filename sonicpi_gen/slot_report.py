"""Which slot values make programs fail or fall silent: `report_slot_failures`.

The grammar checks catch what can be known before rendering (names, ranges, syntax);
what a value does to the sound is only known from the renders' status table. This
module joins a renders folder's manifest (each program's template and slot values)
with its status rows, and counts per template and per slot value how many programs
were not `ok` (silent, runtime_error, syntax_error, ...).

Every program varies all slots at once, so a value's count is an association, not a
proof: a value that is not ok in every program that has it (and in more than one) is
a strong lead; one bad program among many is noise from the other slots.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ValueRow:
    """One slot value of one template that was not ok at least once."""

    template: str
    slot: str
    value: str  # the value as JSON text
    programs: int  # rendered programs with this value
    not_ok: int
    statuses: dict  # status -> count, for the programs not ok


@dataclass
class SlotReport:
    templates: dict = field(default_factory=dict)  # template -> Counter of statuses
    values: list = field(default_factory=list)  # ValueRow, worst first within each template

    def ok_share(self) -> float:
        total = sum(sum(c.values()) for c in self.templates.values())
        ok = sum(c["ok"] for c in self.templates.values())
        return ok / total if total else 0.0


def report_slot_failures(renders_dirs: list[Path]) -> SlotReport:
    """Count statuses per template and per (template, slot, value) over rendered programs.

    Args:
        renders_dirs: renders folders (status.parquet + the programs' manifest.parquet).
    A program counts once however many groups it is in; programs without a status row
    (not rendered yet) are left out.
    """
    from sonicpi_gen.dataset import read_renders

    manifest, statuses = read_renders([Path(d) for d in renders_dirs])
    report = SlotReport()
    per_value: dict = defaultdict(Counter)
    seen = set()
    for row in manifest:
        status = statuses.get(row["id"])
        if status is None or row["id"] in seen:
            continue
        seen.add(row["id"])
        report.templates.setdefault(row["template"], Counter())[status["status"]] += 1
        for slot, value in sorted(json.loads(row["params"] or "{}").items()):
            per_value[(row["template"], slot, json.dumps(value, sort_keys=True))][status["status"]] += 1
    for (template, slot, value), counts in sorted(per_value.items()):
        bad = {s: n for s, n in sorted(counts.items()) if s != "ok"}
        if bad:
            report.values.append(ValueRow(template, slot, value, sum(counts.values()),
                                          sum(bad.values()), bad))
    report.values.sort(key=lambda r: (r.template, -r.not_ok / r.programs, -r.not_ok, r.slot, r.value))
    return report


def format_slot_report(report: SlotReport, min_share: float = 0.0) -> str:
    """The report as Markdown: a table per template, then the slot values not ok, worst
    first, those not ok in at least `min_share` of their programs."""
    statuses = sorted({s for c in report.templates.values() for s in c} | {"ok"},
                      key=lambda s: (s != "ok", s))
    total = Counter()
    for counts in report.templates.values():
        total.update(counts)
    lines = [f"{sum(total.values())} programs of {len(report.templates)} templates; "
             f"{total['ok']} ok ({100 * report.ok_share():.1f}%)", "",
             "| template | programs | " + " | ".join(statuses) + " |",
             "|---|---:|" + "---:|" * len(statuses)]
    for template, counts in sorted(report.templates.items()):
        if set(counts) == {"ok"} and min_share > 0:
            continue
        lines.append(f"| {template} | {sum(counts.values())} | "
                     + " | ".join(str(counts[s]) for s in statuses) + " |")
    lines += ["", "Slot values not ok (a value not ok in every program with it, in more than "
              "one program, is a strong lead; every program varies all slots at once):", "",
              "| template | slot | value | programs with it | not ok | statuses |",
              "|---|---|---|---:|---:|---|"]
    for row in report.values:
        if row.not_ok / row.programs >= min_share:
            how = ", ".join(f"{s} {n}" for s, n in row.statuses.items())
            lines.append(f"| {row.template} | {row.slot} | `{row.value}` | {row.programs} | "
                         f"{row.not_ok} | {how} |")
    return "\n".join(lines) + "\n"
