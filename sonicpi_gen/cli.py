"""The `sonicpi-gen` command: thin wrappers over the stage functions."""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import click

from renderer.render import AUDIO_FORMATS, ENGINES, RenderSettings
from sonicpi_gen import __version__
from sonicpi_gen.dataset import build_dataset
from sonicpi_gen.expand import expand_defaults, expand_families, expand_scenarios, expand_templates
from sonicpi_gen.grammar import TEMPLATES_DIR, GrammarError
from sonicpi_gen.slot_report import format_slot_report, report_slot_failures
from sonicpi_gen.templatize import templatize_programs

logger = logging.getLogger("sonicpi_gen")

OUT_DIR = click.Path(file_okay=False, path_type=Path)
IN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


RENDER = RenderSettings()  # the defaults of `render`'s options


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def default_of(fn, name: str):
    """The default of `fn`'s parameter `name`: an option shows the library's own."""
    return inspect.signature(fn).parameters[name].default


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
    except (GrammarError, ValueError, FileNotFoundError, ImportError) as err:
        raise click.ClickException(str(err)) from err


templates_option = click.option("--templates", help="Comma-separated template names (default: all).")
templates_dir_option = click.option("--templates-dir", type=IN_DIR, default=TEMPLATES_DIR,
                                    show_default=True, help="Folder of .rb.j2 + .toml templates.")
check_option = click.option("--check/--no-check", default=default_of(expand_templates, "check"), show_default=True,
                            help="Syntax-check every program with Ruby before writing.")


@main.command()
@click.option("--n", type=click.IntRange(min=1), default=default_of(expand_templates, "n"), show_default=True,
              help="Distinct programs per template.")
@click.option("--seed", type=int, default=default_of(expand_templates, "seed"), show_default=True)
@click.option("--out", type=OUT_DIR, default=Path("work/programs"), show_default=True)
@templates_option
@templates_dir_option
@check_option
@click.option("--defaults", is_flag=True,
              help="One program per template, every slot at its recorded default (a lifted "
                   "template gives back its source); --n and --seed are not used.")
def expand(n, seed, out, templates, templates_dir, check, defaults):
    """Write N distinct programs per template and a manifest."""
    if defaults:
        programs = _run(expand_defaults, out, templates=_split(templates), templates_dir=templates_dir,
                        check=check)
    else:
        programs = _run(expand_templates, out, n=n, seed=seed, templates=_split(templates),
                        templates_dir=templates_dir, check=check)
    click.echo(f"wrote {len(programs)} programs from {len({p.template for p in programs})} "
               f"templates to {out}")


@main.command()
@click.option("--params", default=",".join(default_of(expand_families, "params")), show_default=True,
              help="Comma-separated parameters to perturb, one family each per template.")
@click.option("--k", type=click.IntRange(min=1), default=default_of(expand_families, "k"), show_default=True,
              help="Variants per family (besides the base).")
@click.option("--seed", type=int, default=default_of(expand_families, "seed"), show_default=True)
@click.option("--out", type=OUT_DIR, default=Path("work/families"), show_default=True)
@templates_option
@templates_dir_option
@check_option
def perturb(params, k, seed, out, templates, templates_dir, check):
    """Write perturbation families: programs differing from a base in one parameter."""
    programs = _run(expand_families, out, params=_split(params), k=k, seed=seed,
                    templates=_split(templates), templates_dir=templates_dir, check=check)
    click.echo(f"wrote {len({p.group_id for p in programs})} families "
               f"({len(programs)} programs) to {out}")


@main.command()
@click.option("--scenarios", default=",".join(default_of(expand_scenarios, "scenarios")), show_default=True,
              help="Comma-separated parts to complete.")
@click.option("--k", type=click.IntRange(min=2), default=default_of(expand_scenarios, "k"), show_default=True,
              help="Candidate completions per scenario.")
@click.option("--seed", type=int, default=default_of(expand_scenarios, "seed"), show_default=True)
@click.option("--out", type=OUT_DIR, default=Path("work/scenarios"), show_default=True)
@templates_option
@templates_dir_option
@check_option
def scenarios(scenarios, k, seed, out, templates, templates_dir, check):
    """Write code-completion scenarios: a shared prompt and K candidate completions."""
    programs = _run(expand_scenarios, out, scenarios=_split(scenarios), k=k, seed=seed,
                    templates=_split(templates), templates_dir=templates_dir, check=check)
    click.echo(f"wrote {len({p.group_id for p in programs})} scenarios "
               f"({len(programs)} programs) to {out}")


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=OUT_DIR, required=True, help="Folder for <name>.rb.j2 + <name>.toml.")
@click.option("--min-programs", type=click.IntRange(min=1), default=default_of(templatize_programs, "min_programs"),
              show_default=True,
              help="Skip a program whose grammar yields fewer distinct programs.")
def templatize(sources, out, min_programs):
    """Lift Sonic Pi programs (files or folders of .rb) into templates and grammars."""
    summary = _run(templatize_programs, list(sources), out, min_programs=min_programs)
    for skipped in summary.skipped:
        click.echo(f"skipped {skipped.source}: {skipped.reason}")
    click.echo(f"lifted {len(summary.templates)} of {summary.sources} programs into {out} "
               f"({summary.mean_slots:.1f} slots per template); expand them with "
               f"`sonicpi-gen expand --templates-dir {out}`")


@main.command()
@click.option("--in", "in_dir", type=IN_DIR, default=Path("work/programs"), show_default=True,
              help="An expand output folder, or any folder of .rb files.")
@click.option("--out", type=OUT_DIR, default=Path("work/renders"), show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=RENDER.workers,
              help="Sonic Pi servers side by side, each in its own sandbox [default: 3 x cores; "
                   "with --engine ray, 3 per CPU of the cluster, one actor each].")
@click.option("--engine", type=click.Choice(ENGINES), default=RENDER.engine, show_default=True,
              help="Where the servers run: this machine, or a Ray cluster (pip install "
                   "'sonicpi-gen[ray]'; docs/scale.md).")
@click.option("--address", default=RENDER.address,
              help="The Ray cluster's head, HOST:PORT [default: RAY_ADDRESS, else the cluster "
                   "`ray start` made on this machine]; --engine ray only.")
@click.option("--acceleration", default=RENDER.acceleration, show_default=True,
              help="Time factor (1 = real time) or 'auto': the fastest factor that passed "
                   "the fidelity check on this machine (with --engine ray, on each node type).")
@click.option("--calibrate", is_flag=True, help="Redo the fidelity check that 'auto' uses.")
@click.option("--headroom", type=click.FloatRange(min=0.05), default=RENDER.headroom_s, show_default=True,
              help="Sonic Pi scheduling headroom, real seconds.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=RENDER.max_attempts, show_default=True,
              help="Tries per program when the renderer (not the program) fails.")
@click.option("--max-full-scale", type=click.FloatRange(0, 1), default=RENDER.max_full_scale, show_default=True,
              help="Flag a clip as clipped above this fraction of full-scale samples.")
@click.option("--format", "audio_format", type=click.Choice(list(AUDIO_FORMATS)), default=RENDER.audio_format,
              show_default=True)
@templates_option
def render(in_dir, out, workers, engine, address, acceleration, calibrate, headroom, max_attempts,
           max_full_scale, audio_format, templates):
    """Render programs to 18 s clips on headless Sonic Pi servers (resumable)."""
    from renderer.fidelity import forget_calibration
    from renderer.render import RenderError, render_programs
    if calibrate:
        forget_calibration()
    settings = RenderSettings(workers=workers, acceleration=acceleration, headroom_s=headroom,
                              max_attempts=max_attempts, max_full_scale=max_full_scale,
                              audio_format=audio_format, engine=engine, address=address)
    try:
        summary = _run(render_programs, in_dir, out, settings, templates=_split(templates))
    except (RenderError, ImportError) as err:  # ImportError: --engine ray without Ray
        raise click.ClickException(str(err)) from err
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted: the finished clips are kept in {out}; "
                                   "rerun the same command to resume") from None
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    if summary.rendered:
        click.echo(f"rendered {summary.rendered} clips ({summary.skipped} already done) in "
                   f"{summary.wall_s:.1f} s, {summary.realtime_factor:.1f}x real time; status: {counts}")
    else:
        click.echo(f"nothing to render: all {summary.skipped} programs already done; status: {counts}")
    click.echo(f"clips and status.parquet in {out}")


@main.command("slot-report")
@click.option("--in", "in_dirs", type=IN_DIR, multiple=True, default=[Path("work/renders")],
              show_default=True, help="A renders folder; repeat to merge several.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown report here [default: print it].")
@click.option("--min-share", type=click.FloatRange(0, 1), default=default_of(format_slot_report, "min_share"),
              show_default=True,
              help="List only slot values not ok in at least this share of their programs.")
def slot_report(in_dirs, out, min_share):
    """Per template and per slot value: how many rendered programs failed or were silent."""
    text = format_slot_report(_run(report_slot_failures, list(in_dirs)), min_share=min_share)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}: {text.splitlines()[0]}")


@main.group()
def dataset() -> None:
    """Build the Hugging Face dataset folder from renders, and publish it."""


@dataset.command("build")
@click.option("--in", "in_dirs", type=IN_DIR, multiple=True,
              help="A renders folder; repeat to merge several [default: work/renders].")
@click.option("--tutorial-in", "tutorial_dirs", type=IN_DIR, multiple=True,
              help="A renders folder of programs lifted from Sonic Pi's tutorial: the "
                   "`tutorial` configuration (CC BY-SA 4.0); repeat to merge several.")
@click.option("--out", type=OUT_DIR, default=Path("work/dataset"), show_default=True)
@click.option("--max-shard-mb", type=click.FloatRange(min=0.1), default=default_of(build_dataset, "max_shard_mb"),
              show_default=True,
              help="Largest Parquet shard, in MB (10^6 bytes).")
@click.option("--drop-clipped", is_flag=True,
              help="Leave out clips flagged clipped (the card counts them either way).")
@click.option("--license", "license_id", default=default_of(build_dataset, "license"), show_default=True,
              help="Licence id for the card (Hub vocabulary: mit, cc-by-4.0, ...).")
@click.option("--repo-id", default=None, help="Hub id for the card's examples and citation [default: none; the card "
              "says ORG/NAME and `dataset publish --repo-id` writes the id in].")
@click.option("--card-template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Jinja2 card template [default: the repository's dataset_card.md].")
@click.option("--configs", default=",".join(default_of(build_dataset, "configs")), show_default=True,
              help="Comma-separated configurations to write (unseen_templates repeats default's audio).")
def dataset_build(in_dirs, tutorial_dirs, out, max_shard_mb, drop_clipped, license_id, repo_id,
                  card_template, configs):
    """Build the dataset folder (Parquet shards, card) from renders."""
    in_dirs = list(in_dirs) or ([] if tutorial_dirs else [Path("work/renders")])
    summary = _run(build_dataset, in_dirs, out, max_shard_mb=max_shard_mb, drop_clipped=drop_clipped,
                   license=license_id, repo_id=repo_id, card_template=card_template,
                   configs=tuple(_split(configs) or ()), progress=True, tutorial_dirs=list(tutorial_dirs))
    rows = "; ".join(f"{config} " + ", ".join(f"{split} {n}" for split, n in splits.items())
                     for config, splits in summary.rows.items())
    left_out = ", ".join(f"{n} {why}" for why, n in summary.left_out.items()) or "none"
    click.echo(f"wrote {summary.clips} clips in {len(summary.shards)} shards to {out} "
               f"({summary.wall_s:.1f} s, {summary.clips_per_s:.1f} clips/s): {rows}")
    click.echo(f"left out {sum(summary.left_out.values())} of {summary.programs} programs "
               f"({left_out}); {summary.clipped} clipped")
    click.echo(f"load it with:  datasets.load_dataset({str(out)!r})\n"
               f"or, with no audio decoder needed:  from sonicpi_gen.dataset import load_local, "
               f"decode_audio; rows = load_local({str(out)!r})")


@dataset.command("publish")
@click.argument("dataset_dir", type=IN_DIR)
@click.option("--repo-id", required=True, help="Hub dataset repository, ORG/NAME.")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--dry-run", is_flag=True, help="List the files and sizes that would go up; upload nothing.")
def dataset_publish(dataset_dir, repo_id, private, dry_run):
    """Upload a dataset folder to the Hub (resumable)."""
    from sonicpi_gen.publish import publish_dataset
    result = _run(publish_dataset, dataset_dir, repo_id, private=private, dry_run=dry_run)
    for path, size in result.files:
        click.echo(f"{size:>14,d}  {path}")
    verb = "would upload" if dry_run else "uploaded"
    click.echo(f"{verb} {len(result.files)} files, {result.total_bytes / 1e6:.1f} MB, to {result.url}")


@main.command()
@click.option("--server-root", type=IN_DIR, default=None,
              help="Sonic Pi's app/server/ruby folder (default: Debian's location).")
def inventory(server_root):
    """Regenerate the synth/fx/sample inventory from the installed Sonic Pi."""
    from sonicpi_gen.inventory import DEFAULT_SERVER_RUBY_ROOT, write_inventory
    path = _run(write_inventory, server_root or DEFAULT_SERVER_RUBY_ROOT)
    click.echo(f"wrote {path}")


def _add_embed_command() -> None:
    # embed needs torch/transformers (the `embed` extra); without them the command still
    # appears and says what to install.
    try:
        from embed.cli import embed_command
    except ImportError as err:
        missing = err.name

        @main.command("embed", context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def embed_command(args):
            """Embed code and audio of a dataset (needs the `embed` extra)."""
            raise click.ClickException(f"embedding needs {missing}: pip install 'sonicpi-gen[embed]' "
                                       "torch==2.13.0 (scripts/setup.sh --ml does)")
        return
    main.add_command(embed_command)


_add_embed_command()

if __name__ == "__main__":
    sys.exit(main())
