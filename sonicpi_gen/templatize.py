"""Lift any Sonic Pi program into a template and its grammar: `templatize_programs`.

For each program, the literals whose role the Ruby parse tree tells (see ruby_syntax)
become typed slots: notes, chords, scales, synth/sample/fx names, synth/sample/fx
options, sleeps and rhythms, bpm, random seeds, repetition counts. Each slot's domain
is centred on the original value and kept inside Sonic Pi's own range for that option
(from the inventory) and the toolkit's limits; name slots choose among names of the
same kind (a kick for a kick, a pad for a pad). Every slot records its original value
as `default`, and the template keeps every other byte of the program, so
`expand --defaults` gives back the source byte for byte.

The output folder holds <name>.rb.j2 + <name>.toml per lifted program (the format of
templates/, docs/templates.md) and templatize.json, which says how it was made and
why each program that was not lifted was skipped.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from sonicpi_gen.folders import make_provenance, replace_dir, write_json_atomically
from sonicpi_gen.grammar import (AMP_MAX, ENVELOPE_MAX_BEATS, NOTE_RE, GrammarError, load_grammar)
from sonicpi_gen.inventory import Inventory, load_inventory, violated_check

logger = logging.getLogger(__name__)

# A lifted grammar must yield at least this many distinct programs (expand --n 10).
MIN_PROGRAMS = 10
PROVENANCE = "templatize.json"

# Same-kind name choices. A synth or fx is swapped only within its family, and only for
# one that accepts every option the program gives it.
SYNTH_FAMILIES = {
    "lead": ["beep", "sine", "saw", "square", "tri", "pulse", "dsaw", "dpulse", "dtri", "supersaw",
             "prophet", "zawa", "chiplead", "tech_saws", "blade", "hoover"],
    "modulated": ["mod_beep", "mod_sine", "mod_saw", "mod_dsaw", "mod_pulse", "mod_tri", "mod_fm", "fm"],
    "bass": ["tb303", "chipbass", "subpulse"],
    "bell": ["pretty_bell", "dull_bell", "pluck", "piano"],
    "pad": ["dark_ambience", "hollow", "growl"],
    "noise": ["noise", "bnoise", "cnoise", "gnoise", "pnoise", "chipnoise"],
}
FX_FAMILIES = {
    "space": ["reverb", "gverb", "echo", "ping_pong"],
    "filter": ["lpf", "hpf", "rlpf", "rhpf", "nlpf", "nhpf", "nrlpf", "nrhpf", "bpf", "rbpf", "nbpf",
               "nrbpf", "band_eq", "eq"],
    "drive": ["distortion", "bitcrusher", "krush", "tanh"],
    "modulation": ["flanger", "wobble", "slicer", "panslicer", "ixi_techno", "tremolo", "ring_mod",
                   "whammy", "vowel"],
    "pitch": ["pitch_shift", "octaver", "autotuner"],
    "dynamics": ["compressor", "normaliser", "level", "mono", "pan"],
}
# A sample's kind comes from its name where the name says it (a kick in any folder is a
# kick), else from its folder (the inventory's group: ambi, bass, loop, tabla...).
SAMPLE_KINDS = {"kick": ("bd_", "kick", "drum_bass"), "snare": ("sn_", "snare"),
                "cymbal": ("cymbal", "splash", "hat"), "tom": ("tom",)}
DRUM_GROUPS = ("bd", "sn", "drum", "elec", "perc", "loop", "tabla", "glitch")
CHORD_FAMILIES = {
    "triad": ["major", "minor", "diminished", "augmented", "sus2", "sus4"],
    "seventh": ["major7", "minor7", "dom7", "diminished7", "halfdim", "m7", "M7", "dim7", "m7b5"],
    "extended": ["m9", "maj9", "m11", "maj11", "m13", "add9", "madd9", "add11", "add13", "m6", "6", "9"],
}
SCALE_FAMILIES = {
    "pentatonic": ["major_pentatonic", "minor_pentatonic", "egyptian", "yu", "zhi", "jiao", "shang",
                   "ritusen", "chinese", "hirajoshi", "iwato", "kumoi", "pelog"],
    "diatonic": ["major", "minor", "ionian", "dorian", "phrygian", "lydian", "mixolydian",
                 "aeolian", "locrian", "harmonic_minor", "harmonic_major", "melodic_minor"],
    "blues": ["blues_major", "blues_minor"],
    "hexatonic": ["hex_major6", "hex_dorian", "hex_phrygian", "hex_major7", "hex_sus",
                  "hex_aeolian", "whole_tone", "augmented", "augmented2", "prometheus"],
}
# Multiplicative variation for times (sleeps, envelopes, phases) and rates: half to double.
FACTORS = ("0.5", "0.75", "1", "1.5", "2")
NOTE_SPREAD = 7  # semitones either side of the original note (a fifth)
BPM_STEP, BPM_MIN, BPM_MAX = 10, 40, 240
SEED_VALUES = 1000
NOTE_NAMES = ("c", "cs", "d", "ds", "e", "f", "fs", "g", "gs", "a", "as", "b")
PITCH_CLASS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
SYMBOL_SAFE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Options whose slot role is not "other".
OPTION_ROLES = {"amp": "amp", "pan": "pan", "attack": "attack", "decay": "decay",
                "sustain": "sustain", "release": "release", "cutoff": "cutoff", "lpf": "cutoff",
                "hpf": "cutoff", "res": "res", "rate": "rate"}
SLOT_BASE = {"bpm": "tempo", "repeat": "times", "rhythm": "sleep"}


class LiftError(ValueError):
    """A program cannot be lifted; the message says why."""


@dataclass
class Skipped:
    source: str
    reason: str


@dataclass
class Lifted:
    """One lifted program: its template text and grammar (the .toml as a dict)."""

    name: str
    source: str
    template: str
    grammar: dict
    slots: int = 0


@dataclass
class TemplatizeSummary:
    """What `templatize_programs` did: the templates written and the programs skipped."""

    out_dir: Path
    templates: list = field(default_factory=list)  # Lifted, in source order
    skipped: list = field(default_factory=list)  # Skipped, in source order

    @property
    def sources(self) -> int:
        return len(self.templates) + len(self.skipped)

    @property
    def mean_slots(self) -> float:
        return sum(t.slots for t in self.templates) / len(self.templates) if self.templates else 0.0


def find_sources(paths: list[Path]) -> list[Path]:
    """Files as given; folders as every .rb file under them, in sorted order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.rb") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a file nor a folder of .rb programs")
    return found


def template_name(path: Path, taken: set) -> str:
    """A template name from a file name: lower case, [a-z0-9_], made unique with _2, _3..."""
    base = re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "program"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def templatize_programs(sources: list[Path], out_dir: Path, min_programs: int = MIN_PROGRAMS,
                        inventory: Inventory | None = None) -> TemplatizeSummary:
    """Lift Sonic Pi programs (files, or folders of .rb files) into templates in out_dir.

    Args:
        sources: program files or folders (searched recursively for *.rb, sorted).
        out_dir: written all at once (a temporary folder renamed into place); an existing
            out_dir must be an earlier templatize output or empty.
        min_programs: a grammar that cannot yield this many distinct programs is skipped.
        inventory: the Sonic Pi inventory to check against (default: 3.2.2's).

    A program that cannot be lifted (not UTF-8, a Ruby syntax error, an unknown synth,
    sample or fx, nothing worth varying, a grammar that fails its checks) is skipped with
    its reason; the rest go on. Every template written passes the checks hand-written ones
    pass (inventory, ranges, `min_programs` distinct programs, Ruby syntax of its defaults
    and of the first `min_programs` draws), and its defaults reproduce the source exactly.
    """
    from sonicpi_gen.expand import check_syntax

    inventory = inventory or load_inventory()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / PROVENANCE).exists():
        raise ValueError(f"{out_dir} exists and is not a templatize output (no {PROVENANCE}); "
                         "choose another --out or empty it")
    paths = find_sources(sources)
    summary = TemplatizeSummary(out_dir)
    syntax = check_syntax(paths) if paths else {}
    taken: set = set()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    check_dir = Path(tempfile.mkdtemp(prefix=".templatize-check-", dir=out_dir.parent))
    try:
        outcome: dict[Path, Lifted | Skipped] = {}
        drawn: dict[str, list[Path]] = {}  # template -> its defaults and draws, for Ruby
        shapes: dict[str, str] = {}  # template text -> the template that has it
        for path in paths:
            name = template_name(path, taken)  # taken even if skipped: names do not shift
            try:
                lifted, programs = _lift_checked(path, name, syntax, inventory, tmp, shapes,
                                                 min_programs)
            except LiftError as err:
                outcome[path] = Skipped(str(path), str(err))
                for suffix in (".rb.j2", ".toml"):  # written, then failed a check
                    (tmp / f"{name}{suffix}").unlink(missing_ok=True)
                continue
            shapes[lifted.template] = lifted.name
            outcome[path] = lifted
            drawn[lifted.name] = []
            for k, program in enumerate(programs):
                check_path = check_dir / lifted.name / f"{k}.rb"
                check_path.parent.mkdir(exist_ok=True)
                check_path.write_text(program)
                drawn[lifted.name].append(check_path)
        # One Ruby process checks every template's programs.
        failed = check_syntax([p for ps in drawn.values() for p in ps]) if drawn else {}
        broken = {p.parent.name: msg for p, msg in failed.items()}
        for path in paths:
            item = outcome[path]
            if isinstance(item, Lifted) and item.name in broken:
                for suffix in (".rb.j2", ".toml"):
                    (tmp / f"{item.name}{suffix}").unlink()
                item = Skipped(str(path), f"a program drawn from its grammar fails Ruby's syntax "
                                          f"check: {broken[item.name]}")
            (summary.templates if isinstance(item, Lifted) else summary.skipped).append(item)
        for skip in summary.skipped:
            logger.info("skipped %s: %s", skip.source, skip.reason)
        provenance = make_provenance(
            "templatize", "sonicpi-gen templatize", {"min_programs": min_programs}, paths,
            inventory.sonic_pi_version,
            templates=[{"name": t.name, "source": t.source, "slots": t.slots} for t in summary.templates],
            skipped=[{"source": s.source, "reason": s.reason} for s in summary.skipped])
        write_json_atomically(tmp / PROVENANCE, provenance)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(check_dir, ignore_errors=True)
    return summary


def _lift_checked(path: Path, name: str, syntax: dict, inventory: Inventory, folder: Path,
                  shapes: dict, min_programs: int) -> tuple[Lifted, list[str]]:
    """Lift one program into `folder` and check it as a hand-written template is checked;
    return it with its defaults and first draws (for Ruby's check), or raise LiftError."""
    from sonicpi_gen.expand import ExpandError, draw_programs

    code = _read_program(path, syntax)
    lifted = lift_program(code, name, path.name, inventory)
    lifted.source = str(path)  # the full path goes to templatize.json, not the grammar
    # Two programs that differ only in lifted literals have one template: a second grammar
    # would draw the same programs (and one program in two templates would leak across
    # splits that hold out whole templates).
    if lifted.template in shapes:
        raise LiftError(f"it differs from {shapes[lifted.template]!r} only in lifted literals: "
                        "that template's grammar covers it")
    _write_template(lifted, folder)
    try:
        grammar = load_grammar(name, folder, inventory)
        defaults = grammar.render(grammar.defaults())
        draws = [p.code for p in draw_programs(grammar, min_programs, seed=0)]
    except GrammarError as err:
        raise LiftError(str(err)) from err
    except ExpandError as err:
        raise LiftError(f"its grammar yields fewer than {min_programs} distinct programs "
                        f"(--min-programs): too little worth varying ({err})") from err
    if defaults != code:
        raise LiftError("its defaults do not reproduce the source (a templatize bug: please "
                        "report the program)")
    return lifted, [defaults] + draws


def _read_program(path: Path, syntax_errors: dict) -> str:
    try:
        code = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise LiftError(f"not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from err
    if "\r" in code:
        # Templates are read as text with universal newlines, which would turn \r\n into \n.
        raise LiftError("it has carriage returns (\\r); convert it to Unix line ends so its "
                        "defaults can reproduce it byte for byte")
    if path in syntax_errors:
        raise LiftError(f"Ruby syntax error: {syntax_errors[path].strip().splitlines()[0]}")
    return code


# ---------------------------------------------------------------------------------------
# Lifting one program


@dataclass
class _Slot:
    name: str
    literal: object  # ruby_syntax.Literal
    spec: dict  # the TOML table, `default` included
    placeholder: str  # what replaces the literal's text in the template


def lift_program(code: str, name: str, source: str = "", inventory: Inventory | None = None) -> Lifted:
    """Lift one program's literals into slots; raises LiftError saying why it cannot."""
    from sonicpi_gen.ruby_syntax import RubySyntaxError, find_literals, option_uses

    inventory = inventory or load_inventory()
    try:
        literals = find_literals(code)
        uses = option_uses(code)
    except RubySyntaxError as err:
        raise LiftError(str(err)) from err
    _check_names(literals, inventory)
    options_of: dict = {}  # span of a synth/fx name -> option keys given to it
    for owner, key in uses:
        if owner is not None and owner.span is not None:
            options_of.setdefault(owner.span, set()).add(key)
    # Original option values per owner span (a new synth or fx must accept them too).
    values_of: dict = {}
    for lit in literals:
        if lit.option and lit.owner is not None and lit.owner.span is not None and lit.value is not None:
            values_of.setdefault(lit.owner.span, {})[lit.option] = lit.value

    counters: Counter = Counter()
    slots: list[_Slot] = []
    name_slots: dict = {}  # span of a lifted synth/fx name -> slot
    for lit in literals:  # names first: option slots refer to them
        if lit.role in ("synth", "fx") and lit.kind == "symbol":
            slot = _name_slot(lit, inventory, options_of.get((lit.start, lit.end), set()),
                              values_of.get((lit.start, lit.end), {}), counters)
            if slot is not None:
                name_slots[(lit.start, lit.end)] = slot
    for lit in literals:
        if (lit.start, lit.end) in name_slots:
            slots.append(name_slots[(lit.start, lit.end)])
            continue
        slot = _value_slot(lit, inventory, name_slots, counters)
        if slot is not None:
            slots.append(slot)
    slots.sort(key=lambda s: s.literal.start)
    if not slots:
        raise LiftError("nothing to lift: no literal worth varying (notes, chords, scales, synth, "
                        "sample or fx names, their options, sleeps, bpm, seeds, repetition counts)")
    _assign_parts(slots, inventory)
    template = _template_text(code, slots)
    grammar = {
        "title": name.replace("_", " ").capitalize(),
        "description": f"Lifted by `sonicpi-gen templatize` from {source or name}.",
        "slots": {s.name: s.spec for s in slots},
    }
    return Lifted(name, source, template, grammar, len(slots))


def _check_names(literals, inventory: Inventory) -> None:
    for lit in literals:
        kind = {"synth": "synth", "sample": "sample", "fx": "fx"}.get(lit.role)
        if kind and lit.kind == "symbol" and lit.value not in inventory.names(kind):
            raise LiftError(f"unknown {kind} :{lit.value} in Sonic Pi {inventory.sonic_pi_version} "
                            f"(it would fail with 'Unknown {kind}'); use one of the inventory's "
                            f"{kind} names")


def _counter_name(base: str, counters: Counter) -> str:
    counters[base] += 1
    return f"{base}_{counters[base]}"


def _name_slot(lit, inventory: Inventory, option_keys: set, option_values: dict,
               counters: Counter) -> _Slot | None:
    kind = lit.role
    families = SYNTH_FAMILIES if kind == "synth" else FX_FAMILIES
    family = next((f for f in families.values() if lit.value in f), [lit.value])
    choices = [lit.value]
    for other in family:
        if other == lit.value or other not in inventory.names(kind):
            continue
        options = inventory.options_for(kind, other)
        if not option_keys <= options.keys():
            continue
        if any(violated_check(options[k]["checks"], v) for k, v in option_values.items()):
            continue
        choices.append(other)
    if len(choices) < 2:
        return None
    spec = {"type": kind, "part": "global", "choices": choices, "default": lit.value}
    return _Slot(_counter_name(kind, counters), lit, spec, ":{{ %s }}")


def _value_slot(lit, inventory: Inventory, name_slots: dict, counters: Counter) -> _Slot | None:
    if lit.role is None or lit.value is None:
        return None
    if lit.role == "sample" and lit.kind == "symbol":
        choices = _same_kind_samples(lit.value, inventory)
        if len(choices) < 2:
            return None
        return _Slot(_counter_name("sample", counters), lit,
                     {"type": "sample", "part": "drum", "choices": choices, "default": lit.value},
                     ":{{ %s }}")
    if lit.role in ("chord", "scale") and lit.kind in ("symbol", "string"):
        return _music_name_slot(lit, inventory, counters)
    if lit.role == "note":
        return _note_slot(lit, counters)
    if lit.kind not in ("integer", "float"):
        return None
    return _number_slot(lit, inventory, name_slots, counters)


def _same_kind_samples(sample: str, inventory: Inventory) -> list[str]:
    kind = _sample_kind(sample)
    if kind is not None:
        same = [s for s in inventory.names("sample") if _sample_kind(s) == kind]
    else:
        # Same folder, less the samples whose name says they are something else (a kick).
        same = [s for s in inventory.names("sample")
                if inventory.samples[s] == inventory.samples[sample] and _sample_kind(s) is None]
    return [sample] + [s for s in same if s != sample]


def _sample_kind(sample: str) -> str | None:
    for kind, marks in SAMPLE_KINDS.items():
        if any(sample.startswith(m) if m.endswith("_") else m in sample for m in marks):
            return kind
    return None


def _music_name_slot(lit, inventory: Inventory, counters: Counter) -> _Slot | None:
    kind = lit.role
    known = inventory.names(kind)
    if lit.value not in known:
        raise LiftError(f"unknown {kind} :{lit.value} in Sonic Pi {inventory.sonic_pi_version}; "
                        f"use one of the inventory's {kind} names")
    families = CHORD_FAMILIES if kind == "chord" else SCALE_FAMILIES
    family = next((f for f in families.values() if lit.value in f), [])
    quote = lit.text[0] if lit.kind == "string" else None
    choices = [lit.value]
    for other in family:
        # A symbol must stay a bare symbol (:m7, not :7); a string must not hold its quote.
        fits = SYMBOL_SAFE.fullmatch(other) if quote is None else quote not in other
        if other != lit.value and other in known and fits:
            choices.append(other)
    if len(choices) < 2:
        return None
    placeholder = ":{{ %s }}" if quote is None else quote + "{{ %s }}" + quote
    return _Slot(_counter_name(kind, counters), lit,
                 {"type": kind, "part": "harmony" if kind == "chord" else "melody",
                  "choices": choices, "default": lit.value}, placeholder)


def _note_slot(lit, counters: Counter) -> _Slot | None:
    role = "melody" if lit.in_list else "note"
    if lit.kind == "integer" and 0 <= lit.value <= 127:
        choices = _centred([lit.value + k for k in range(-NOTE_SPREAD, NOTE_SPREAD + 1)], lit.value,
                           lambda v: 0 <= v <= 127)
        placeholder = "{{ %s }}"
    elif lit.kind == "symbol" and NOTE_RE.match(lit.value) and lit.value.lower() not in ("r", "rest"):
        choices = _note_names(lit.value)
        placeholder = ":{{ %s }}"
    else:
        return None
    if len(choices) < 2:
        return None
    return _Slot(_counter_name("note", counters), lit,
                 {"type": "note", "role": role, "part": "melody", "choices": choices,
                  "default": lit.value}, placeholder)


def _note_names(name: str) -> list[str]:
    """Note names around `name`: a fifth either side, same octave style (none, or a number)."""
    m = NOTE_RE.match(name)
    pc = PITCH_CLASS[m["pc"].lower()] + {"s": 1, "#": 1, "b": -1, "f": -1}.get(m["acc"] or "", 0)
    if m["oct"] is None:
        # Without an octave a note is a pitch class: the twelve, centred on this one.
        names = [NOTE_NAMES[(pc + k) % 12] for k in range(-5, 7)]
        return [name] + [n for n in names if n != NOTE_NAMES[pc % 12]]
    midi = 12 * (int(m["oct"]) + 1) + pc
    names = [name]  # the original first (the default), then the rest ascending
    for k in range(-NOTE_SPREAD, NOTE_SPREAD + 1):
        other = midi + k
        if k != 0 and 12 <= other <= 127:  # octave 0 and up: names like c0..g9
            names.append(f"{NOTE_NAMES[other % 12]}{other // 12 - 1}")
    return names


def _number_slot(lit, inventory: Inventory, name_slots: dict, counters: Counter) -> _Slot | None:
    v = lit.value
    if lit.role in ("sleep", "rhythm"):
        if v <= 0:
            return None
        return _numeric(lit, "sleep", lit.role, _scaled(v, lambda x: True), counters)
    if lit.role == "bpm":
        values = _stepped(v, BPM_STEP, 2, lambda x: BPM_MIN <= x <= BPM_MAX)
        return _numeric(lit, "tempo", "bpm", values, counters, part="global")
    if lit.role == "seed":
        if not isinstance(v, int) or v < 0:
            return None
        lo = max(0, v - SEED_VALUES // 2)
        spec = {"type": "int", "role": "seed", "part": "global", "min": lo,
                "max": lo + SEED_VALUES - 1, "default": v}
        return _Slot(_counter_name("seed", counters), lit, spec, "{{ %s }}")
    if lit.role in ("repeat", "density"):
        if not isinstance(v, int) or v < 1:
            return None
        values = _stepped(v, max(1, v // 4), 2, lambda x: x >= 1)
        return _numeric(lit, SLOT_BASE.get(lit.role, lit.role), "density", values, counters)
    if lit.role == "option":
        return _option_slot(lit, inventory, name_slots, counters)
    return None


def _option_slot(lit, inventory: Inventory, name_slots: dict, counters: Counter) -> _Slot | None:
    option, v = lit.option, lit.value
    owners, of = _option_owners(lit, inventory, name_slots)
    if owners is None:
        # Whose option it is is unknown (control, a synth chosen at run time): only the
        # options whose range is the same for every synth, fx and sample are varied.
        if option not in ("amp", "pan"):
            return None
        owners = []
    checks = []
    for kind, name in owners:
        options = inventory.options_for(kind, name)
        if option not in options:
            return None  # Sonic Pi ignores an option its synth does not have: leave it
        checks.append(options[option]["checks"])

    def ok(x):
        return all(violated_check(c, x) is None for c in checks)

    role = OPTION_ROLES.get(option, "other")
    if role == "amp":
        if not 0 < v <= AMP_MAX:
            return None
        values = _stepped(v, "0.1" if v >= 0.5 else "0.05", 3, lambda x: 0 <= x <= AMP_MAX and ok(x))
    elif role == "pan":
        values = _stepped(v, "0.25", 2, lambda x: -1 <= x <= 1 and ok(x))
    elif role in ("attack", "decay", "sustain", "release"):
        if v <= 0 or v > ENVELOPE_MAX_BEATS:
            return None
        values = _scaled(v, lambda x: x <= ENVELOPE_MAX_BEATS and ok(x))
    elif role == "cutoff":
        values = _stepped(v, 5, 3, lambda x: 0 <= x <= 130 and ok(x))
    elif role == "res":
        values = _stepped(v, "0.05", 2, lambda x: 0 <= x < 1 and ok(x))
    else:
        values = _other_option_values(v, checks, ok)
    if values is None:
        return None
    spec_extra = {"option": option, "of": of} if of is not None else {}
    return _numeric(lit, option, role, values, counters, extra=spec_extra)


def _option_owners(lit, inventory: Inventory, name_slots: dict):
    """([(kind, name)...], `of`) whose ranges an option value must respect, or (None, None)."""
    owner = lit.owner
    if owner is None or owner.name is None:
        return None, None
    if owner.kind == "sample":
        return [("sample", "")], "sample"
    if owner.name not in inventory.names(owner.kind):
        return None, None
    slot = name_slots.get(owner.span)
    if slot is not None:
        return [(owner.kind, n) for n in slot.spec["choices"]], slot.name
    return [(owner.kind, owner.name)], f"{owner.kind}:{owner.name}"


def _other_option_values(v, checks: list, ok):
    one_of = [c["args"][0] for cs in checks for c in cs if c["kind"] == "one_of"]
    if one_of:
        allowed = [x for x in one_of[0] if all(x in o for o in one_of) and ok(x)]
        return [v] + [x for x in allowed if x != v] if v in allowed else None
    bounds = [c["args"] for cs in checks for c in cs
              if c["kind"] in ("between_inclusive", "between_exclusive")]
    if bounds:
        lo, hi = max(b[0] for b in bounds), min(b[1] for b in bounds)
        return _stepped(v, _nice_step((hi - lo) / 10), 2, ok)
    if v <= 0:
        return None
    return _scaled(v, ok)


def _nice_step(x: float) -> str:
    """The 1, 2 or 5 times a power of ten nearest below x, as a decimal string."""
    d = Decimal(str(x)).normalize()
    exponent = d.adjusted()
    lead = d.scaleb(-exponent)
    digit = 5 if lead >= 5 else 2 if lead >= 2 else 1
    return str(Decimal(digit).scaleb(exponent))


def _numeric(lit, base: str, role: str, values, counters: Counter, part: str | None = None,
             extra: dict | None = None) -> _Slot | None:
    if values is None or len(values) < 2:
        return None
    kind = "int" if all(isinstance(x, int) for x in values) else "float"
    spec = {"type": kind, "role": role, "part": part or "", "choices": values, **(extra or {}),
            "default": lit.value}
    return _Slot(_counter_name(base, counters), lit, spec, "{{ %s }}")


def _as_number(d: Decimal, like):
    if isinstance(like, int) and d == d.to_integral_value():
        return int(d)
    return float(d)


def _centred(values: list, original, ok) -> list:
    """The original first (it is the default), then the rest that pass `ok`, ascending."""
    return [original] + [x for x in values if x != original and ok(x)]


def _stepped(v, step, k: int, ok) -> list:
    """v + i*step for i in -k..k (exact decimal arithmetic), those that pass `ok`."""
    base, step_d = Decimal(repr(v)), Decimal(str(step))
    values = [_as_number(base + i * step_d, v if isinstance(step, int) else 0.0)
              for i in range(-k, k + 1) if i != 0]
    return _centred(sorted(values), v, ok)


def _scaled(v, ok) -> list:
    """v times each of FACTORS (half to double), those that pass `ok`."""
    base = Decimal(repr(v))
    values = [_as_number(base * Decimal(f), 0.0) for f in FACTORS if f != "1"]
    return _centred(sorted(values), v, ok)


def _assign_parts(slots: list[_Slot], inventory: Inventory) -> None:
    """Which musical part each slot belongs to.

    A sample is drum when its kind or folder is percussive, texture otherwise; a note
    is bass below C3 (MIDI 48) or on a bass synth, melody otherwise; a chord is harmony;
    bpm and seeds are global. A synth or sample option belongs to the sound just before
    it in its block (the `play` or `sample` it is given to). Everything else (sleeps,
    counts, synth and fx names, fx options) takes the most common part of the sounds in
    its `do ... end` block, and is global at the top level, except that a synth name or
    synth option with no sound beside it is bass on a bass synth and melody otherwise.
    """
    voiced = []
    for slot in slots:
        lit, spec = slot.literal, slot.spec
        if spec["type"] == "sample":
            percussive = _sample_kind(lit.value) or inventory.samples[lit.value] in DRUM_GROUPS
            spec["part"] = "drum" if percussive else "texture"
        elif spec["type"] == "note":
            midi = _midi(lit.value)
            on_bass = lit.owner is not None and lit.owner.name in SYNTH_FAMILIES["bass"]
            spec["part"] = "bass" if on_bass or (midi is not None and midi < 48) else "melody"
        elif spec["type"] == "chord":
            spec["part"] = "harmony"
        else:
            continue
        voiced.append((lit.start, lit.scope, spec["part"]))
    for slot in slots:
        lit, spec = slot.literal, slot.spec
        if spec["type"] in ("sample", "note", "chord") or spec.get("role") in ("bpm", "seed"):
            continue
        synth_part = None
        if spec["type"] == "synth" or (lit.option and lit.owner is not None and lit.owner.kind == "synth"):
            name = lit.value if spec["type"] == "synth" else lit.owner.name
            synth_part = "bass" if name in SYNTH_FAMILIES["bass"] else "melody"
        if lit.option and lit.owner is not None and lit.owner.kind in ("synth", "sample"):
            before = [part for start, scope, part in voiced if start < lit.start and scope == lit.scope]
            if before:
                spec["part"] = before[-1]
                continue
        part = _scope_part(lit.scope, voiced)
        spec["part"] = synth_part if part == "global" and synth_part else part


def _scope_part(scope, voiced: list) -> str:
    if scope is None:
        return "global"
    inside = [part for start, _, part in voiced if scope[0] <= start < scope[1]]
    if not inside:
        return "global"
    counts = Counter(inside)
    return max(inside, key=lambda p: (counts[p], -inside.index(p)))


def _midi(value) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = NOTE_RE.match(value)
        if m and m["oct"] is not None:
            acc = {"s": 1, "#": 1, "b": -1, "f": -1}.get(m["acc"] or "", 0)
            return 12 * (int(m["oct"]) + 1) + PITCH_CLASS[m["pc"].lower()] + acc
    return None


# ---------------------------------------------------------------------------------------
# Writing


JINJA_OPENERS = ("{{", "{%", "{#")


def _template_text(code: str, slots: list[_Slot]) -> str:
    """The program with each lifted literal replaced by its placeholder; any other text
    that Jinja would read as a tag is wrapped in {% raw %}."""
    source = code.encode()
    pieces, at = [], 0
    for slot in slots:
        pieces.append(_escape(source[at:slot.literal.start].decode()))
        pieces.append(slot.placeholder % slot.name)
        at = slot.literal.end
    pieces.append(_escape(source[at:].decode()))
    return "".join(pieces)


def _escape(text: str) -> str:
    if any(o in text for o in JINJA_OPENERS) or text.endswith("{"):
        return "{% raw %}" + text + "{% endraw %}"
    return text


def _write_template(lifted: Lifted, folder: Path) -> None:
    (folder / f"{lifted.name}.rb.j2").write_text(lifted.template)
    (folder / f"{lifted.name}.toml").write_text(to_toml(lifted.grammar))


def to_toml(grammar: dict) -> str:
    """A grammar dict as TOML in templates/' layout: title, description, one table per slot."""
    lines = [f"title = {_toml_value(grammar['title'])}",
             f"description = {_toml_value(grammar['description'])}"]
    for name, spec in grammar["slots"].items():
        lines += ["", f"[slots.{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in spec.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")
