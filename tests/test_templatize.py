import json
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tree_sitter_ruby", reason="needs the `templatize` extra (scripts/setup.sh installs it)")

from sonicpi_gen.cli import main  # noqa: E402
from sonicpi_gen.expand import expand_defaults, expand_templates  # noqa: E402
from sonicpi_gen.grammar import GrammarError, list_templates, load_grammar  # noqa: E402
from sonicpi_gen.templatize import templatize_programs  # noqa: E402
from sonicpi_gen.tutorial import TUTORIAL_HTML, extract_tutorial  # noqa: E402

SMALL = """use_bpm 100
use_random_seed 7
use_synth :prophet
live_loop :lead do
  play :e3, amp: 0.5, cutoff: 80
  sleep 0.5
end
live_loop :drums do
  sample :bd_haus, rate: 1
  2.times do
    sample :drum_cymbal_closed
    sleep 0.25
  end
end
with_fx :echo, mix: 0.4 do
  play 60 + 12, release: 2
end
"""


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def small(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.rb").write_text(SMALL)
    summary = templatize_programs([src], tmp_path / "t")
    return tmp_path / "t", summary


def test_small_program_lifts_into_known_slots(small):
    out, summary = small
    assert [t.name for t in summary.templates] == ["small"] and summary.skipped == []
    assert (out / "small.rb.j2").read_text() == """use_bpm {{ tempo_1 }}
use_random_seed {{ seed_1 }}
use_synth :{{ synth_1 }}
live_loop :lead do
  play :{{ note_1 }}, amp: {{ amp_1 }}, cutoff: {{ cutoff_1 }}
  sleep {{ sleep_1 }}
end
live_loop :drums do
  sample :{{ sample_1 }}, rate: {{ rate_1 }}
  {{ times_1 }}.times do
    sample :{{ sample_2 }}
    sleep {{ sleep_2 }}
  end
end
with_fx :{{ fx_1 }}, mix: {{ mix_1 }} do
  play 60 + 12, release: {{ release_1 }}
end
"""
    slots = tomllib.loads((out / "small.toml").read_text())["slots"]
    summary_of = {name: (s["type"], s.get("role"), s["part"], s["default"]) for name, s in slots.items()}
    assert summary_of == {
        "tempo_1": ("int", "bpm", "global", 100), "seed_1": ("int", "seed", "global", 7),
        "synth_1": ("synth", None, "melody", "prophet"), "note_1": ("note", "note", "melody", "e3"),
        "amp_1": ("float", "amp", "melody", 0.5), "cutoff_1": ("int", "cutoff", "melody", 80),
        "sleep_1": ("float", "sleep", "melody", 0.5), "sample_1": ("sample", None, "drum", "bd_haus"),
        "rate_1": ("float", "rate", "drum", 1), "times_1": ("int", "density", "drum", 2),
        "sample_2": ("sample", None, "drum", "drum_cymbal_closed"),
        "sleep_2": ("float", "sleep", "drum", 0.25), "fx_1": ("fx", None, "global", "echo"),
        "mix_1": ("float", "other", "global", 0.4), "release_1": ("float", "release", "melody", 2),
    }
    # Ranges centred on the original value, inside Sonic Pi's and the toolkit's limits.
    assert slots["tempo_1"]["choices"] == [100, 80, 90, 110, 120]
    assert (slots["seed_1"]["min"], slots["seed_1"]["max"]) == (0, 999)
    assert slots["note_1"]["choices"][0] == "e3" and sorted(slots["note_1"]["choices"][1:3]) == ["a2", "as2"]
    assert len(slots["note_1"]["choices"]) == 15  # a fifth either side
    assert slots["amp_1"]["choices"] == [0.5, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8]
    assert slots["cutoff_1"]["choices"] == [80, 65, 70, 75, 85, 90, 95]
    assert (slots["cutoff_1"]["option"], slots["cutoff_1"]["of"]) == ("cutoff", "synth_1")
    assert slots["sleep_1"]["choices"] == [0.5, 0.25, 0.375, 0.75, 1.0]
    assert slots["times_1"]["choices"] == [2, 1, 3, 4]
    assert slots["mix_1"]["choices"] == [0.4, 0.2, 0.3, 0.5, 0.6] and slots["mix_1"]["of"] == "fx_1"
    # Same kind: kicks for a kick, cymbals for a hat, space fx for an echo, leads for a lead.
    assert "drum_heavy_kick" in slots["sample_1"]["choices"]
    assert not {"drum_snare_hard", "drum_cymbal_open"} & set(slots["sample_1"]["choices"])
    assert set(slots["sample_2"]["choices"]) <= {s for s in slots["sample_2"]["choices"] if "cymbal" in s or "splash" in s}
    assert set(slots["fx_1"]["choices"]) == {"echo", "reverb", "gverb", "ping_pong"}
    assert "saw" in slots["synth_1"]["choices"] and "pretty_bell" not in slots["synth_1"]["choices"]


def test_defaults_give_back_the_source(small, tmp_path):
    out, _ = small
    programs = expand_defaults(tmp_path / "p", templates_dir=out, check=True)
    assert [p.code for p in programs] == [SMALL]
    assert (tmp_path / "p" / "small" / f"{programs[0].id}.rb").read_bytes() == SMALL.encode()


def test_lifted_grammar_expands_deterministically(small, tmp_path):
    out, _ = small
    expand_templates(tmp_path / "a", n=20, seed=3, templates_dir=out, check=True)
    expand_templates(tmp_path / "b", n=20, seed=3, templates_dir=out)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    first = {p.stem for p in (tmp_path / "a" / "small").glob("*.rb")}
    other = expand_templates(tmp_path / "c", n=20, seed=4, templates_dir=out)
    assert len(first) == 20 and {p.id for p in other} != first


def test_templatize_is_byte_identical_on_rerun(small, tmp_path):
    out, _ = small
    templatize_programs([tmp_path / "src"], tmp_path / "again")
    assert _files(out) == _files(tmp_path / "again")


@pytest.fixture(scope="module")
def lifted_bundled(tmp_path_factory):
    """One expanded program of every hand-written template, lifted."""
    root = tmp_path_factory.mktemp("bundled")
    programs = expand_templates(root / "programs", n=1, seed=0)
    src = root / "src"
    src.mkdir()
    for p in programs:
        (src / f"{p.template}.rb").write_text(p.code)
    return src, templatize_programs([src], root / "templates")


@pytest.mark.parametrize("name", list_templates())
def test_each_hand_written_template_round_trips(lifted_bundled, name):
    src, summary = lifted_bundled
    assert name in {t.name for t in summary.templates}, summary.skipped
    grammar = load_grammar(name, summary.out_dir)
    assert grammar.render(grammar.defaults()) == (src / f"{name}.rb").read_text()
    assert grammar.size() >= 10


def test_expand_defaults_cli_writes_every_source(lifted_bundled, tmp_path):
    src, summary = lifted_bundled
    result = CliRunner().invoke(main, ["expand", "--defaults", "--templates-dir", str(summary.out_dir),
                                       "--out", str(tmp_path / "p"), "--check"])
    assert result.exit_code == 0, result.output
    for name in list_templates():
        (written,) = (tmp_path / "p" / name).glob("*.rb")
        assert written.read_bytes() == (src / f"{name}.rb").read_bytes()


def test_hand_written_templates_have_no_defaults(tmp_path):
    with pytest.raises(GrammarError, match=r"template 'acid': slots \['seed', .*\] have no 'default'"):
        expand_defaults(tmp_path / "p", templates=["acid"])


@pytest.mark.parametrize("code, reason", [
    ("# only a comment\nputs 'hello'\n", r"nothing to lift: no literal worth varying"),
    ("live_loop :a do\n  play 60\n", r"Ruby syntax error: .*(end-of-input|syntax error)"),
    ("use_synth :blase\nplay 60\nsleep 1\n",
     r"unknown synth :blase in Sonic Pi 3.2.2 \(it would fail with 'Unknown synth'\)"),
    ("sample :guit_em9\n", r"its grammar yields fewer than 10 distinct programs"),  # 4 guitars
    ("play 60\r\nsleep 1\r\n", r"carriage returns"),
])
def test_program_that_cannot_be_lifted_gets_its_line_and_the_rest_go_on(tmp_path, code, reason):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_bad.rb").write_bytes(code.encode())
    (src / "b_good.rb").write_text(SMALL)
    summary = templatize_programs([src], tmp_path / "t")
    assert [t.name for t in summary.templates] == ["b_good"]
    (skipped,) = summary.skipped
    assert skipped.source.endswith("a_bad.rb")
    assert re.search(reason, skipped.reason), skipped.reason
    provenance = json.loads((tmp_path / "t" / "templatize.json").read_text())
    assert provenance["skipped"] == [{"source": skipped.source, "reason": skipped.reason}]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["b_good.rb.j2", "b_good.toml",
                                                                  "templatize.json"]


def test_default_outside_the_domain_is_an_error(small):
    out, _ = small
    path = out / "small.toml"
    path.write_text(path.read_text().replace("default = 100", "default = 105", 1))
    with pytest.raises(GrammarError, match=r"slot 'tempo_1': default 105 is not one of the slot's values"):
        load_grammar("small", out)


def test_templatize_cli_reports_skips(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.rb").write_text(SMALL)
    (src / "bad.rb").write_text("use_synth :blase\nplay 60\n")
    result = CliRunner().invoke(main, ["templatize", str(src), "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert f"skipped {src / 'bad.rb'}: unknown synth :blase" in result.output
    assert "lifted 1 of 2 programs" in result.output


def test_templatize_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "keep.txt").write_text("mine")
    (tmp_path / "a.rb").write_text(SMALL)
    with pytest.raises(ValueError, match=r"is not a templatize output"):
        templatize_programs([tmp_path / "a.rb"], tmp_path / "t")
    assert (tmp_path / "t" / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(not TUTORIAL_HTML.exists(), reason="needs Debian's sonic-pi-server-doc (scripts/setup.sh)")
def test_tutorial_blocks_round_trip(tmp_path):
    index = extract_tutorial(tmp_path / "blocks")
    assert index["license"] == "CC BY-SA 4.0" and len(index["files"]) > 300
    summary = templatize_programs([tmp_path / "blocks"], tmp_path / "t")
    assert len(summary.templates) >= 0.55 * len(index["files"])
    for lifted in summary.templates:
        grammar = load_grammar(lifted.name, tmp_path / "t")
        assert grammar.render(grammar.defaults()) == Path(lifted.source).read_text(), lifted.name
    # Deterministic: the same blocks give the same files.
    extract_tutorial(tmp_path / "blocks2")
    assert _files(tmp_path / "blocks") == _files(tmp_path / "blocks2")


def test_programs_differing_only_in_lifted_literals_share_one_template(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.rb").write_text(SMALL)
    (src / "b.rb").write_text(SMALL.replace("sleep 0.5", "sleep 1").replace(":prophet", ":saw"))
    summary = templatize_programs([src], tmp_path / "t")
    assert [t.name for t in summary.templates] == ["a"]
    assert summary.skipped[0].reason == "it differs from 'a' only in lifted literals: that template's grammar covers it"


TRICKY = """# Café — “quotes” {{ not jinja }} {% nor this %} {# nor this #}
x = {a: 1}
puts "#{x} {{y}}"
use_synth :saw
play 60, amp: 0.5 # ünïcödé
sleep 1
"""


def test_jinja_like_text_and_non_ascii_bytes_survive_the_round_trip(tmp_path):
    (tmp_path / "tricky.rb").write_text(TRICKY)
    summary = templatize_programs([tmp_path / "tricky.rb"], tmp_path / "t")
    assert summary.skipped == [] and summary.templates[0].slots == 4
    grammar = load_grammar("tricky", tmp_path / "t")
    assert grammar.render(grammar.defaults()) == TRICKY
    assert "{% raw %}" in (tmp_path / "t" / "tricky.rb.j2").read_text()
