"""Template parameter grammars: typed slots with per-template domains, checked against Sonic Pi.

Each template is two files in templates/: `<name>.rb.j2` (the Jinja2 program) and
`<name>.toml` (its grammar). The grammar format is documented in docs/templates.md;
in short, every `[slots.<name>]` table has a `type`, a `role`, a `part`, and a domain
(`choices = [...]` or `min`/`max`/`step`). Loading a grammar checks every value that
can be drawn against the Sonic Pi inventory, so a program is never generated with an
unknown synth or an option out of range.
"""

from __future__ import annotations

import json
import random
import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import jinja2
import jinja2.meta

from sonicpi_gen.inventory import Inventory, describe_checks, load_inventory, violated_check

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

SLOT_TYPES = ("synth", "sample", "fx", "fx_options", "note", "notes", "scale", "chord",
              "float", "int", "choice")
# What a slot means musically; perturbation families pick slots by role.
ROLES = ("synth", "sample", "fx", "fx_options", "note", "melody", "scale", "chord", "octave",
         "amp", "pan", "attack", "decay", "sustain", "release", "cutoff", "res", "rate",
         "sleep", "rhythm", "density", "seed", "bpm", "other")
# Which musical part a slot belongs to; code-completion scenarios vary one part.
PARTS = ("melody", "bass", "drum", "harmony", "texture", "global")
TYPE_ROLES = {"synth": "synth", "sample": "sample", "fx": "fx", "fx_options": "fx_options",
              "scale": "scale", "chord": "chord"}

# Toolkit policy on top of Sonic Pi's own limits (which allow amp 20 and 10 s
# envelopes): keep programs musically sensible and away from clipping.
AMP_MAX = 2.0
ENVELOPE_MAX_BEATS = 16.0
NOTE_RE = re.compile(r"^(?P<pc>[a-gA-G])(?P<acc>s|b|f|#)?(?P<oct>-?\d)?$")
RESERVED_NAMES = ("bpm",)  # set by the bpm perturbation family, not by grammars


class GrammarError(ValueError):
    """A template or its grammar is broken; the message names template, slot and value."""


@dataclass
class Domain:
    """The finite set of values a slot (or one fx option) can take."""

    values: list

    @classmethod
    def parse(cls, where: str, spec: dict, numeric_type: str | None) -> "Domain":
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise GrammarError(f"{where}: 'choices' must be a non-empty list, got {choices!r}")
            if len({json.dumps(c) for c in choices}) != len(choices):
                raise GrammarError(f"{where}: 'choices' has repeated values: {choices!r}")
            return cls(list(choices))
        if not {"min", "max"} <= spec.keys():
            raise GrammarError(f"{where}: give 'choices = [...]' or 'min' and 'max' (and 'step')")
        lo, hi = spec["min"], spec["max"]
        all_ints = all(isinstance(spec.get(k, 1), int) for k in ("min", "max", "step"))
        if numeric_type == "int" or all_ints:
            step = int(spec.get("step", 1))
            if lo > hi or step <= 0:
                raise GrammarError(f"{where}: empty range min={lo} max={hi} step={step}")
            return cls(list(range(int(lo), int(hi) + 1, step)))
        if "step" not in spec:
            raise GrammarError(f"{where}: a float range needs a 'step' (values are drawn from the grid)")
        # Decimal arithmetic so 0.1 steps give 0.3, not 0.30000000000000004, in program text.
        lo_d, hi_d, step_d = Decimal(str(lo)), Decimal(str(hi)), Decimal(str(spec["step"]))
        if lo_d > hi_d or step_d <= 0:
            raise GrammarError(f"{where}: empty range min={lo} max={hi} step={spec['step']}")
        count = int((hi_d - lo_d) / step_d) + 1
        return cls([float(lo_d + i * step_d) for i in range(count)])

    def draw(self, rng: random.Random):
        return self.values[rng.randrange(len(self.values))]


@dataclass
class Slot:
    """One randomised place in a template."""

    name: str
    type: str
    role: str
    part: str
    domain: Domain | None  # None for fx_options
    option: str | None = None  # Sonic Pi option whose range the values must respect
    of: str | None = None  # slot (or "synth:NAME" / "fx:NAME" / "sample") the option belongs to
    fx_slot: str | None = None  # for fx_options: the fx slot it depends on
    fx_domains: dict = field(default_factory=dict)  # fx name -> {option: Domain}
    default: object = None  # the value in the program a grammar was lifted from, if any

    def draw(self, rng: random.Random, chosen: dict):
        if self.type != "fx_options":
            return self.domain.draw(rng)
        return {opt: dom.draw(rng) for opt, dom in self.fx_domains[chosen[self.fx_slot]].items()}

    def size(self) -> int:
        """Distinct values this slot can take (for fx options: under the richest fx)."""
        if self.type != "fx_options":
            return len(self.domain.values)
        sizes = [_product(len(d.values) for d in doms.values()) for doms in self.fx_domains.values()]
        return max(sizes) if sizes else 1


def _product(numbers) -> int:
    result = 1
    for n in numbers:
        result *= n
    return result


@dataclass
class Grammar:
    """A template with its slots, ready to draw parameters and render programs."""

    name: str
    title: str
    description: str
    slots: dict  # name -> Slot, in declaration order (dependencies after what they depend on)
    template: jinja2.Template
    source_path: Path

    @property
    def parts(self) -> list[str]:
        return sorted({s.part for s in self.slots.values()})

    def size(self) -> int:
        """Upper bound on the number of distinct parameter settings."""
        return _product(s.size() for s in self.slots.values())

    def draw(self, rng: random.Random, fixed: dict | None = None, only: set | None = None) -> dict:
        """Draw a value for every slot; `fixed` values are kept unless the slot is in `only`."""
        params = {}
        for name, slot in self.slots.items():
            keep = fixed is not None and name in fixed and (only is None or name not in only)
            # A dependent slot is redrawn when what it depends on was redrawn.
            if keep and slot.type == "fx_options" and params[slot.fx_slot] != fixed[slot.fx_slot]:
                keep = False
            params[name] = fixed[name] if keep else slot.draw(rng, params)
        return params

    def defaults(self) -> dict:
        """Every slot at its recorded `default` (for a lifted grammar: the source program)."""
        missing = [name for name, slot in self.slots.items() if slot.default is None]
        if missing:
            raise GrammarError(f"template {self.name!r}: slots {missing} have no 'default'; "
                               "--defaults needs a grammar from `sonicpi-gen templatize` or a "
                               "`default = ...` in every slot")
        return {name: slot.default for name, slot in self.slots.items()}

    def render(self, params: dict, bpm: int | None = None) -> str:
        """The program text for one parameter setting (`bpm` only for the bpm family)."""
        try:
            code = self.template.render(**params)
        except jinja2.TemplateError as err:
            raise GrammarError(f"template {self.name!r}: rendering failed: {err}") from err
        if bpm is not None:
            code = f"use_bpm {bpm}\n" + code
        return code


def _ruby_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_ruby_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_ruby_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Ruby literal for {value!r}")


def _number(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)


def _note_literal(value) -> str:
    if isinstance(value, str):
        return ":" + value.lower().replace("#", "s")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_note_literal(v) for v in value) + "]"
    return _ruby_literal(value)


def _opts(value: dict) -> str:
    """{'room': 0.7, 'mix': 0.4} -> 'room: 0.7, mix: 0.4' for `with_fx :reverb, ...`."""
    return ", ".join(f"{k}: {_ruby_literal(v)}" for k, v in value.items())


def make_environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,  # a misspelt slot is an error, not empty text
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(
        rb=_ruby_literal,  # any value as a Ruby literal: [1, 0, 1], "x--x", 0.5
        sym=lambda v: ":" + str(v),  # a name as a Ruby symbol: :tb303
        note=_note_literal,  # note name(s) as symbols: :e3, [:e3, :g3]; MIDI numbers as is
        opts=_opts,  # an fx_options dict as keyword arguments
        num=_number,
    )
    return env


def list_templates(templates_dir: Path = TEMPLATES_DIR) -> list[str]:
    """Names of the templates in a folder (those with both .rb.j2 and .toml)."""
    return sorted(p.name.removesuffix(".rb.j2") for p in templates_dir.glob("*.rb.j2")
                  if (templates_dir / (p.name.removesuffix(".rb.j2") + ".toml")).exists())


def load_grammar(name: str, templates_dir: Path = TEMPLATES_DIR,
                 inventory: Inventory | None = None) -> Grammar:
    """Load and check one template's grammar; raises GrammarError naming template, slot and value."""
    inventory = inventory or load_inventory()
    toml_path = templates_dir / f"{name}.toml"
    j2_path = templates_dir / f"{name}.rb.j2"
    for path in (toml_path, j2_path):
        if not path.exists():
            raise GrammarError(f"template {name!r}: missing {path} (each template needs .rb.j2 and .toml)")
    try:
        spec = tomllib.loads(toml_path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise GrammarError(f"template {name!r}: {toml_path.name} is not valid TOML: {err}") from err

    env = make_environment(templates_dir)
    source = j2_path.read_text()
    try:
        template = env.from_string(source)
        used = jinja2.meta.find_undeclared_variables(env.parse(source))
    except jinja2.TemplateSyntaxError as err:
        raise GrammarError(f"template {name!r}: {j2_path.name} line {err.lineno}: {err.message}") from err

    slots: dict[str, Slot] = {}
    for slot_name, slot_spec in spec.get("slots", {}).items():
        slots[slot_name] = _parse_slot(name, slot_name, slot_spec, slots)
    for slot in slots.values():
        _check_slot(name, slot, slots, inventory)

    unknown = sorted(used - slots.keys())
    if unknown:
        raise GrammarError(f"template {name!r}: {j2_path.name} uses {unknown}, which the grammar "
                           f"does not declare; declared slots: {sorted(slots)}")
    unused = sorted(slots.keys() - used)
    if unused:
        raise GrammarError(f"template {name!r}: slots {unused} are declared but not used in "
                           f"{j2_path.name}; use them or remove them (they would only repeat programs)")
    for key in ("title", "description"):
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise GrammarError(f"template {name!r}: {toml_path.name} needs a '{key}' string")
    return Grammar(name, spec["title"], spec["description"].strip(), slots, template, toml_path)


def _parse_slot(template: str, name: str, spec: dict, earlier: dict) -> Slot:
    where = f"template {template!r}, slot {name!r}"
    if name in RESERVED_NAMES:
        raise GrammarError(f"{where}: the name {name!r} is reserved for the perturbation families")
    slot_type = spec.get("type")
    if slot_type not in SLOT_TYPES:
        raise GrammarError(f"{where}: type {slot_type!r} is unknown; allowed: {list(SLOT_TYPES)}")
    role = spec.get("role", TYPE_ROLES.get(slot_type))
    if role not in ROLES:
        raise GrammarError(f"{where}: role {role!r} is unknown; allowed: {list(ROLES)}")
    part = spec.get("part")
    if part not in PARTS:
        raise GrammarError(f"{where}: part {part!r} is unknown; allowed: {list(PARTS)}")
    known = {"type", "role", "part", "choices", "min", "max", "step", "option", "of", "fx", "per_fx",
             "default"}
    extra = sorted(spec.keys() - known)
    if extra:
        raise GrammarError(f"{where}: unknown keys {extra}; allowed: {sorted(known)}")

    if slot_type == "fx_options":
        fx_slot = spec.get("fx")
        if fx_slot not in earlier or earlier[fx_slot].type != "fx":
            raise GrammarError(f"{where}: 'fx' must name an fx slot declared before it, got {fx_slot!r}")
        per_fx = spec.get("per_fx", {})
        fx_domains = {
            fx_name: {opt: Domain.parse(f"{where}, fx {fx_name!r}, option {opt!r}", dom_spec, None)
                      for opt, dom_spec in options.items()}
            for fx_name, options in per_fx.items()
        }
        return Slot(name, slot_type, role, part, None, fx_slot=fx_slot, fx_domains=fx_domains,
                    default=spec.get("default"))

    numeric = slot_type if slot_type in ("int", "float") else None
    domain = Domain.parse(where, spec, numeric)
    default = spec.get("default")
    # The default must be a value the slot can take, of the same type: 1 and 1.0 are
    # different program text.
    if default is not None and not any(type(v) is type(default) and v == default for v in domain.values):
        raise GrammarError(f"{where}: default {default!r} is not one of the slot's values; "
                           "add it to the domain or fix the default")
    return Slot(name, slot_type, role, part, domain, option=spec.get("option"), of=spec.get("of"),
                default=default)


def _check_slot(template: str, slot: Slot, slots: dict, inventory: Inventory) -> None:
    where = f"template {template!r}, slot {slot.name!r}"
    if slot.type in ("synth", "sample", "fx", "scale", "chord"):
        allowed = inventory.names(slot.type)
        for value in slot.domain.values:
            if value not in allowed:
                raise GrammarError(
                    f"{where}: {slot.type} {value!r} is not in Sonic Pi {inventory.sonic_pi_version}; "
                    f"allowed: {', '.join(allowed)}")
    elif slot.type in ("note", "notes"):
        for value in slot.domain.values:
            for note in (value if isinstance(value, list) else [value]):
                _check_note(where, note)
    elif slot.type == "fx_options":
        fx_choices = slots[slot.fx_slot].domain.values
        stray = sorted(slot.fx_domains.keys() - set(fx_choices))
        if stray:
            raise GrammarError(f"{where}: options given for {stray}, which fx slot "
                               f"{slot.fx_slot!r} never chooses; its choices: {fx_choices}")
        for fx_name in fx_choices:
            slot.fx_domains.setdefault(fx_name, {})
            for opt, dom in slot.fx_domains[fx_name].items():
                _check_option(f"{where}, fx {fx_name!r}", "fx", fx_name, opt, dom.values, inventory)

    if slot.role == "amp":
        _check_max(where, slot, AMP_MAX, "amp (louder only clips)")
    if slot.role in ("attack", "decay", "sustain", "release"):
        _check_max(where, slot, ENVELOPE_MAX_BEATS, f"{slot.role} in beats")

    if slot.option:
        if slot.of is None:
            raise GrammarError(f"{where}: 'option = {slot.option!r}' needs 'of' (a synth/sample/fx "
                               "slot, or 'synth:NAME', 'fx:NAME', 'sample')")
        for kind, owner in _owners(where, slot.of, slots, inventory):
            _check_option(where, kind, owner, slot.option, slot.domain.values, inventory)


def _owners(where: str, of: str, slots: dict, inventory: Inventory) -> list[tuple[str, str]]:
    """The (kind, name) pairs whose option a slot sets: every choice of a slot, or one literal."""
    if of in slots and slots[of].type in ("synth", "sample", "fx"):
        return [(slots[of].type, v) for v in slots[of].domain.values]
    kind, _, literal = of.partition(":")
    if kind == "sample" and not literal:
        return [("sample", "")]
    if kind in ("synth", "fx") and literal:
        if literal not in inventory.names(kind):
            raise GrammarError(f"{where}: {kind} {literal!r} (in 'of') is not in Sonic Pi "
                               f"{inventory.sonic_pi_version}; allowed: {', '.join(inventory.names(kind))}")
        return [(kind, literal)]
    raise GrammarError(f"{where}: 'of = {of!r}' must name a synth/sample/fx slot, or be "
                       "'synth:NAME', 'fx:NAME' or 'sample'")


def _check_option(where: str, kind: str, owner: str, option: str, values: list,
                  inventory: Inventory) -> None:
    options = inventory.options_for(kind, owner)
    label = f"{kind} {owner!r}" if owner else kind
    if option not in options:
        raise GrammarError(f"{where}: {label} has no option {option!r}; its options: "
                           f"{', '.join(sorted(options))}")
    checks = options[option]["checks"]
    for value in values:
        broken = violated_check(checks, value)
        if broken:
            raise GrammarError(f"{where}: {label} option {option!r} value {value!r} is out of "
                               f"range; Sonic Pi allows {describe_checks(checks)}")


def _check_max(where: str, slot: Slot, limit: float, what: str) -> None:
    for value in slot.domain.values if slot.domain else []:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise GrammarError(f"{where}: value {value!r} is above the toolkit's limit {limit} for {what}")


def _check_note(where: str, note) -> None:
    if isinstance(note, str):
        if note.lower() in ("r", "rest") or NOTE_RE.match(note):
            return
        raise GrammarError(f"{where}: note {note!r} is not a note name like 'e3', 'fs4', 'bb2' or 'r'")
    if isinstance(note, (int, float)) and not isinstance(note, bool) and 0 <= note <= 127:
        return
    raise GrammarError(f"{where}: note {note!r} must be a MIDI number 0..127 or a note name")
