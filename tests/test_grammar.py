import random

import pytest

from sonicpi_gen.grammar import (Domain, GrammarError, list_templates, load_grammar,
                                 make_environment)
from sonicpi_gen.inventory import load_inventory, violated_check

BUNDLED_PIECES = [
    "haunted", "ambient_experiment", "chord_inversions", "filtered_dnb", "fm_noise", "jungle",
    "ocean", "reich_phase", "acid", "ambient", "compus_beats", "echo_drama", "idm_breakbeat",
    "tron_bike", "wob_rhythm", "bach", "driving_pulse", "monday_blues", "rerezzed",
    "square_skit", "blimp_zones", "blip_rhythm", "shufflit", "tilburg_2", "time_machine",
    "cloud_beat", "sonic_dreams",
]


def test_there_is_one_template_per_bundled_piece():
    assert sorted(list_templates()) == sorted(BUNDLED_PIECES)


@pytest.mark.parametrize("name", BUNDLED_PIECES)
def test_bundled_template_loads_and_can_yield_500(name):
    grammar = load_grammar(name)
    assert grammar.size() >= 500
    roles = {slot.role for slot in grammar.slots.values()}
    assert "amp" in roles and roles & {"sleep", "rhythm"}, "perturbation families need amp and sleep"
    code = grammar.render(grammar.draw(random.Random(0)))
    assert "use_bpm" not in code, "tempo is the renderer's (120 BPM)"


def test_inventory_has_the_3_2_2_names():
    inv = load_inventory("3.2.2")
    assert inv.sonic_pi_version == "3.2.2"
    assert {"tb303", "prophet", "dark_ambience"} <= set(inv.synths)
    assert "blase" not in inv.synths  # 4.x only
    assert {"reverb", "echo", "slicer"} <= set(inv.fx)
    assert "bd_haus" in inv.samples and "minor_pentatonic" in inv.scales and "m7" in inv.chords
    assert inv.fx["reverb"]["room"]["checks"] == [{"kind": "between_inclusive", "args": [0, 1]}]


@pytest.mark.parametrize("checks, value, broken", [
    ([{"kind": "between_inclusive", "args": [0, 1]}], 1.0, None),
    ([{"kind": "between_inclusive", "args": [0, 1]}], 1.5, "between 0 and 1 inclusive"),
    ([{"kind": "less_than_oet", "args": [130]}], 131, "<= 130"),
    ([{"kind": "positive_not_zero", "args": []}], 0, "> 0"),
    ([{"kind": "one_of", "args": [[1, 2, 3]]}], 4, "one of [1, 2, 3]"),
])
def test_violated_check(checks, value, broken):
    assert violated_check(checks, value) == broken


def test_float_domain_is_an_exact_grid():
    assert Domain.parse("x", {"min": 0.1, "max": 0.5, "step": 0.1}, "float").values == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert Domain.parse("x", {"min": 60, "max": 80, "step": 10}, None).values == [60, 70, 80]


def test_filters_write_ruby_literals():
    env = make_environment(__import__("pathlib").Path("."))
    tpl = env.from_string("{{ a | note }} {{ b | note }} {{ c | rb }} {{ d | opts }} {{ e | rb }}")
    out = tpl.render(a="Fs3", b=["e3", "r", 60], c=[1, 0.5, "x"], d={"room": 0.5, "mix": 1.0}, e=True)
    assert out == ':fs3 [:e3, :r, 60] [1, 0.5, "x"] room: 0.5, mix: 1.0 true'


def test_tiny_template_draws_values_from_its_domains(tiny_templates):
    grammar = load_grammar("tiny", tiny_templates)
    params = grammar.draw(random.Random(3))
    assert params["lead"] in ("tb303", "saw") and params["cutoff"] in (60, 70, 80, 90, 100)
    assert f"cutoff: {params['cutoff']}" in grammar.render(params)


@pytest.mark.parametrize("old, new, message", [
    ('choices = ["tb303", "saw"]', 'choices = ["tb303", "blase"]',
     r"template 'tiny', slot 'lead': synth 'blase' is not in Sonic Pi 3.2.2; allowed: .*tb303"),
    ("max = 100\nstep = 10", "max = 140\nstep = 10",
     r"template 'tiny', slot 'cutoff': synth 'tb303' option 'cutoff' value 140 is out of range; Sonic Pi allows <= 130"
     r"|template 'tiny', slot 'cutoff': synth '\w+' option 'cutoff' value 1[34]0 is out of range"),
    ('option = "cutoff"', 'option = "wobble"',
     r"template 'tiny', slot 'cutoff': synth 'tb303' has no option 'wobble'; its options: .*cutoff"),
    ("max = 1.0\nstep = 0.1", "max = 5.0\nstep = 0.5",
     r"template 'tiny', slot 'amp': value 2.5 is above the toolkit's limit 2.0"),
    ('role = "sleep"', 'role = "tempo"', r"template 'tiny', slot 'beat': role 'tempo' is unknown"),
    ('type = "synth"', 'type = "synthesizer"', r"template 'tiny', slot 'lead': type 'synthesizer' is unknown"),
])
def test_broken_grammar_names_template_slot_and_value(tiny_templates, old, new, message):
    path = tiny_templates / "tiny.toml"
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(GrammarError, match=message):
        load_grammar("tiny", tiny_templates)


def test_fx_options_are_checked_for_the_chosen_fx(tiny_templates):
    (tiny_templates / "tiny.toml").write_text((tiny_templates / "tiny.toml").read_text() + """
[slots.space]
type = "fx"
part = "global"
choices = ["reverb", "echo"]

[slots.space_opts]
type = "fx_options"
part = "global"
fx = "space"
[slots.space_opts.per_fx.reverb]
room = { min = 0.5, max = 0.9, step = 0.1 }
[slots.space_opts.per_fx.echo]
room = { choices = [0.5] }
""")
    (tiny_templates / "tiny.rb.j2").write_text(
        "with_fx :{{ space }}, {{ space_opts | opts }} do\n" + (tiny_templates / "tiny.rb.j2").read_text() + "end\n")
    with pytest.raises(GrammarError, match=r"slot 'space_opts', fx 'echo': fx 'echo' has no option 'room'"):
        load_grammar("tiny", tiny_templates)


def test_template_using_an_undeclared_slot_is_an_error(tiny_templates):
    (tiny_templates / "tiny.rb.j2").write_text("play {{ note }}\n{{ seed }}{{ lead }}{{ amp }}{{ beat }}{{ cutoff }}")
    with pytest.raises(GrammarError, match=r"template 'tiny': tiny.rb.j2 uses \['note'\], which the grammar does not declare"):
        load_grammar("tiny", tiny_templates)


def test_declared_but_unused_slot_is_an_error(tiny_templates):
    (tiny_templates / "tiny.rb.j2").write_text("{{ seed }}{{ lead }}{{ amp }}{{ beat }}\n")
    with pytest.raises(GrammarError, match=r"slots \['cutoff'\] are declared but not used"):
        load_grammar("tiny", tiny_templates)


def test_jinja_syntax_error_names_the_file_and_line(tiny_templates):
    (tiny_templates / "tiny.rb.j2").write_text("play 60\n{{ seed \n")
    with pytest.raises(GrammarError, match=r"template 'tiny': tiny.rb.j2 line 2"):
        load_grammar("tiny", tiny_templates)
