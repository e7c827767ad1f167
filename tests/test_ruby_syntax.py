import pytest

pytest.importorskip("tree_sitter_ruby", reason="needs the `templatize` extra (scripts/setup.sh installs it)")

from sonicpi_gen.ruby_syntax import Owner, RubySyntaxError, find_literals, option_uses  # noqa: E402

PROGRAM = """use_bpm 90
use_synth :prophet
live_loop :lead do
  notes = (ring :e3, :g3)
  play notes.tick, cutoff: 80, amp: -0.5
  sleep [0.25, 0.5].choose
end
4.times do
  sample :bd_haus, rate: 2
end
with_fx :echo, phase: 0.25 do
  play chord(:e3, 'm7')
  play 60 + 12
end
"""


def _roles(code):
    return [(lit.text, lit.role, lit.option) for lit in find_literals(code)]


def test_literals_get_their_role_from_the_parse_tree():
    assert _roles(PROGRAM) == [
        ("90", "bpm", None), (":prophet", "synth", None), (":lead", None, None),
        (":e3", "note", None), (":g3", "note", None),  # through `notes = ...; play notes.tick`
        ("80", "option", "cutoff"), ("-0.5", "option", "amp"),
        ("0.25", "rhythm", None), ("0.5", "rhythm", None),
        ("4", "repeat", None), (":bd_haus", "sample", None), ("2", "option", "rate"),
        (":echo", "fx", None), ("0.25", "option", "phase"),
        (":e3", "note", None), ("'m7'", "chord", None),
        ("60", None, None), ("12", None, None),  # operands of arithmetic stay unknown
    ]


def test_spans_values_and_owners():
    lits = {(lit.text, lit.start): lit for lit in find_literals(PROGRAM)}
    prophet = PROGRAM.encode().index(b":prophet")
    cutoff = lits[("80", PROGRAM.encode().index(b"80"))]
    assert cutoff.owner == Owner("synth", "prophet", (prophet, prophet + len(":prophet")))
    amp = next(lit for lit in lits.values() if lit.option == "amp")
    assert amp.value == -0.5 and amp.kind == "float"
    assert PROGRAM.encode()[amp.start:amp.end] == b"-0.5"
    phase = next(lit for lit in lits.values() if lit.option == "phase")
    assert phase.owner.kind == "fx" and phase.owner.name == "echo" and phase.scope is None
    rate = next(lit for lit in lits.values() if lit.option == "rate")
    assert rate.owner == Owner("sample", "sample") and rate.scope is not None
    assert next(lit for lit in lits.values() if lit.text == "'m7'").value == "m7"


def test_default_synth_is_beep_and_with_synth_counts():
    code = "play 60, amp: 1\nwith_synth :saw do\n  play 62, amp: 1\nend\n"
    owners = [lit.owner.name for lit in find_literals(code) if lit.option == "amp"]
    assert owners == ["beep", "saw"]


def test_option_uses_include_non_literal_values():
    uses = option_uses("use_synth :tb303\nplay 40, cutoff: rrand(60, 90), res: 0.9\ncontrol s, amp: 1\n")
    assert [(o.name if o else None, key) for o, key in uses] == [("tb303", "cutoff"), ("tb303", "res"),
                                                                 (None, "amp")]


def test_unreadable_forms_have_no_value():
    assert [(lit.text, lit.value) for lit in find_literals("play 1e3\nplay 1_000\nplay 0x10\n")] == [
        ("1e3", None), ("1_000", None), ("0x10", None)]


def test_syntax_error_names_the_line():
    with pytest.raises(RubySyntaxError, match=r"near line 2"):
        find_literals("play 60\nplay (62, amp: 1\n")
