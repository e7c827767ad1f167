"""The `align` command: thin wrappers over train_aligner, run_sweep, build_report and
rank_programs."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import click

from align import __version__
from align.compare import compare_encoders, comparison_markdown
from align.config import DEFAULT_DEVICE, LOSS_DIRECTIONS, MIN_TAU, SCHEDULES, TrainConfig
from align.rank import rank_programs
from align.report import build_report
from align.sweep import GRID, expand_grid, run_sweep

logger = logging.getLogger("align")

IN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
IN_PATH = click.Path(exists=True, path_type=Path)
OUT_DIR = click.Path(file_okay=False, path_type=Path)
TRAIN = TrainConfig()  # the defaults of `align train`'s aligner options


def default_of(fn, name: str):
    """The default of `fn`'s parameter `name`: an option shows the library's own."""
    return inspect.signature(fn).parameters[name].default


def _run(fn, *args, **kwargs):
    """Call a library function; input errors become a clean exit with their message."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings: --set loss=symmetric


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Align code and audio embeddings: train, sweep, report, rank."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--embeddings", type=IN_PATH, required=True, help="embeddings/<code>__<audio>/ folder.")
@click.option("--out", type=OUT_DIR, required=True, help="Run folder to write (runs/<name>).")
@click.option("--hidden", type=click.IntRange(1), default=TRAIN.hidden, show_default=True)
@click.option("--out-dim", type=click.IntRange(1), default=TRAIN.out, show_default=True, help="Aligned space size.")
@click.option("--layers", type=click.IntRange(1), default=TRAIN.layers, show_default=True, help="Linear layers per MLP.")
@click.option("--tau", type=click.FloatRange(MIN_TAU), default=TRAIN.tau, show_default=True, help="InfoNCE temperature.")
@click.option("--learn-tau/--fixed-tau", default=TRAIN.learn_tau, show_default=True)
@click.option("--loss", type=click.Choice(LOSS_DIRECTIONS), default=TRAIN.loss, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=TRAIN.lr, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=TRAIN.weight_decay, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=TRAIN.batch_size, show_default=True)
@click.option("--max-epochs", type=click.IntRange(1), default=TRAIN.max_epochs, show_default=True)
@click.option("--warmup", type=click.FloatRange(0, 1, max_open=True), default=TRAIN.warmup, show_default=True,
              help="Warm-up fraction.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=TRAIN.schedule, show_default=True)
@click.option("--patience", type=click.IntRange(1), default=TRAIN.patience, show_default=True, help="Early-stopping epochs.")
@click.option("--seed", type=int, default=TRAIN.seed, show_default=True)
@click.option("--config", "data_config", default=TRAIN.config, show_default=True, help="Dataset configuration to train on.")
@click.option("--device", default=DEFAULT_DEVICE, show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads.")
@click.option("--overwrite", is_flag=True, help="Replace a run folder that holds other settings.")
def train(embeddings, out, out_dim, data_config, device, threads, overwrite, **settings) -> None:
    """Train one aligner and save config.json, checkpoint.pt, metrics.jsonl."""
    from align.train import train_aligner  # torch

    cfg = _run(TrainConfig(out=out_dim, config=data_config, **settings).validate)
    summary = _run(train_aligner, embeddings, out, cfg=cfg, device=device, threads=threads, overwrite=overwrite)
    raw, ali, null = summary["test_raw"], summary["test_aligned"], summary.get("test_aligned_chance", {})

    def beside(key):  # a number beside what shuffled pairs give
        d = null.get(key)
        return f" (shuffled pairs {d['null_mean']:.3f}, p {d['p_value']:.3f})" if d else ""

    click.echo(f"{out}: best epoch {summary['best_epoch']}, test CKA {raw['cka']:.3f} -> {ali['cka']:.3f}{beside('cka')}, "
               f"CCA {raw['cca']:.3f} -> {ali['cca']:.3f}{beside('cca')}")
    for warning in summary.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.option("--embeddings", type=IN_PATH, required=True, help="embeddings/<code>__<audio>/ folder.")
@click.option("--out", type=OUT_DIR, required=True, help="Sweep folder to write.")
@click.option("--grid", default=None, help="JSON object axis -> values, or a .json file; default: the "
              f"{len(expand_grid(GRID))}-configuration grid.")
@click.option("--seeds", type=click.IntRange(1), default=default_of(run_sweep, "seeds"), show_default=True,
              help="Seeds per configuration.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Setting for every configuration (repeatable).")
@click.option("--workers", type=click.IntRange(0), default=default_of(run_sweep, "workers"), show_default=True,
              help="Processes (0: this one).")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads per process.")
@click.option("--device", default=default_of(run_sweep, "device"), show_default=True, help="cpu, cuda, cuda:N or auto.")
def sweep(embeddings, out, grid, seeds, overrides, workers, threads, device) -> None:
    """Run the hyper-parameter grid x seeds; write results.jsonl and results.md."""
    if grid and Path(grid).is_file():
        grid = Path(grid).read_text()
    try:
        grid_obj = json.loads(grid) if grid else None
        base = {k: _parse_value(v) for k, v in (o.split("=", 1) for o in overrides)}
    except (json.JSONDecodeError, ValueError) as err:
        raise click.ClickException(f"--grid must be a JSON object and --set KEY=VALUE ({err})") from err
    results = _run(run_sweep, embeddings, out, grid=grid_obj, seeds=seeds, base=base, device=device, workers=workers,
                   threads=threads)
    best = next(r for r in results if r["val_cka"]["mean"] == max(x["val_cka"]["mean"] for x in results))
    chosen = json.loads((out / "best" / "config.json").read_text())
    click.echo(f"{len(results)} configurations -> {out / 'results.md'}; best (val CKA): {best['key']}, "
               f"test CKA {best['test_cka']['mean']:.3f} ± {best['test_cka']['std']:.3f}; "
               f"checkpoint {out / 'best' / 'checkpoint.pt'} (its seed {chosen['seed']})")


@main.command()
@click.option("--embeddings", type=IN_PATH, required=True, help="embeddings/<code>__<audio>/ folder.")
@click.option("--out", type=OUT_DIR, required=True, help="Report folder (report.md, figures/).")
@click.option("--checkpoint", type=IN_PATH, default=None, help="Run folder or checkpoint.pt.")
@click.option("--sweep", "sweep_dir", type=IN_DIR, default=None, help="Sweep folder (table; best/ checkpoint).")
@click.option("--config", "data_config", default=default_of(build_report, "config"), show_default=True,
              help="Dataset configuration scored.")
@click.option("--n-boot", type=click.IntRange(0), default=default_of(build_report, "n_boot"), show_default=True,
              help="Bootstrap resamples.")
@click.option("--projection", type=click.Choice(["pca", "umap"]), default=default_of(build_report, "projection"),
              show_default=True)
@click.option("--max-points", type=click.IntRange(10), default=default_of(build_report, "max_points"), show_default=True,
              help="Test rows scored at most.")
@click.option("--n-perm", type=click.IntRange(1), default=default_of(build_report, "n_perm"), show_default=True,
              help="Shuffles per chance level.")
@click.option("--seed", type=int, default=default_of(build_report, "seed"), show_default=True,
              help="Seed of bootstrap, shuffles and subsample.")
def report(embeddings, out, checkpoint, sweep_dir, data_config, n_boot, projection, max_points, n_perm, seed) -> None:
    """Write the study's analyses as report.md with figures, every number beside chance."""
    path = _run(build_report, embeddings, out, checkpoint=checkpoint, sweep=sweep_dir, config=data_config,
                n_boot=n_boot, projection=projection, max_points=max_points, n_perm=n_perm, seed=seed)
    click.echo(str(path))


@main.command()
@click.argument("emb_a", type=IN_PATH)
@click.argument("run_a", type=IN_PATH)
@click.argument("emb_b", type=IN_PATH)
@click.argument("run_b", type=IN_PATH)
@click.option("--n-boot", type=click.IntRange(1), default=default_of(compare_encoders, "n_boot"), show_default=True,
              help="Template resamples.")
@click.option("--seed", type=int, default=default_of(compare_encoders, "seed"), show_default=True)
def compare(emb_a, run_a, emb_b, run_b, n_boot, seed) -> None:
    """Compare two code encoders on the same audio embeddings, paired over test templates."""
    click.echo(comparison_markdown(_run(compare_encoders, emb_a, run_a, emb_b, run_b, n_boot=n_boot, seed=seed)), nl=False)


@main.command()
@click.option("--checkpoint", type=IN_PATH, required=True, help="Run folder or checkpoint.pt.")
@click.argument("programs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--query", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Order by aligned similarity to this program instead.")
@click.option("--encoder", "encoder_id", default=None, help="Code encoder id/path (default: the checkpoint's).")
@click.option("--device", default=default_of(rank_programs, "device"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.option("--any-revision", is_flag=True, help="Rank even if the encoder's revision differs from the recorded one.")
def rank(checkpoint, programs, query, encoder_id, device, as_json, any_revision) -> None:
    """Order programs by predicted audio distinctness (or similarity to --query)."""
    ranked = _run(rank_programs, checkpoint, list(programs), query=query, encoder_id=encoder_id, device=device,
                  check_revision=not any_revision)
    for r in ranked:
        if "warning" in r:
            click.echo(f"warning: {r['warning']}", err=True)
            continue
        score = "-" if r["score"] is None else f"{r['score']:.4f}"
        click.echo(json.dumps(r) if as_json else f"{r['rank']:3d}  {score:>8}  {r['path']}")


if __name__ == "__main__":  # python -m align.cli, as python -m sonicpi_gen.cli
    main()
