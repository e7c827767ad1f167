"""The whole pipeline on a small real run: expand, render on the real Sonic Pi server,
dataset, embed with tiny models built here, align train, report and rank."""

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from renderer.server import sonic_pi_installed
from sonicpi_gen.cli import main as sonicpi_gen
from tests.test_render import stack_processes
from tests.tiny_models import build_tiny_roberta, build_tiny_wav2vec2

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = [pytest.mark.sonicpi,
              pytest.mark.skipif(not sonic_pi_installed(), reason="Sonic Pi server stack not installed")]
TEMPLATES = "haunted,acid,bach,jungle"


def invoke(cli, *args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout  # progress bars and logs go to stderr


def test_small_real_pipeline_end_to_end(tmp_path):
    from align.cli import main as align

    work = tmp_path / "work"
    invoke(sonicpi_gen, "expand", "--n", 10, "--templates", TEMPLATES, "--out", work / "programs")
    invoke(sonicpi_gen, "perturb", "--params", "amp,bpm", "--k", 2, "--templates", "haunted,acid",
           "--out", work / "families")
    invoke(sonicpi_gen, "scenarios", "--scenarios", "melody", "--k", 5, "--templates", "haunted",
           "--out", work / "scenarios")
    for programs in ("programs", "families", "scenarios"):
        invoke(sonicpi_gen, "render", "--in", work / programs, "--out", work / "renders",
               "--workers", 2, "--acceleration", 8)
    status = pq.read_table(work / "renders" / "status.parquet").to_pylist()
    assert len(status) >= 40 and {r["status"] for r in status} == {"ok"}
    assert not stack_processes()

    out = invoke(sonicpi_gen, "dataset", "build", "--in", work / "renders", "--out", work / "dataset")
    assert "load it with" in out
    configs = {p.name for p in (work / "dataset" / "data").iterdir()}
    assert {"default", "families", "scenarios"} <= configs

    code_model = build_tiny_roberta(tmp_path / "tiny-roberta")
    audio_model = build_tiny_wav2vec2(tmp_path / "tiny-wav2vec2")
    invoke(sonicpi_gen, "embed", "--dataset", work / "dataset", "--out", work / "embeddings",
           "--code-model", code_model, "--audio-model", audio_model, "--device", "cpu", "--no-progress")
    [emb_dir] = list((work / "embeddings").iterdir())
    embeddings = pq.read_table(emb_dir / "embeddings.parquet").to_pylist()
    assert {r["config"] for r in embeddings} >= {"default", "families", "scenarios"}
    assert len(embeddings[0]["code_emb"]) == 32 and len(embeddings[0]["audio_emb"]) == 32

    invoke(align, "train", "--embeddings", emb_dir, "--out", work / "runs" / "base", "--hidden", 16,
           "--out-dim", 8, "--layers", 2, "--batch-size", 8, "--max-epochs", 3)
    assert (work / "runs" / "base" / "checkpoint.pt").exists()
    epochs = (work / "runs" / "base" / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(epochs) <= 3
    invoke(align, "report", "--embeddings", emb_dir, "--checkpoint", work / "runs" / "base",
           "--out", work / "report", "--n-boot", 10)
    report = (work / "report" / "report.md").read_text()
    for section in ("CKA", "CCA", "melody", "amp"):
        assert section in report, section
    assert list((work / "report").rglob("*.png"))

    candidates = sorted((work / "scenarios" / "haunted").glob("*.rb"))
    ranked = invoke(align, "rank", "--checkpoint", work / "runs" / "base", *candidates,
                    "--encoder", code_model, "--json")
    lines = [json.loads(line) for line in ranked.splitlines()]
    assert sorted(r["rank"] for r in lines) == list(range(1, len(candidates) + 1))
