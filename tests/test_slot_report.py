import hashlib

from click.testing import CliRunner

from sonicpi_gen.folders import STATUS_SCHEMA, read_manifest, write_manifest, write_status
from sonicpi_gen.cli import main
from sonicpi_gen.expand import Program, write_programs
from sonicpi_gen.slot_report import format_slot_report, report_slot_failures


def _renders(tmp_path):
    """Six programs of template t: every one with synth 'zawa' is silent, one with 'saw' fails."""
    plan = [("saw", 1, "ok"), ("saw", 2, "runtime_error"), ("saw", 3, "ok"),
            ("zawa", 1, "silent"), ("zawa", 2, "silent"), ("beep", 3, "ok")]
    programs = [Program("t", i, i, 0, {"lead": synth, "n": n}, f"use_synth :{synth}\nplay {60 + n}\n# {i}\n")
                for i, (synth, n, _) in enumerate(plan)]
    write_programs(tmp_path / "programs", programs, {"command": "test"})
    renders = tmp_path / "renders"
    renders.mkdir()
    write_manifest(renders, read_manifest(tmp_path / "programs").to_pylist())
    rows = {}
    for program, (_, _, status) in zip(programs, plan):
        row = {name: None for name in STATUS_SCHEMA.names}
        row.update(id=program.id, template="t", status=status,
                   code_sha256=hashlib.sha256(program.code.encode()).hexdigest())
        rows[program.id] = row
    write_status(renders, rows)
    return renders


def test_counts_per_template_and_slot_value(tmp_path):
    report = report_slot_failures([_renders(tmp_path)])
    assert dict(report.templates["t"]) == {"ok": 3, "runtime_error": 1, "silent": 2}
    assert report.ok_share() == 0.5
    rows = [(r.slot, r.value, r.programs, r.not_ok, r.statuses) for r in report.values]
    # Worst share first; ties by count, then slot name.
    assert rows == [
        ("lead", '"zawa"', 2, 2, {"silent": 2}),
        ("n", "2", 2, 2, {"runtime_error": 1, "silent": 1}),
        ("n", "1", 2, 1, {"silent": 1}),
        ("lead", '"saw"', 3, 1, {"runtime_error": 1}),
    ]


def test_markdown_and_cli(tmp_path):
    renders = _renders(tmp_path)
    text = format_slot_report(report_slot_failures([renders]), min_share=1.0)
    assert text.startswith("6 programs of 1 templates; 3 ok (50.0%)")
    assert '| t | lead | `"zawa"` | 2 | 2 | silent 2 |' in text
    assert '"saw"' not in text  # 1 of 3: below --min-share 1.0
    result = CliRunner().invoke(main, ["slot-report", "--in", str(renders), "--out", str(tmp_path / "r.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.md").read_text().startswith("6 programs of 1 templates")
