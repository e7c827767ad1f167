import json
import random
import subprocess

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sonicpi_gen.cli import main
from sonicpi_gen.expand import (ExpandError, check_syntax, expand_families, expand_scenarios,
                                expand_templates, program_id, shared_prefix)
from sonicpi_gen.grammar import list_templates


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_expand_is_distinct_and_byte_identical_on_rerun(tmp_path):
    first = expand_templates(tmp_path / "a", n=30, seed=5)
    expand_templates(tmp_path / "b", n=30, seed=5)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert len(first) == 30 * len(list_templates())
    assert len({p.code for p in first}) == len(first)
    other = expand_templates(tmp_path / "c", n=30, seed=6)
    assert {p.id for p in other} != {p.id for p in first}


def test_manifest_rows_match_the_program_files(tmp_path):
    programs = expand_templates(tmp_path / "p", n=3, seed=0, templates=["haunted", "acid"])
    rows = pq.read_table(tmp_path / "p" / "manifest.parquet").to_pylist()
    assert [r["id"] for r in rows] == [p.id for p in programs]
    for row in rows:
        code = (tmp_path / "p" / row["template"] / f"{row['id']}.rb").read_text()
        assert code == row["code"] and program_id(code) == row["id"]
        assert set(json.loads(row["params"])) >= {"seed"} and row["seed"] == 0
    assert [r["index"] for r in rows if r["template"] == "acid"] == [0, 1, 2]
    provenance = json.loads((tmp_path / "p" / "provenance.json").read_text())
    assert provenance["sonic_pi_version"] == ["3.2.2"] and provenance["settings"]["n"] == 3
    assert provenance["stage"] == "expand" and provenance["command"] == "sonicpi-gen expand"


def test_first_programs_do_not_depend_on_n(tmp_path):
    few = expand_templates(tmp_path / "a", n=5, seed=1, templates=["bach"])
    many = expand_templates(tmp_path / "b", n=50, seed=1, templates=["bach"])
    assert [p.id for p in many[:5]] == [p.id for p in few]


@pytest.mark.parametrize("name", list_templates())
def test_ruby_c_passes_on_a_sample_of_each_template(tmp_path, name):
    expand_templates(tmp_path / "p", n=500, seed=0, templates=[name])
    files = sorted((tmp_path / "p" / name).glob("*.rb"))
    for path in random.Random(0).sample(files, 5):
        out = subprocess.run(["ruby", "-c", str(path)], capture_output=True, text=True)
        assert out.stdout.strip() == "Syntax OK", (path.read_text(), out.stderr)


def test_check_syntax_reports_the_broken_file(tmp_path):
    good, bad = tmp_path / "good.rb", tmp_path / "bad.rb"
    good.write_text("live_loop :a do\n  play 60\n  sleep 1\nend\n")
    bad.write_text("live_loop :a do\n  play 60\n")
    failed = check_syntax([good, bad])
    assert list(failed) == [bad]
    assert "syntax error" in failed[bad] and "end-of-input" in failed[bad]


def test_too_small_grammar_says_so(tiny_templates, tmp_path):
    with pytest.raises(ExpandError, match=r"template 'tiny' can yield at most 12000 distinct .* fewer than --n 20000"):
        expand_templates(tmp_path / "p", n=20000, templates=["tiny"], templates_dir=tiny_templates)


def test_broken_template_leaves_no_output_and_keeps_the_previous_one(tiny_templates, tmp_path):
    out = tmp_path / "p"
    expand_templates(out, n=4, templates=["tiny"], templates_dir=tiny_templates)
    before = _files(out)
    (tiny_templates / "tiny.toml").write_text((tiny_templates / "tiny.toml").read_text()
                                              .replace('"tb303", "saw"', '"tb303", "kalimba"'))
    result = CliRunner().invoke(main, ["expand", "--n", "4", "--templates", "tiny", "--templates-dir",
                                       str(tiny_templates), "--out", str(out)])
    assert result.exit_code == 1
    assert "template 'tiny', slot 'lead': synth 'kalimba' is not in Sonic Pi 3.2.2" in result.output
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".p.")] == []


def test_check_failure_writes_nothing(tiny_templates, tmp_path):
    (tiny_templates / "tiny.rb.j2").write_text((tiny_templates / "tiny.rb.j2").read_text().replace("end\n", ""))
    with pytest.raises(Exception, match=r"programs fail `ruby -c`; first: template 'tiny'"):
        expand_templates(tmp_path / "p", n=3, templates=["tiny"], templates_dir=tiny_templates, check=True)
    assert not (tmp_path / "p").exists()


def test_perturbation_families_differ_from_the_base_in_one_slot(tmp_path):
    programs = expand_families(tmp_path / "f", ["amp", "sleep", "bpm", "synth"], k=5, seed=0,
                               templates=["haunted", "acid"])
    groups = {}
    for p in programs:
        groups.setdefault(p.group_id, []).append(p)
    assert len(groups) == 8
    for members in groups.values():
        base, variants = members[0], members[1:]
        assert base.varied is None and len(variants) >= 2
        for v in variants:
            changed = {k for k in set(base.params) | set(v.params) if base.params.get(k) != v.params.get(k)}
            slot = v.varied
            assert changed <= {slot, f"{slot}_opts", "space_opts"} and slot in changed
        if base.family == "bpm":
            assert all(v.code.startswith(f"use_bpm {v.params['bpm']}\n") for v in variants)
            assert all(v.code.split("\n", 1)[1] == base.code for v in variants)


def test_scenarios_share_the_prompt_and_vary_only_the_part(tmp_path):
    programs = expand_scenarios(tmp_path / "s", ["melody", "drum", "bass"], k=10, seed=0,
                                templates=["acid", "bach"])
    by_group = {}
    for p in programs:
        by_group.setdefault(p.group_id, []).append(p)
    assert {p.scenario for p in programs} == {"melody", "drum", "bass"}
    for members in by_group.values():
        assert len(members) == 10 and len({m.code for m in members}) == 10
        assert all(m.code.startswith(m.prompt) for m in members)
        part_slots = set(members[0].varied.split(","))
        for m in members[1:]:
            changed = {k for k in m.params if m.params[k] != members[0].params[k]}
            assert changed <= part_slots


def test_shared_prefix_is_whole_lines():
    assert shared_prefix(["a\nb\nc\n", "a\nb\nd\n", "a\nbx\n"]) == "a\n"


def test_cli_commands_run(tmp_path):
    runner = CliRunner()
    for args in (["expand", "--n", "2", "--templates", "haunted,acid", "--check"],
                 ["perturb", "--params", "amp,bpm", "--k", "3", "--templates", "acid"],
                 ["scenarios", "--scenarios", "bass", "--k", "3", "--templates", "bach"]):
        out = tmp_path / args[0]
        result = runner.invoke(main, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert len(pq.read_table(out / "manifest.parquet")) >= 3


def test_unknown_template_is_named(tmp_path):
    result = CliRunner().invoke(main, ["expand", "--templates", "nope", "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "unknown templates ['nope']" in result.output


def test_scenario_without_a_template_of_that_part_is_an_error(tmp_path):
    with pytest.raises(ExpandError, match=r"no template among \['acid'\] has slots of part 'bass'"):
        expand_scenarios(tmp_path / "s", ["bass"], templates=["acid"])
