"""run_sweep's folder on a tiny synthetic sweep: which files, in what order and shape,
and what a rerun and a rerun without saved weights leave there."""

import json
import re
import shutil

import pytest

torch = pytest.importorskip("torch")

from align.sweep import (BEST_DIR, CONFIGS_DIR, RESULTS_JSONL, RESULTS_MD, RUNS_JSONL,  # noqa: E402
                         SWEEP_CONFIG, SWEEP_DEFAULTS, config_key, expand_grid, plan_sweep,
                         read_runs, run_sweep)
from align.synthetic import write_synthetic_embeddings  # noqa: E402

GRID = {"layers": [1, 2], "tau": [0.1, 0.2]}
BASE = {"hidden": 16, "out": 8, "max_epochs": 3, "batch_size": 32}
SWEEP_KEYS = ["grid", "seeds", "base", "embeddings", "embeddings_provenance", "split_sizes",
              "wall_seconds", "runs_trained", "workers", "threads", "device", "best",
              "best_checkpoint", "raw_test", "version"]


def untimed(text: str) -> str:
    """A file's text without its timings (the only numbers a rerun may change)."""
    return re.sub(r'"(wall|train)_seconds": [0-9.]+', r'"\1_seconds": T', text)


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    return write_synthetic_embeddings(tmp_path_factory.mktemp("emb") / "synthetic__synthetic",
                                      n_templates=6, per_template=40, dim=16)


@pytest.fixture(scope="module")
def swept(emb, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    results = run_sweep(emb, out, grid=GRID, seeds=2, base=BASE)
    return out, results


def test_plan_sweep_puts_sweep_defaults_under_base_and_checks_every_configuration():
    seeds, base, configs = plan_sweep(GRID, 3, {"hidden": 16})
    assert seeds == [0, 1, 2] and base == {**SWEEP_DEFAULTS, "hidden": 16}
    assert configs == expand_grid(GRID) == [{"layers": 1, "tau": 0.1}, {"layers": 1, "tau": 0.2},
                                            {"layers": 2, "tau": 0.1}, {"layers": 2, "tau": 0.2}]
    with pytest.raises(ValueError, match="hiden"):
        plan_sweep({"hiden": [1]}, 1, None)
    with pytest.raises(ValueError, match="at least one seed"):
        plan_sweep(GRID, [], None)


def test_sweep_folder_layout_and_records(swept):
    out, results = swept
    keys = [config_key(s) for s in expand_grid(GRID)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [BEST_DIR, CONFIGS_DIR, RESULTS_JSONL, RESULTS_MD, RUNS_JSONL, SWEEP_CONFIG])
    assert sorted(p.name for p in (out / CONFIGS_DIR).iterdir()) == sorted(keys)
    lines = [json.loads(line) for line in (out / RESULTS_JSONL).read_text().splitlines()]
    assert [r["key"] for r in lines] == [r["key"] for r in results] == keys  # grid order
    best = max(results, key=lambda r: r["val_cka"]["mean"])["key"]
    assert [r["best"] for r in lines] == [k == best for k in keys]
    assert sorted(read_runs(out / RUNS_JSONL)) == sorted(keys)
    assert all(len(rows) == 2 for rows in read_runs(out / RUNS_JSONL).values())
    record = json.loads((out / SWEEP_CONFIG).read_text())
    assert list(record) == SWEEP_KEYS
    assert record["best"] == best and record["runs_trained"] == 8 and record["seeds"] == [0, 1]
    assert record["base"] == {**SWEEP_DEFAULTS, **BASE}
    for name in ("config.json", "checkpoint.pt"):  # best/ is a copy of its configuration's folder
        assert (out / BEST_DIR / name).read_bytes() == (out / CONFIGS_DIR / best / name).read_bytes()
    assert record["best_checkpoint"] == json.loads((out / BEST_DIR / "config.json").read_text())
    md = (out / RESULTS_MD).read_text()
    assert md.startswith("# Aligner sweep\n\n4 configurations x 2 seeds, split sizes ")
    assert md.count("(best)") == 1 and "| raw |" in md


def test_rerun_trains_nothing_and_rewrites_the_same_results(emb, swept, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(swept[0], out)
    before = {name: untimed((out / name).read_text()) for name in (RESULTS_JSONL, RESULTS_MD)}
    weights = (out / BEST_DIR / "checkpoint.pt").read_bytes()
    run_sweep(emb, out, grid=GRID, seeds=2, base=BASE)
    assert json.loads((out / SWEEP_CONFIG).read_text())["runs_trained"] == 0
    assert {name: untimed((out / name).read_text()) for name in before} == before
    assert (out / BEST_DIR / "checkpoint.pt").read_bytes() == weights
    # without the saved weights, best/ is trained again from the same seeds
    shutil.rmtree(out / CONFIGS_DIR)
    shutil.rmtree(out / BEST_DIR)
    run_sweep(emb, out, grid=GRID, seeds=2, base=BASE)
    assert {name: untimed((out / name).read_text()) for name in before} == before
    again = torch.load(out / BEST_DIR / "checkpoint.pt", weights_only=False)
    first = torch.load(swept[0] / BEST_DIR / "checkpoint.pt", weights_only=False)
    assert again.keys() == first.keys()
    for name, tensor in first["state_dict"].items():
        assert torch.equal(again["state_dict"][name], tensor), name
