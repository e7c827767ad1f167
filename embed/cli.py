"""`sonicpi-gen embed`: the click command; the work is embed.pipeline.embed_dataset."""

from __future__ import annotations

import logging
import os
import shlex
import sys

import click

from embed.encoders import ENCODERS, LONG_INPUT_MODES, PRECISIONS, ModelUnavailableError, licence_of
from embed.pipeline import ENGINES, EmbedSettings, EmbedSettingsError, embed_dataset

DEFAULTS = EmbedSettings()  # every option's default is the library's

EPILOG = "\b\nKnown encoders (licence [restriction]; size; sample rate):\n" + "\n".join(
    f"  {mid}\n      {info.licence}{f' [{info.restriction}]' if info.restriction else ''}; "
    f"{info.dim}-d{f'; {info.sample_rate} Hz' if info.sample_rate else ''}"
    for mid, info in ENCODERS.items()
) + ("\n\nAny other Hugging Face id or local model folder works too. Offline: pass model "
     "folders, or set HF_HUB_OFFLINE=1 with a populated cache. Pooling and details: "
     "docs/embed.md.")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embed").setLevel(level)


@click.command("embed", epilog=EPILOG)
@click.option("--dataset", required=True,
              help="Dataset folder (data/<config>/<split>-*.parquet) or Hugging Face dataset id.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="embeddings",
              show_default=True, help="Embeddings root; writes OUT/<code>__<audio>/embeddings.parquet.")
@click.option("--code-model", default=DEFAULTS.code_model, show_default=True,
              help="Code encoder: hub id, alias (codebert, distilroberta-base) or folder.")
@click.option("--audio-model", default=DEFAULTS.audio_model, show_default=True,
              help="Audio encoder: hub id, alias (clap, clap-music, mert, logmel) or folder.")
@click.option("--config", "configs", multiple=True, help="Only this config (repeatable).")
@click.option("--split", "splits", multiple=True, help="Only this split (repeatable).")
@click.option("--device", default=DEFAULTS.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULTS.precision, show_default=True,
              help="auto = bf16/fp16 autocast on GPU, fp32 on CPU.")
@click.option("--code-batch-size", type=click.IntRange(1), default=DEFAULTS.code_batch_size,
              show_default=True, help="Token windows per forward pass.")
@click.option("--audio-batch-size", type=click.IntRange(1), default=DEFAULTS.audio_batch_size,
              show_default=True, help="Clips per forward pass.")
@click.option("--workers", type=click.IntRange(0), default=DEFAULTS.num_workers,
              help="Audio decoding processes [default: up to 8 with a GPU, 1 on CPU].")
@click.option("--long-code", type=click.Choice(LONG_INPUT_MODES), default=DEFAULTS.long_input,
              show_default=True, help="Programs over the token window: all windows, or the first.")
@click.option("--code-revision", default=DEFAULTS.code_revision, help="Hub revision of the code model.")
@click.option("--audio-revision", default=DEFAULTS.audio_revision, help="Hub revision of the audio model.")
@click.option("--offline", is_flag=True, help="Never download (as HF_HUB_OFFLINE=1).")
@click.option("--trust-remote-code", is_flag=True, default=DEFAULTS.trust_remote_code, help="Allow model code from the repo (MERT).")
@click.option("--limit", type=click.IntRange(1), default=DEFAULTS.limit, help="Embed only the first N rows.")
@click.option("--engine", type=click.Choice(ENGINES), default=DEFAULTS.engine, show_default=True,
              help="Run the models here, or on Ray actors (pip install 'sonicpi-gen[ray]'; "
                   "docs/scale.md).")
@click.option("--address", default=DEFAULTS.address,
              help="The Ray cluster's head, HOST:PORT [default: RAY_ADDRESS, else the cluster "
                   "`ray start` made on this machine]; --engine ray only.")
@click.option("--actors", type=click.IntRange(1), default=DEFAULTS.actors,
              help="Encoder actors with --engine ray [default: one per GPU, else per CPU].")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug.")
def embed_command(dataset, out_dir, code_model, audio_model, configs, splits, device, precision,
                  code_batch_size, audio_batch_size, workers, long_code, code_revision,
                  audio_revision, offline, trust_remote_code, limit, engine, address, actors,
                  no_progress, verbose):
    """Embed a dataset's code and audio into OUT/<code>__<audio>/embeddings.parquet (resumable)."""
    _setup_logging(verbose)
    for side, model in (("code", code_model), ("audio", audio_model)):
        licence, restriction = licence_of(model)
        click.echo(f"{side} model {model}: licence {licence}"
                   + (f" - NOTE: {restriction}" if restriction else ""), err=True)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if engine == "local" and (address or actors):
        raise click.ClickException("--address and --actors are for --engine ray")
    try:
        settings = EmbedSettings(
            code_model=code_model, audio_model=audio_model, configs=configs or None,
            splits=splits or None, limit=limit, device=device, precision=precision,
            code_batch_size=code_batch_size, audio_batch_size=audio_batch_size,
            num_workers=workers, long_input=long_code, code_revision=code_revision,
            audio_revision=audio_revision, local_files_only=offline or None,
            trust_remote_code=trust_remote_code, engine=engine, address=address, actors=actors)
        result = embed_dataset(dataset, out_dir, settings, progress=not no_progress,
                               command=shlex.join(sys.argv))
    except (ModelUnavailableError, EmbedSettingsError, FileNotFoundError, ValueError,
            ImportError, ConnectionError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {result.rows} rows ({result.new_rows} new) to {result.path}")
    if result.audio_computed:
        click.echo(f"audio: {result.audio_computed} clips, {result.clips_per_s:.2f} clips/s, "
                   f"{result.audio_seconds_per_s:.1f} audio-s/s; code: {result.code_computed} "
                   f"programs in {result.code_seconds:.1f} s")
    if result.failed:
        click.echo(f"{len(result.failed)} item(s) failed and were skipped (listed in "
                   f"provenance.json); a rerun retries them", err=True)
