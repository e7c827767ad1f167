"""Every `align` command, really run through click on tiny synthetic embeddings."""

import dataclasses
import inspect
import json
import sys
import types

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

import click  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from align.cli import main  # noqa: E402
from align.config import TrainConfig  # noqa: E402
from align.synthetic import write_synthetic_embeddings  # noqa: E402

DIM = 16
SMALL = ["--hidden", "16", "--out-dim", "8", "--layers", "2", "--max-epochs", "3", "--batch-size", "32"]


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    return write_synthetic_embeddings(tmp_path_factory.mktemp("emb") / "synthetic__synthetic", n_templates=6, per_template=40, dim=DIM)


@pytest.fixture(scope="module")
def run_dir(emb, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "small"
    res = CliRunner().invoke(main, ["train", "--embeddings", str(emb), "--out", str(out), *SMALL])
    assert res.exit_code == 0, res.output
    return out


def invoke(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def library_defaults(fn, names=None) -> dict:
    """fn's parameter defaults, under the option names the CLI gives them."""
    names = names or {}
    return {names.get(p.name, p.name): p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty}


def option_defaults(command: str) -> dict:
    """The values a command's parameters take when not given (a flag's: False)."""
    ctx = click.Context(main.commands[command])
    return {p.name: p.get_default(ctx) for p in main.commands[command].params}


def test_train_options_default_to_train_config():
    from align.train import train_aligner

    names = {"out": "out_dim", "config": "data_config"}  # options renamed beside --out, --config
    defaults = option_defaults("train")
    for f in dataclasses.fields(TrainConfig):
        assert defaults[names.get(f.name, f.name)] == f.default, f.name
    for name, value in library_defaults(train_aligner).items():
        if name != "cfg":
            assert defaults[name] == value, name


@pytest.mark.parametrize("command, fn, names", [
    ("sweep", "align.sweep.run_sweep", {}),
    ("report", "align.report.build_report", {"config": "data_config", "sweep": "sweep_dir"}),
    ("compare", "align.compare.compare_encoders", {}),
    ("rank", "align.rank.rank_programs", {}),
])
def test_options_default_to_the_library_functions(command, fn, names):
    module, name = fn.rsplit(".", 1)
    library = library_defaults(getattr(__import__(module, fromlist=[name]), name), names)
    defaults = option_defaults(command)
    shared = sorted(set(library) & set(defaults))
    assert shared, f"{command} has no option beside {fn}'s parameters"
    assert {k: defaults[k] for k in shared} == {k: library[k] for k in shared}


def test_train_writes_config_checkpoint_and_metrics(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["settings"]["hidden"] == 16 and config["settings"]["out"] == 8
    assert config["code_model"] == "synthetic/code"
    assert config["split_sizes"] == {"train": 192, "validation": 24, "test": 24}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert {"train_loss", "val_loss", "lr", "tau", "pairs_per_s"} <= set(lines[0])
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["layers"] == 2 and ckpt["code_dim"] == DIM
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"cka", "cka_debiased", "cca", "knn10_jaccard"} <= set(summary["test_aligned"])
    assert not list(run_dir.parent.glob(".*tmp*"))  # temporary folder renamed away


def test_train_is_not_redone_and_refuses_other_settings(emb, run_dir):
    before = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    invoke("train", "--embeddings", emb, "--out", run_dir, *SMALL)
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == before
    res = CliRunner().invoke(main, ["train", "--embeddings", str(emb), "--out", str(run_dir), *SMALL, "--tau", "0.2"])
    assert res.exit_code != 0 and "--overwrite" in res.output


def test_train_bad_input_is_a_clean_error(tmp_path):
    res = CliRunner().invoke(main, ["train", "--embeddings", str(tmp_path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "no embeddings.parquet" in res.output


def test_sweep_with_tiny_grid(emb, tmp_path):
    out = tmp_path / "sweep"
    res = invoke("sweep", "--embeddings", emb, "--out", out, "--grid", '{"layers": [1, 2], "tau": [0.1, 0.2]}',
                 "--seeds", "2", "--set", "hidden=16", "--set", "out=8", "--set", "max_epochs=2", "--set", "batch_size=32")
    assert "4 configurations" in res.output
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sum(r["best"] for r in rows) == 1
    assert all(r["n_seeds"] == 2 and {"mean", "std"} <= set(r["test_cka"]) for r in rows)
    assert len((out / "runs.jsonl").read_text().splitlines()) == 8
    md = (out / "results.md").read_text()
    assert "± " in md and "(best)" in md and "| raw |" in md
    assert (out / "best" / "checkpoint.pt").exists()
    # a rerun finds everything done and trains nothing
    invoke("sweep", "--embeddings", emb, "--out", out, "--grid", '{"layers": [1, 2], "tau": [0.1, 0.2]}',
           "--seeds", "2", "--set", "hidden=16", "--set", "out=8", "--set", "max_epochs=2", "--set", "batch_size=32")
    assert json.loads((out / "sweep.json").read_text())["runs_trained"] == 0


def test_sweep_rejects_unknown_setting(emb, tmp_path):
    res = CliRunner().invoke(main, ["sweep", "--embeddings", str(emb), "--out", str(tmp_path), "--grid", '{"hiden": [1]}'])
    assert res.exit_code == 1 and "unknown training setting" in res.output


def test_report_with_checkpoint(emb, run_dir, tmp_path):
    out = tmp_path / "report"
    invoke("report", "--embeddings", emb, "--checkpoint", run_dir, "--out", out, "--n-boot", "5")
    text = (out / "report.md").read_text()
    for heading in ("Raw-space correlation", "Perturbation families", "held-out test split",
                    "Code-completion scenarios", "Hyper-parameter sweep", "Pictures"):
        assert heading in text
    assert "0.0159" in text and "0.590" in text  # the study's numbers beside ours
    assert "| melody | raw |" in text and "| bass | aligned |" in text
    assert (out / "figures" / "embeddings_2d.png").stat().st_size > 1000
    assert (out / "figures" / "aligned_joint.png").exists()
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["raw_correlation"]["n_programs"] == 6


def test_report_without_families_or_scenarios_says_so(emb, tmp_path):
    table = pq.read_table(emb / "embeddings.parquet")
    plain = tmp_path / "plain"
    plain.mkdir()
    mask = np.array([f is None and s is None for f, s in zip(table["family"].to_pylist(), table["scenario"].to_pylist())])
    pq.write_table(table.filter(mask), plain / "embeddings.parquet")
    out = tmp_path / "report"
    invoke("report", "--embeddings", plain, "--out", out, "--n-boot", "0")
    text = (out / "report.md").read_text()
    assert "No perturbation families in these embeddings" in text
    assert "No code-completion scenarios in these embeddings" in text
    assert "no checkpoint" in text and "No sweep folder given" in text


class FakeEncoder:
    """Stands in for embed.encoders' code encoder: a fixed random map of character counts."""

    def __init__(self, dim):
        self.proj = np.random.default_rng(0).normal(size=(128, dim))
        self.calls = []

    def encode(self, codes):
        self.calls.append(list(codes))
        counts = np.array([np.bincount(np.frombuffer(c.encode(), np.uint8) % 128, minlength=128) for c in codes], float)
        return (counts @ self.proj).astype(np.float32)


@pytest.fixture
def fake_encoder(monkeypatch):
    enc = FakeEncoder(DIM)
    seen = {}

    def load_code_encoder(model_id, device="cpu"):
        seen["model_id"], seen["device"] = model_id, device
        return enc

    module = types.ModuleType("embed.encoders")
    module.load_code_encoder = load_code_encoder
    monkeypatch.setitem(sys.modules, "embed.encoders", module)
    return enc, seen


@pytest.fixture
def programs(tmp_path):
    texts = ["play 60\nsleep 1\n", "play 72\nsleep 0.5\n", "sample :bd_haus\n", "use_synth :saw\nplay 40\n", "play 61\nsleep 1\n"]
    paths = []
    for i, t in enumerate(texts):
        p = tmp_path / f"p{i}.rb"
        p.write_text(t)
        paths.append(p)
    return paths


def test_rank_by_distinctness(run_dir, programs, fake_encoder):
    enc, seen = fake_encoder
    res = invoke("rank", "--checkpoint", run_dir, *programs, "--json")
    ranked = [json.loads(x) for x in res.output.splitlines()]
    assert seen["model_id"] == "synthetic/code"  # the encoder recorded with the checkpoint
    assert sorted(r["path"] for r in ranked) == sorted(str(p) for p in programs)
    assert ranked[0]["score"] is None
    scores = [r["score"] for r in ranked[1:]]
    assert scores == sorted(scores, reverse=True)  # max-min distances only shrink
    assert len(enc.calls) == 1 and len(enc.calls[0]) == 5


def test_rank_by_query(run_dir, programs, fake_encoder):
    res = invoke("rank", "--checkpoint", run_dir, *programs[1:], "--query", programs[0])
    lines = res.output.splitlines()
    assert len(lines) == 4
    sims = [float(line.split()[1]) for line in lines]
    assert sims == sorted(sims, reverse=True)


def test_rank_wrong_encoder_dimension_is_named(run_dir, programs, monkeypatch):
    module = types.ModuleType("embed.encoders")
    module.load_code_encoder = lambda model_id, device="cpu": FakeEncoder(DIM + 1)
    monkeypatch.setitem(sys.modules, "embed.encoders", module)
    res = CliRunner().invoke(main, ["rank", "--checkpoint", str(run_dir), *map(str, programs)])
    assert res.exit_code == 1 and f"checkpoint expects {DIM}-d" in res.output


def _rewrite(src, dst, **columns):
    """Copy an embeddings folder, replacing some columns of its parquet file."""
    import pyarrow as pa

    table = pq.read_table(src / "embeddings.parquet")
    for name, values in columns.items():
        field = table.schema.field(name)
        table = table.set_column(table.schema.get_field_index(name), field, pa.array(values, type=field.type))
    dst.mkdir(parents=True)
    pq.write_table(table, dst / "embeddings.parquet")
    return dst


def test_aligner_trained_on_shuffled_pairs_is_reported_at_chance(emb, tmp_path):
    audio = pq.read_table(emb / "embeddings.parquet")["audio_emb"].to_pylist()
    perm = np.random.default_rng(0).permutation(len(audio))
    shuffled = _rewrite(emb, tmp_path / "shuffled", audio_emb=[audio[i] for i in perm])
    run = tmp_path / "run"
    res = invoke("train", "--embeddings", shuffled, "--out", run, "--hidden", "16", "--out-dim", "8", "--layers", "2",
                 "--max-epochs", "8", "--batch-size", "32")
    assert "nothing learned" in res.output
    out = tmp_path / "report"
    invoke("report", "--embeddings", shuffled, "--checkpoint", run, "--out", out, "--n-boot", "5", "--n-perm", "200")
    numbers = json.loads((out / "report.json").read_text())
    for key in ("cka", "cka_debiased", "dist_spearman", "c2a_mrr"):
        entry = numbers["test_aligned"][key]
        assert {"value", "low", "high", "null_mean", "null_p95", "p_value"} <= set(entry)
        assert entry["p_value"] > 0.05, key
    text = (out / "report.md").read_text()
    assert "aligned space: indistinguishable from shuffled pairs" in text
    assert any("nothing learned" in w for w in numbers["warnings"])
    assert "Within templates" in text and "mantel_p" in numbers["raw_correlation"]


def test_report_warns_of_a_collapsed_encoder(emb, tmp_path):
    code = np.asarray(pq.read_table(emb / "embeddings.parquet")["code_emb"].to_pylist())
    collapsed = _rewrite(emb, tmp_path / "collapsed", code_emb=list(np.ones_like(code) + 1e-4 * code))
    out = tmp_path / "report"
    invoke("report", "--embeddings", collapsed, "--out", out, "--n-boot", "0", "--n-perm", "20")
    numbers = json.loads((out / "report.json").read_text())
    assert any(w.startswith("raw code embeddings have collapsed") for w in numbers["warnings"])
    assert "have collapsed" in (out / "report.md").read_text()


def test_sweep_best_seed_in_another_configuration_still_writes_best(emb, tmp_path, monkeypatch):
    # configuration layers=1 has the single best seed (0.9) but the lower mean (0.5);
    # layers=2 wins on the mean (0.6): best/ must hold layers=2's best seed (seed 1)
    import align.sweep as sweep_mod

    val = {("layers=1", 0): 0.9, ("layers=1", 1): 0.1, ("layers=2", 0): 0.55, ("layers=2", 1): 0.65}
    real = sweep_mod._run_config

    def fixed_val(settings):
        rows = real(settings)
        for r in rows:
            r["val_cka"] = val[(r["key"], r["seed"])]
        return rows

    monkeypatch.setattr(sweep_mod, "_run_config", fixed_val)
    out = tmp_path / "sweep"
    args = ["sweep", "--embeddings", emb, "--out", out, "--grid", '{"layers": [1, 2]}', "--seeds", "2",
            "--set", "hidden=16", "--set", "out=8", "--set", "max_epochs=2", "--set", "batch_size=32"]
    res = invoke(*args)
    assert "best (val CKA): layers=2" in res.output and "(its seed 1)" in res.output
    chosen = json.loads((out / "best" / "config.json").read_text())
    assert chosen["key"] == "layers=2" and chosen["seed"] == 1
    ckpt = torch.load(out / "best" / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["layers"] == 2 and ckpt["config"]["seed"] == 1
    # the report scores that checkpoint and says which it is
    report = tmp_path / "report"
    invoke("report", "--embeddings", emb, "--sweep", out, "--out", report, "--n-boot", "0", "--n-perm", "10")
    text = (report / "report.md").read_text()
    assert "sweep configuration layers=2, seed 1" in text and "aligner: none" not in text
    # best/ is rewritten on a resumed call that trains nothing, from configs/<key>/
    import shutil

    shutil.rmtree(out / "best")
    invoke(*args)
    assert json.loads((out / "best" / "config.json").read_text())["seed"] == 1
    assert json.loads((out / "sweep.json").read_text())["runs_trained"] == 0


@pytest.fixture(scope="module")
def folder_run(emb, tmp_path_factory):
    """A run trained on embeddings whose code encoder was a relative folder, made in
    another directory: models/enc under <made>/, revision local-sha256:abc."""
    import pyarrow as pa  # noqa: F401

    root = tmp_path_factory.mktemp("folder")
    made = root / "made"
    (made / "models" / "enc").mkdir(parents=True)
    table = pq.read_table(emb / "embeddings.parquet")
    meta = dict(table.schema.metadata or {})
    meta[b"code_model"], meta[b"code_revision"] = b"models/enc", b"local-sha256:abc"
    dst = root / "emb"
    dst.mkdir()
    pq.write_table(table.replace_schema_metadata(meta), dst / "embeddings.parquet")
    (dst / "provenance.json").write_text(json.dumps({"cwd": str(made)}))
    run = root / "run"
    invoke("train", "--embeddings", dst, "--out", run, *SMALL)
    return run, made


def _encoder_module(monkeypatch, load):
    module = types.ModuleType("embed.encoders")
    module.load_code_encoder = load

    class ModelUnavailableError(RuntimeError):
        pass

    module.ModelUnavailableError = ModelUnavailableError
    monkeypatch.setitem(sys.modules, "embed.encoders", module)
    return module


def test_rank_resolves_a_recorded_relative_folder_where_embed_ran(folder_run, programs, monkeypatch):
    run, made = folder_run
    seen = {}

    def load(model_id, device="cpu"):
        seen["model_id"] = model_id
        enc = FakeEncoder(DIM)
        enc.revision = "local-sha256:abc"
        return enc

    _encoder_module(monkeypatch, load)
    monkeypatch.chdir(programs[0].parent)  # somewhere else than where embed ran
    invoke("rank", "--checkpoint", run, *programs)
    assert seen["model_id"] == str((made / "models" / "enc").resolve())


def test_rank_refuses_another_revision(folder_run, programs, monkeypatch):
    run, _ = folder_run

    def load(model_id, device="cpu"):
        enc = FakeEncoder(DIM)
        enc.revision = "local-sha256:other"
        return enc

    _encoder_module(monkeypatch, load)
    res = CliRunner().invoke(main, ["rank", "--checkpoint", str(run), *map(str, programs)])
    assert res.exit_code == 1 and "revision local-sha256:other" in res.output and "local-sha256:abc" in res.output
    invoke("rank", "--checkpoint", run, *programs, "--any-revision")


def test_rank_missing_model_is_a_clean_error(run_dir, programs, monkeypatch):
    def load(model_id, device="cpu"):
        raise module.ModelUnavailableError(f"code model '{model_id}' could not be loaded: not cached")

    module = _encoder_module(monkeypatch, load)
    res = CliRunner().invoke(main, ["rank", "--checkpoint", str(run_dir), *map(str, programs)])
    assert res.exit_code == 1 and "code model 'synthetic/code' could not be loaded" in res.output
    assert "Traceback" not in res.output


def test_rank_recorded_folder_missing_names_the_fix(tmp_path):
    from align.rank import resolve_recorded_model

    source = {"path": str(tmp_path / "emb"), "provenance": {"cwd": str(tmp_path / "gone")},
              "metadata": {"code_revision": "local-sha256:abc"}}
    with pytest.raises(ValueError, match="local folder 'models/enc'.*--encoder"):
        resolve_recorded_model("models/enc", source)
    # a hub id with no local folder and no local revision stays a hub id
    assert resolve_recorded_model("org/name", {"metadata": {"code_revision": "0" * 40}}) == "org/name"


def test_rank_warns_when_candidates_cannot_be_told_apart(run_dir, programs, monkeypatch):
    class Constant(FakeEncoder):
        def encode(self, codes):
            return np.ones((len(codes), DIM), np.float32)

    _encoder_module(monkeypatch, lambda model_id, device="cpu": Constant(DIM))
    res = invoke("rank", "--checkpoint", run_dir, *programs)
    assert "candidates cannot be told apart" in res.output


def test_compare_two_code_encoders_paired(emb, run_dir, tmp_path):
    # A: code embeddings equal to the audio ones (raw within-template CKA 1); B: noise
    # (CKA ~0): A - B is about 1 with an interval above 0. A against itself differs
    # by exactly 0 in every resample. The aligner (run_dir, 16 -> 8 on both sides)
    # only maps; the raw metric does not use it.
    table = pq.read_table(emb / "embeddings.parquet")
    audio = table["audio_emb"].to_pylist()
    copy = _rewrite(emb, tmp_path / "copy", code_emb=audio)
    noise = _rewrite(emb, tmp_path / "noise", code_emb=list(np.random.default_rng(1).normal(size=(len(audio), DIM))))
    res = invoke("compare", copy, run_dir, noise, run_dir, "--n-boot", "50")
    rows = {line.split(" | ")[0].strip("| "): line for line in res.output.splitlines()[2:]}
    assert set(rows) == {"within aligned c2a_mrr", "within aligned a2c_mrr", "within aligned cka_debiased",
                         "within raw cka_debiased", "aligned cka"}
    from align.compare import compare_encoders

    same = compare_encoders(noise, run_dir, noise, run_dir, n_boot=20)
    assert all(r["diff"] == 0 and r["low"] == 0 and r["high"] == 0 and r["p"] == 1.0 for r in same)
    raw = next(r for r in compare_encoders(copy, run_dir, noise, run_dir, n_boot=100) if r["metric"] == "within raw cka_debiased")
    assert raw["a"] == pytest.approx(1.0) and raw["diff"] > 0.7 and raw["low"] > 0.3 and raw["p"] == 0.0


def test_compare_refuses_other_test_rows(emb, run_dir, tmp_path):
    table = pq.read_table(emb / "embeddings.parquet")
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(table.set_column(0, "id", pa_array([f"x{i}" for i in range(table.num_rows)])), other / "embeddings.parquet")
    res = CliRunner().invoke(main, ["compare", str(emb), str(run_dir), str(other), str(run_dir)])
    assert res.exit_code == 1 and "different test rows" in res.output


def pa_array(values):
    import pyarrow as pa

    return pa.array(values, type=pa.string())
