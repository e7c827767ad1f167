"""`sonicpi-gen`'s options take their defaults from the library functions they call."""

import inspect

import click
import pytest
from click.testing import CliRunner

import renderer.render
from renderer.render import RenderSettings, RenderSummary
from sonicpi_gen.cli import main
from sonicpi_gen.dataset import build_dataset
from sonicpi_gen.expand import expand_families, expand_scenarios, expand_templates
from sonicpi_gen.publish import publish_dataset
from sonicpi_gen.slot_report import format_slot_report
from sonicpi_gen.templatize import templatize_programs


def command(path: str) -> click.Command:
    cmd = main
    for name in path.split():
        cmd = cmd.commands[name]
    return cmd


def option_defaults(path: str) -> dict:
    """What a command's parameters are when not given (a flag's: False)."""
    cmd = command(path)
    ctx = click.Context(cmd)
    unset = getattr(click.core, "UNSET", None)  # click 8.3's "no default" (the function gets None)
    return {p.name: None if p.get_default(ctx) is unset else p.get_default(ctx) for p in cmd.params}


def library_defaults(fn, names: dict) -> dict:
    """fn's parameter defaults under their options' names; a tuple of names as the
    comma-separated text the option takes."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.default is inspect.Parameter.empty:
            continue
        value = p.default
        if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            value = ",".join(value)  # --params, --scenarios, --configs
        out[names.get(p.name, p.name)] = value
    return out


@pytest.mark.parametrize("path, fn, names", [
    ("expand", expand_templates, {}),
    ("perturb", expand_families, {}),
    ("scenarios", expand_scenarios, {}),
    ("templatize", templatize_programs, {}),
    ("slot-report", format_slot_report, {}),
    ("dataset build", build_dataset, {"license": "license_id", "tutorial_dirs": "-", "progress": "-"}),
    ("dataset publish", publish_dataset, {}),
])
def test_options_default_to_the_library_functions(path, fn, names):
    library, defaults = library_defaults(fn, names), option_defaults(path)
    shared = sorted(set(library) & set(defaults))
    assert shared, f"{path} has no option beside {fn.__name__}'s parameters"
    assert {k: defaults[k] for k in shared} == {k: library[k] for k in shared}


def test_render_hands_the_library_render_settings_defaults(tmp_path, monkeypatch):
    seen = {}

    def fake_render(in_dir, out_dir, settings, **kw):
        seen.update(settings=settings, **kw)
        return RenderSummary({}, 0, 0, 0.0, 0.0, out_dir)

    monkeypatch.setattr(renderer.render, "render_programs", fake_render)
    result = CliRunner().invoke(main, ["render", "--in", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert seen == {"settings": RenderSettings(), "templates": None}
