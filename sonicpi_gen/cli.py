"""The `sonicpi-gen` command: thin wrappers over the stage functions."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from sonicpi_gen import __version__
from sonicpi_gen.grammar import TEMPLATES_DIR, GrammarError

logger = logging.getLogger("sonicpi_gen")

OUT_DIR = click.Path(file_okay=False, path_type=Path)
IN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Sonic Pi programs to a code-audio dataset: expand, render, dataset, embed."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _run(fn, *args, **kwargs):
    """Call a stage function; turn input errors into a clean exit with their message."""
    try:
        return fn(*args, **kwargs)
    except (GrammarError, ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err


templates_option = click.option("--templates", help="Comma-separated template names (default: all).")
templates_dir_option = click.option("--templates-dir", type=IN_DIR, default=TEMPLATES_DIR,
                                    show_default=True, help="Folder of .rb.j2 + .toml templates.")
check_option = click.option("--check/--no-check", default=False, show_default=True,
                            help="Syntax-check every program with Ruby before writing.")


@main.command()
@click.option("--n", type=click.IntRange(min=1), default=20, show_default=True,
              help="Distinct programs per template.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=OUT_DIR, default=Path("work/programs"), show_default=True)
@templates_option
@templates_dir_option
@check_option
def expand(n, seed, out, templates, templates_dir, check):
    """Write N distinct programs per template and a manifest."""
    from sonicpi_gen.expand import expand_templates
    programs = _run(expand_templates, out, n, seed, _split(templates), templates_dir, check)
    click.echo(f"wrote {len(programs)} programs from {len({p.template for p in programs})} "
               f"templates to {out}")


@main.command()
@click.option("--params", default="sleep,amp,bpm,synth", show_default=True,
              help="Comma-separated parameters to perturb, one family each per template.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Variants per family (besides the base).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=OUT_DIR, default=Path("work/families"), show_default=True)
@templates_option
@templates_dir_option
@check_option
def perturb(params, k, seed, out, templates, templates_dir, check):
    """Write perturbation families: programs differing from a base in one parameter."""
    from sonicpi_gen.expand import expand_families
    programs = _run(expand_families, out, _split(params), k, seed, _split(templates),
                    templates_dir, check)
    click.echo(f"wrote {len({p.group_id for p in programs})} families "
               f"({len(programs)} programs) to {out}")


@main.command()
@click.option("--scenarios", default="melody,drum,bass", show_default=True,
              help="Comma-separated parts to complete.")
@click.option("--k", type=click.IntRange(min=2), default=10, show_default=True,
              help="Candidate completions per scenario.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=OUT_DIR, default=Path("work/scenarios"), show_default=True)
@templates_option
@templates_dir_option
@check_option
def scenarios(scenarios, k, seed, out, templates, templates_dir, check):
    """Write code-completion scenarios: a shared prompt and K candidate completions."""
    from sonicpi_gen.expand import expand_scenarios
    programs = _run(expand_scenarios, out, _split(scenarios), k, seed, _split(templates),
                    templates_dir, check)
    click.echo(f"wrote {len({p.group_id for p in programs})} scenarios "
               f"({len(programs)} programs) to {out}")


@main.command()
@click.option("--server-root", type=IN_DIR, default=None,
              help="Sonic Pi's app/server/ruby folder (default: Debian's location).")
def inventory(server_root):
    """Regenerate the synth/fx/sample inventory from the installed Sonic Pi."""
    from sonicpi_gen.inventory import DEFAULT_SERVER_RUBY_ROOT, write_inventory
    path = _run(write_inventory, server_root or DEFAULT_SERVER_RUBY_ROOT)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
