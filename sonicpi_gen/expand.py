"""Turn templates into programs: `expand_templates`, `expand_families`, `expand_scenarios`.

All three write the same folder format (docs/contracts.md): <out>/<template>/<id>.rb,
manifest.parquet and provenance.json. Output is a pure function of the templates, the
grammar inventory and the seed: the same seed gives the same bytes on any machine
(Python's random.Random seeded with a string is stable across platforms).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sonicpi_gen.folders import (MANIFEST_SCHEMA, make_provenance, program_id, replace_dir,
                                 write_manifest, write_provenance)
from sonicpi_gen.grammar import TEMPLATES_DIR, Grammar, GrammarError, list_templates, load_grammar
from sonicpi_gen.inventory import load_inventory

logger = logging.getLogger(__name__)

# Give up on a template after this many draws per requested program: a grammar that
# repeats itself this often cannot yield n distinct programs in reasonable time.
MAX_DRAWS_PER_PROGRAM = 50
# Tempi for the bpm perturbation family (the base is 120).
FAMILY_BPMS = (80, 90, 100, 110, 130, 140, 150, 160, 170, 180)
FAMILY_PARAMS = ("amp", "sleep", "bpm", "synth", "cutoff", "release", "sample", "fx", "note")
DEFAULT_FAMILY_PARAMS = ("sleep", "amp", "bpm", "synth")  # the families `sonicpi-gen perturb` writes
SCENARIOS = ("melody", "drum", "bass")
DEFAULT_PROGRAMS = 20  # distinct programs per template
DEFAULT_VARIANTS = 10  # variants per family, candidates per scenario



class ExpandError(ValueError):
    """A template cannot give what was asked (too few distinct programs, no such slot)."""


@dataclass
class Program:
    template: str
    index: int
    draw: int
    seed: int
    params: dict
    code: str
    family: str | None = None
    scenario: str | None = None
    group_id: str | None = None
    varied: str | None = None
    prompt: str | None = None
    source: str | None = None  # a user's .rb file (render's manifest for plain folders)
    id: str = field(init=False)

    def __post_init__(self):
        self.id = program_id(self.code)


def _rng(*parts) -> random.Random:
    return random.Random(":".join(str(p) for p in ("sonicpi-gen", *parts)))


def _load(templates: list[str] | None, templates_dir: Path) -> list[Grammar]:
    available = list_templates(templates_dir)
    chosen = templates or available
    missing = sorted(set(chosen) - set(available))
    if missing:
        raise ExpandError(f"unknown templates {missing} in {templates_dir}; available: {available}")
    inventory = load_inventory()
    return [load_grammar(name, templates_dir, inventory) for name in chosen]


def draw_programs(grammar: Grammar, n: int, seed: int) -> list[Program]:
    """n distinct programs of one template; draw k always gives the same program for a seed."""
    if grammar.size() < n:
        raise ExpandError(f"template {grammar.name!r} can yield at most {grammar.size()} distinct "
                          f"parameter settings, fewer than --n {n}; widen its grammar or lower --n")
    programs, seen = [], set()
    for draw in range(n * MAX_DRAWS_PER_PROGRAM):
        params = grammar.draw(_rng(seed, grammar.name, draw))
        code = grammar.render(params)
        if code in seen:
            continue
        seen.add(code)
        programs.append(Program(grammar.name, len(programs), draw, seed, params, code))
        if len(programs) == n:
            return programs
    raise ExpandError(f"template {grammar.name!r} gave only {len(programs)} distinct programs in "
                      f"{n * MAX_DRAWS_PER_PROGRAM} draws (--n {n}); its slots barely change the "
                      "program text: widen its grammar or lower --n")


def expand_templates(out_dir: Path, n: int = DEFAULT_PROGRAMS, seed: int = 0,
                     templates: list[str] | None = None, templates_dir: Path = TEMPLATES_DIR,
                     check: bool = False) -> list[Program]:
    """Write n distinct programs per template to out_dir (atomically) and return them."""
    grammars = _load(templates, templates_dir)
    programs = [p for g in grammars for p in draw_programs(g, n, seed)]
    settings = {"command": "expand", "n": n, "seed": seed, "templates": [g.name for g in grammars]}
    write_programs(out_dir, programs, settings, check=check)
    return programs


def expand_defaults(out_dir: Path, templates: list[str] | None = None,
                    templates_dir: Path = TEMPLATES_DIR, check: bool = False) -> list[Program]:
    """Write one program per template with every slot at its recorded default.

    For a grammar lifted by `sonicpi-gen templatize` this is the source program, byte
    for byte. A template with a slot without `default` (the hand-written ones) is an
    error that names it.
    """
    grammars = _load(templates, templates_dir)
    programs = [Program(g.name, 0, 0, 0, g.defaults(), g.render(g.defaults())) for g in grammars]
    settings = {"command": "expand", "defaults": True, "templates": [g.name for g in grammars]}
    write_programs(out_dir, programs, settings, check=check)
    return programs


def expand_families(out_dir: Path, params: Sequence[str] = DEFAULT_FAMILY_PARAMS,
                    k: int = DEFAULT_VARIANTS, seed: int = 0,
                    templates: list[str] | None = None, templates_dir: Path = TEMPLATES_DIR,
                    check: bool = False) -> list[Program]:
    """Perturbation families: a base program and k variants differing in one parameter.

    For each template and parameter, the base is the template's program for `seed`, and the
    varied slot is the first slot whose role (or type) is the parameter; `bpm` prepends
    `use_bpm N`. A template without such a slot is skipped with a log line. The base is
    member 0 of its group. When an fx slot varies, its dependent fx options are redrawn
    with it (they only exist for the chosen fx).
    """
    unknown = sorted(set(params) - set(FAMILY_PARAMS))
    if unknown:
        raise ExpandError(f"unknown perturbation parameters {unknown}; allowed: {list(FAMILY_PARAMS)}")
    programs = []
    for grammar in _load(templates, templates_dir):
        base = draw_programs(grammar, 1, seed)[0]
        for param in params:
            programs += _family(grammar, base, param, k, seed)
    settings = {"command": "perturb", "params": list(params), "k": k, "seed": seed,
                "templates": sorted({p.template for p in programs})}
    write_programs(out_dir, programs, settings, check=check)
    return programs


def _family(grammar: Grammar, base: Program, param: str, k: int, seed: int) -> list[Program]:
    group = f"{grammar.name}:{param}:{base.id}"
    members = [Program(grammar.name, 0, base.draw, seed, base.params, base.code,
                       family=param, group_id=group)]
    if param == "bpm":
        for bpm in FAMILY_BPMS[:k]:
            params = dict(base.params, bpm=bpm)
            members.append(Program(grammar.name, len(members), base.draw, seed, params,
                                   grammar.render(base.params, bpm=bpm), family=param,
                                   group_id=group, varied="bpm"))
        return members
    slot = next((s for s in grammar.slots.values() if param in (s.role, s.type)), None)
    if slot is None:
        logger.info("template %s has no %s slot: no %s family", grammar.name, param, param)
        return []
    seen = {base.code}
    rng = _rng(seed, grammar.name, "family", param)
    for _ in range(k * MAX_DRAWS_PER_PROGRAM):
        if len(members) > k:
            break
        params = grammar.draw(rng, fixed=base.params, only={slot.name})
        code = grammar.render(params)
        if code not in seen:
            seen.add(code)
            members.append(Program(grammar.name, len(members), base.draw, seed, params, code,
                                   family=param, group_id=group, varied=slot.name))
    if len(members) <= k:
        logger.warning("template %s: slot %s gave only %d variants (asked %d)",
                       grammar.name, slot.name, len(members) - 1, k)
    return members


def expand_scenarios(out_dir: Path, scenarios: Sequence[str] = SCENARIOS,
                     k: int = DEFAULT_VARIANTS, seed: int = 0,
                     templates: list[str] | None = None, templates_dir: Path = TEMPLATES_DIR,
                     check: bool = False) -> list[Program]:
    """Code-completion scenarios: k complete programs sharing everything but one part.

    For each scenario (melody, drum, bass) and each template with slots of that part,
    every slot outside the part keeps the base program's value and the part's slots are
    redrawn k times. `prompt` records the program text the k candidates share up to the
    first line where they differ.
    """
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        raise ExpandError(f"unknown scenarios {unknown}; allowed: {list(SCENARIOS)}")
    programs = []
    grammars = _load(templates, templates_dir)
    for scenario in scenarios:
        if not any(s.part == scenario for g in grammars for s in g.slots.values()):
            having = sorted({g.name for g in _load(None, templates_dir)
                             for s in g.slots.values() if s.part == scenario})
            raise ExpandError(f"no template among {[g.name for g in grammars]} has slots of part "
                              f"{scenario!r}: nothing to complete for the {scenario} scenario; "
                              f"leave it out of --scenarios, or add a template that has such "
                              f"slots ({', '.join(having) or 'none in ' + str(templates_dir)})")
    for grammar in grammars:
        base = draw_programs(grammar, 1, seed)[0]
        for scenario in scenarios:
            part_slots = {s.name for s in grammar.slots.values() if s.part == scenario}
            if not part_slots:
                continue
            group = f"{grammar.name}:{scenario}:{base.id}"
            rng = _rng(seed, grammar.name, "scenario", scenario)
            candidates, seen = [], set()
            for _ in range(k * MAX_DRAWS_PER_PROGRAM):
                params = grammar.draw(rng, fixed=base.params, only=part_slots)
                code = grammar.render(params)
                if code not in seen:
                    seen.add(code)
                    candidates.append((params, code))
                if len(candidates) == k:
                    break
            prompt = shared_prefix([code for _, code in candidates])
            programs += [Program(grammar.name, i, base.draw, seed, params, code, scenario=scenario,
                                 group_id=group, varied=",".join(sorted(part_slots)), prompt=prompt)
                         for i, (params, code) in enumerate(candidates)]
    settings = {"command": "scenarios", "scenarios": list(scenarios), "k": k, "seed": seed,
                "templates": sorted({p.template for p in programs})}
    write_programs(out_dir, programs, settings, check=check)
    return programs


def shared_prefix(texts: list[str]) -> str:
    """The whole lines that all texts share at their start."""
    if not texts:
        return ""
    lines = [t.splitlines(keepends=True) for t in texts]
    shared = []
    for row in zip(*lines):
        if any(line != row[0] for line in row):
            break
        shared.append(row[0])
    return "".join(shared)


def check_syntax(paths: list[Path]) -> dict[Path, str]:
    """Ruby syntax errors by file, from one Ruby process (what `ruby -c` checks, without
    starting Ruby once per file)."""
    script = ("failed = {}\n"
              "STDIN.each_line { |p| p = p.chomp\n"
              "  begin; RubyVM::InstructionSequence.compile(File.read(p), p)\n"
              "  rescue SyntaxError => e; failed[p] = e.message; end }\n"
              "require 'json'; puts JSON.generate(failed)\n")
    out = subprocess.run(["ruby", "-e", script], input="\n".join(map(str, paths)),
                         capture_output=True, text=True, check=True)
    return {Path(p): msg for p, msg in json.loads(out.stdout).items()}


def write_programs(out_dir: Path, programs: list[Program], settings: dict, check: bool = False) -> None:
    """Write programs, manifest and provenance to out_dir, all or nothing.

    Everything goes to a temporary folder beside out_dir that replaces it only once
    complete (and, with `check`, syntax-checked), so an interrupted or failed run
    leaves the previous out_dir, or none, never half of one.
    """
    out_dir = Path(out_dir)
    # A program may belong to several groups (a family base is in every family of its
    # template): one file per id, one manifest row per (id, group).
    keys = [(p.id, p.group_id) for p in programs]
    if len(set(keys)) != len(keys):
        raise ExpandError("a program appears twice in one group; this is a bug in the grammar draw")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        paths = []
        for program in programs:
            path = tmp / program.template / f"{program.id}.rb"
            if path.exists():
                continue
            path.parent.mkdir(exist_ok=True)
            path.write_text(program.code)
            paths.append(path)
        if check:
            failed = check_syntax(paths)
            if failed:
                path, msg = sorted(failed.items())[0]
                raise GrammarError(f"{len(failed)} programs fail `ruby -c`; first: template "
                                   f"{path.parent.name!r}, program {path.stem}: {msg}")
        write_manifest(tmp, ({name: json.dumps(getattr(p, name), sort_keys=True) if name == "params"
                              else getattr(p, name) for name in MANIFEST_SCHEMA.names} for p in programs))
        settings = dict(settings)
        command = f"sonicpi-gen {settings.pop('command', 'expand')}"
        write_provenance(tmp, make_provenance("expand", command, settings,
                                              sonic_pi_version=load_inventory().sonic_pi_version,
                                              timestamp=False, programs=len(programs)))
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists() and not (target / "manifest.parquet").exists() and any(target.iterdir()):
        raise ExpandError(f"{target} exists and is not a programs folder (no manifest.parquet); "
                          "choose another --out or empty it")
    replace_dir(new, target)
