"""Tests for the dataset stage: renders folders made in the test (synthetic FLACs written
with soundfile, manifest and status written with the project's own functions), built,
then read back through datasets, load_local and plain pyarrow."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner

from sonicpi_gen.folders import STATUS_SCHEMA, read_manifest, write_manifest, write_status
from sonicpi_gen import __version__
from sonicpi_gen.cli import main
from sonicpi_gen.dataset import (SPLITS, DatasetBuildError, build_dataset, dataset_features,
                                 decode_audio, held_out_templates, iter_rows, load_local,
                                 shard_files, split_by_rank)
from sonicpi_gen.expand import Program, write_programs
from sonicpi_gen.publish import NO_TOKEN_MESSAGE, publish_dataset

SR = 44100
CLIP_S = 0.25  # short clips keep the tests fast; the format is the renderer's (stereo PCM_16 FLAC)
# Base programs per template: two with >= 10 programs (stratified into all three splits),
# one small one; with three templates unseen_templates holds one out for each split.
BASE = {"alpha": 20, "beta": 12, "gamma": 4}
FAILED = {"beta": ["runtime_error", "silent"], "gamma": ["syntax_error"]}


def _programs() -> list[Program]:
    programs = []
    for template, n in BASE.items():
        for i in range(n):
            programs.append(Program(template, i, i, 0, {"note": 60 + i},
                                    f"# {template}\nplay {60 + i}\nsleep 1\n"))
    base = programs[0]
    group = f"alpha:amp:{base.id}"
    programs.append(Program("alpha", 0, 0, 0, base.params, base.code, family="amp", group_id=group))
    for k in (1, 2):
        programs.append(Program("alpha", k, 0, 0, {"note": 60, "amp": k / 4},
                                f"# alpha\nplay 60, amp: {k / 4}\nsleep 1\n", family="amp",
                                group_id=group, varied="amp"))
    prompt = "# beta\n"
    for k in range(3):
        programs.append(Program("beta", k, 0, 0, {"bass": 40 + k}, f"{prompt}play {40 + k}\n",
                                scenario="bass", group_id=f"beta:bass:{programs[20].id}",
                                varied="bass", prompt=prompt))
    return programs


def make_renders(root: Path, programs: list[Program], failed: dict = FAILED, clipped: int = 1,
                 missing: int = 0) -> tuple[Path, dict]:
    """A renders folder: programs -> manifest (expand's writer, render's merge), FLACs, status.

    The first ids of a template in `failed` get those statuses; the first `clipped` ok
    clips are flagged clipped; the last `missing` programs have no status (not rendered).
    Returns the folder and {id: int16 samples written}.
    """
    programs_dir, renders = root / "programs", root / "renders"
    write_programs(programs_dir, programs, {"command": "test"})
    renders.mkdir(parents=True)
    write_manifest(renders, read_manifest(programs_dir).to_pylist())
    unique = list({p.id: p for p in programs}.values())
    statuses = {}
    for template, kinds in failed.items():
        ids = [p.id for p in unique if p.template == template]
        statuses.update(dict(zip(ids, kinds)))
    rows, written, n_clipped = {}, {}, 0
    rendered = unique[:len(unique) - missing]
    for i, program in enumerate(rendered):
        status = statuses.get(program.id, "ok")
        row = {name: None for name in STATUS_SCHEMA.names}
        row.update(id=program.id, template=program.template, status=status, sample_rate=SR,
                   bpm=120, bars=9, code_sha256=hashlib.sha256(program.code.encode()).hexdigest(),
                   sonic_pi_version="3.2.2", attempts=1, worker=0, acceleration=8.0, clipped=False)
        if status == "ok":
            rng = np.random.default_rng(i)
            audio = rng.integers(-8000, 8000, size=(int(CLIP_S * SR), 2), dtype=np.int16)
            path = renders / program.template / f"{program.id}.flac"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, audio, SR, format="FLAC", subtype="PCM_16")
            row.update(path=f"{program.template}/{program.id}.flac", duration_s=len(audio) / SR,
                       audio_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                       clipped=n_clipped < clipped)
            n_clipped += row["clipped"]
            written[program.id] = audio
        else:
            row["message"] = f"{status} on line 2"
        rows[program.id] = row
    write_status(renders, rows)
    (renders / "provenance.json").write_text(json.dumps({"tool_version": __version__}))
    return renders, written


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    return make_renders(tmp_path_factory.mktemp("r"), _programs())


@pytest.fixture(scope="module")
def built(renders, tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "dataset"
    return build_dataset([renders[0]], out), out


def card_yaml(out: Path) -> dict:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def all_rows(out: Path, config: str) -> list[dict]:
    return [r for split in SPLITS if list((out / "data" / config).glob(f"{split}-*"))
            for r in iter_rows(out, config, split)]


def test_load_dataset_reads_the_folder_with_the_expected_rows_and_features(built, renders, tmp_path):
    import datasets

    summary, out = built
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].features == dataset_features(SR)
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    ok_base = [i for i, a in renders[1].items() if i in {p.id for p in _programs()[:sum(BASE.values())]}]
    assert sum(len(d) for d in ds.values()) == len(ok_base) == summary.rows["default"]["train"] \
        + summary.rows["default"]["validation"] + summary.rows["default"]["test"]
    row = ds["train"][0]
    program = next(p for p in _programs() if p.id == row["id"])
    assert row["code"] == program.code and json.loads(row["params"]) == program.params
    assert row["family"] is row["scenario"] is row["prompt"] is None
    assert (row["sample_rate"], row["bpm"], row["bars"], row["sonic_pi_version"]) == (SR, 120, 9, "3.2.2")
    assert row["audio"]["bytes"][:4] == b"fLaC"
    assert row["audio_sha256"] == hashlib.sha256(row["audio"]["bytes"]).hexdigest()
    assert row["toolkit_version"] == __version__
    schema = pq.read_schema(shard_files(out, "default", "train")[0])
    assert json.loads(schema.metadata[b"huggingface"])["info"]["features"]["audio"]["_type"] == "Audio"


def test_audio_bytes_decode_to_the_exact_written_samples(built, renders, tmp_path):
    _, out = built
    seen = 0
    for config in ("default", "families", "scenarios"):
        for row in all_rows(out, config):
            samples, sr = decode_audio(row, dtype="int16")
            assert sr == SR and np.array_equal(samples, renders[1][row["id"]])
            seen += 1
    ds = load_local(out, "default", "test", cache_dir=tmp_path / "cache")
    wave, sr = decode_audio(ds[0])
    assert wave.dtype == np.float32 and np.array_equal(wave, renders[1][ds[0]["id"]] / 32768.0)
    assert seen > sum(BASE.values()) - 3


def test_datasets_own_decoder_agrees_where_it_works(built, renders, tmp_path):
    import datasets

    ds = datasets.load_dataset(str(built[1]), split="test", cache_dir=str(tmp_path / "cache"))
    try:
        audio = ds[0]["audio"]
        samples = np.asarray(audio.get_all_samples().data).T if hasattr(audio, "get_all_samples") \
            else audio["array"]
    except (ImportError, RuntimeError, OSError) as err:  # torchcodec missing or broken
        pytest.skip(f"datasets cannot decode audio here ({type(err).__name__}: {str(err)[:80]}); "
                    "decode_audio is the path that needs no torchcodec")
    expected = renders[1][ds[0]["id"]] / 32768.0
    assert np.allclose(np.asarray(samples).reshape(expected.shape), expected, atol=1e-6)


@pytest.mark.parametrize("value, error", [({"bytes": None, "path": None}, "needs 'bytes'"),
                                          (b"", "empty"), (3, "not int")])
def test_decode_audio_says_what_it_needs(value, error):
    with pytest.raises((ValueError, TypeError), match=error):
        decode_audio(value)


def test_split_rule_known_answers():
    ids = [f"{i:016x}" for i in range(10)]
    splits = split_by_rank(ids)
    assert [list(splits.values()).count(s) for s in SPLITS] == [8, 1, 1]
    assert split_by_rank(list(reversed(ids))) == splits, "order of the input does not matter"
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    assert [splits[i] for i in ranked] == ["train"] * 8 + ["validation", "test"]
    held = held_out_templates([f"t{i}" for i in range(27)])
    assert sorted(held.values()).count("validation") == 3 and list(held.values()).count("test") == 3
    assert held_out_templates(["a", "b"]) == {}


def test_splits_are_disjoint_stratified_and_follow_the_rule(built, renders):
    _, out = built
    by_split = {s: [r for r in iter_rows(out, "default", s, ["id", "template", "split"])] for s in SPLITS}
    ids = {s: {r["id"] for r in rows} for s, rows in by_split.items()}
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"]
                or ids["validation"] & ids["test"])
    assert all(r["split"] == s for s, rows in by_split.items() for r in rows)
    programs = _programs()
    for template, n in BASE.items():
        # the ranking covers every base program of the template, failed renders included
        rule = split_by_rank([p.id for p in programs[:sum(BASE.values())] if p.template == template])
        for split in SPLITS:
            got = {r["id"] for r in by_split[split] if r["template"] == template}
            assert got == {i for i, s in rule.items() if s == split and i in renders[1]}
            if n >= 10:
                assert len(got) >= 1
        if n >= 10:
            counts = [list(rule.values()).count(s) for s in SPLITS]
            assert abs(counts[0] / n - 0.8) <= 0.05 and counts[1] >= 1 and counts[2] >= 1


def test_unseen_templates_holds_out_whole_templates(built):
    _, out = built
    rows = {s: list(iter_rows(out, "unseen_templates", s, ["id", "template"])) for s in SPLITS}
    templates = {s: {r["template"] for r in rs} for s, rs in rows.items()}
    held = held_out_templates(list(BASE))
    assert templates == {s: {t for t, h in held.items() if h == s} for s in SPLITS}
    assert {r["id"] for rs in rows.values() for r in rs} == {r["id"] for r in all_rows(out, "default")}


def test_families_and_scenarios_are_their_own_test_configs(built):
    _, out = built
    families, scenarios = all_rows(out, "families"), all_rows(out, "scenarios")
    assert [r["split"] for r in families + scenarios] == ["test"] * 6
    assert sorted(p.name for p in (out / "data" / "families").iterdir()) == ["test-00000-of-00001.parquet"]
    assert [r["varied"] for r in families] == [None, "amp", "amp"] and families[0]["family"] == "amp"
    assert {r["prompt"] for r in scenarios} == {"# beta\n"} and {r["scenario"] for r in scenarios} == {"bass"}
    assert families[0]["id"] in {r["id"] for r in all_rows(out, "default")}, "the base is member 0"


def test_rebuild_gives_byte_identical_shards_whatever_the_row_order(built, renders, tmp_path):
    _, out = built
    shuffled = tmp_path / "renders"
    shutil.copytree(renders[0], shuffled)
    for name in ("manifest.parquet", "status.parquet"):
        table = pq.read_table(shuffled / name)
        order = np.random.default_rng(7).permutation(table.num_rows)
        pq.write_table(table.take(order), shuffled / name)
    for source, again in ((renders[0], tmp_path / "again"), (shuffled, tmp_path / "shuffled")):
        build_dataset(source, again)
        files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
        assert files == sorted(p.relative_to(again) for p in again.rglob("*.parquet"))
        for rel in files:
            assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
        assert (out / "README.md").read_text() == (again / "README.md").read_text()


def test_card_yaml_parses_and_its_numbers_match_the_data(built):
    summary, out = built
    meta = card_yaml(out)
    assert meta["license"] == "mit" and meta["size_categories"] == ["n<1K"]
    assert {c["config_name"] for c in meta["configs"]} == {"default", "unseen_templates", "families", "scenarios"}
    default = next(c for c in meta["configs"] if c["config_name"] == "default")
    assert default["default"] is True
    assert default["data_files"] == [{"split": s, "path": f"data/default/{s}-*"} for s in SPLITS]
    for info in meta["dataset_info"]:
        config = info["config_name"]
        assert [f["name"] for f in info["features"]][:3] == ["id", "template", "split"]
        for split in info["splits"]:
            rows = sum(pq.ParquetFile(p).metadata.num_rows
                       for p in shard_files(out, config, split["name"]))
            assert split["num_examples"] == rows == summary.rows[config][split["name"]]
        assert info["download_size"] == sum(p.stat().st_size for p in (out / "data" / config).iterdir())
    text = (out / "README.md").read_text()
    alpha = [r for r in all_rows(out, "default") if r["template"] == "alpha"]
    counts = [sum(r["split"] == s for r in alpha) for s in SPLITS]
    assert f"| alpha | {counts[0]} | {counts[1]} | {counts[2]} | 3 | 0 | 0 |" in text
    assert "| beta | " in text and text.count("| gamma | ") == 1
    assert "- `runtime_error`: 1" in text and "- `silent`: 1" in text and "- `syntax_error`: 1" in text
    assert f"{summary.clips} distinct clips" in text and "3 of 41 distinct programs" in text
    assert "`--max-full-scale` allows): 1, kept." in text
    assert "3.2.2 (" in text and "Held out here: validation" in text


def test_failed_renders_are_left_out_and_counted(built, renders):
    summary, out = built
    failed = {i for i in {p.id for p in _programs()} if i not in renders[1]}
    assert len(failed) == 3
    ids = {r["id"] for c in ("default", "unseen_templates", "families", "scenarios") for r in all_rows(out, c)}
    assert not ids & failed
    assert summary.left_out == {"runtime_error": 1, "silent": 1, "syntax_error": 1}
    stats = json.loads((out / "provenance.json").read_text())["statistics"]
    assert stats["left_out"] == summary.left_out and stats["n_clips"] == summary.clips == len(ids)


def test_drop_clipped_leaves_clipped_clips_out_and_counts_them(renders, built, tmp_path):
    kept, out = built
    dropped = build_dataset(renders[0], tmp_path / "d", drop_clipped=True)
    assert kept.clipped == dropped.clipped == 1
    assert dropped.clips == kept.clips - 1 and dropped.left_out["clipped"] == 1
    text = (tmp_path / "d" / "README.md").read_text()
    assert "- `clipped`: 1" in text and "allows): 1, left out (`--drop-clipped`)." in text


def test_configs_chooses_what_is_written_without_moving_splits(built, renders, tmp_path):
    _, out = built
    build_dataset(renders[0], tmp_path / "d", configs=("default", "scenarios"))
    assert sorted(p.name for p in (tmp_path / "d" / "data").iterdir()) == ["default", "scenarios"]
    for rel in ("data/default/train-00000-of-00001.parquet", "data/scenarios/test-00000-of-00001.parquet"):
        assert (tmp_path / "d" / rel).read_bytes() == (out / rel).read_bytes()
    assert {c["config_name"] for c in card_yaml(tmp_path / "d")["configs"]} == {"default", "scenarios"}
    build_dataset(renders[0], tmp_path / "f", configs=("families",))
    meta = card_yaml(tmp_path / "f")
    assert meta["configs"] == [{"config_name": "families", "default": True,
                                "data_files": [{"split": "test", "path": "data/families/test-*"}]}]
    with pytest.raises(DatasetBuildError, match="unknown configurations"):
        build_dataset(renders[0], tmp_path / "x", configs=("default", "bogus"))


def test_not_rendered_and_missing_audio_are_counted(tmp_path):
    renders, written = make_renders(tmp_path / "r", _programs()[:12], failed={}, missing=2)
    (renders / "alpha" / f"{next(iter(written))}.flac").unlink()
    summary = build_dataset(renders, tmp_path / "d")
    assert summary.left_out == {"not_rendered": 2, "missing_audio": 1} and summary.clips == 9


def test_shards_stay_under_max_shard_mb_and_still_load(renders, tmp_path):
    summary = build_dataset(renders[0], tmp_path / "d", max_shard_mb=0.2)
    train = shard_files(tmp_path / "d", "default", "train")
    assert len(train) > 1 and all(p.stat().st_size <= 0.2e6 for p in summary.shards)
    assert train[0].name == f"train-00000-of-{len(train):05d}.parquet"
    assert len(list(iter_rows(tmp_path / "d", "default", "train", ["id"]))) == summary.rows["default"]["train"]
    assert len(load_local(tmp_path / "d", "default", "train", cache_dir=tmp_path / "c")) \
        == summary.rows["default"]["train"]


def test_merging_renders_folders_gives_the_same_dataset(built, tmp_path):
    _, out = built
    programs = _programs()
    first, _ = make_renders(tmp_path / "a", programs[:20], failed={})
    second, _ = make_renders(tmp_path / "b", programs[20:], failed=FAILED, clipped=0)
    # the ids of the second folder are the same programs with the same random audio only if
    # rendered at the same positions, so compare what does not depend on the audio
    summary = build_dataset([first, second], tmp_path / "merged")
    assert summary.programs == 41 and summary.left_out == {"runtime_error": 1, "silent": 1, "syntax_error": 1}
    assert {r["id"] for r in all_rows(tmp_path / "merged", "default")} == {r["id"] for r in all_rows(out, "default")}


def test_bad_input_and_output_are_refused_with_the_fix(renders, tmp_path):
    with pytest.raises(DatasetBuildError, match="would replace the renders folder"):
        build_dataset(renders[0], renders[0])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetBuildError, match="not a dataset folder"):
        build_dataset(renders[0], tmp_path / "busy")
    with pytest.raises(FileNotFoundError, match="not a renders folder"):
        build_dataset(tmp_path / "busy", tmp_path / "out")
    empty, _ = make_renders(tmp_path / "e", _programs()[:2], failed={"alpha": ["silent", "silent"]})
    with pytest.raises(DatasetBuildError, match="no usable clip"):
        build_dataset(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_cli_build_merges_and_publish_dry_run_lists_files(tmp_path):
    programs = _programs()
    first, _ = make_renders(tmp_path / "a", programs[:20], failed={})
    second, _ = make_renders(tmp_path / "b", programs[20:])
    out = tmp_path / "dataset"
    runner = CliRunner()
    result = runner.invoke(main, ["dataset", "build", "--in", str(first), "--in", str(second),
                                  "--out", str(out), "--max-shard-mb", "0.5", "--drop-clipped",
                                  "--repo-id", "me/sonicpi"])
    assert result.exit_code == 0, result.output
    assert "left out 5 of 41 programs" in result.output
    assert 'load_dataset("me/sonicpi"' in (out / "README.md").read_text()
    result = runner.invoke(main, ["dataset", "publish", str(out), "--repo-id", "me/sonicpi", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "README.md" in result.output and "data/default/train-00000-of-0000" in result.output
    assert "would upload" in result.output and "https://huggingface.co/datasets/me/sonicpi" in result.output


def test_cli_publish_without_a_token_says_how_to_log_in(built, monkeypatch):
    import huggingface_hub

    _, out = built
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    result = CliRunner().invoke(main, ["dataset", "publish", str(out), "--repo-id", "me/sonicpi"])
    assert result.exit_code != 0
    assert "huggingface-cli login" in result.output and "HF_TOKEN" in result.output
    assert NO_TOKEN_MESSAGE.split(":")[0] in result.output


@pytest.mark.parametrize("large_folder", [True, False])
def test_publish_creates_the_repo_and_uploads_the_folder(built, monkeypatch, large_folder):
    import huggingface_hub

    _, out = built
    calls = []
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create_repo", self.token, repo_id, kw))
                        or f"https://huggingface.co/datasets/{repo_id}")
    upload = lambda self, **kw: calls.append(("upload", self.token, kw))  # noqa: E731
    if large_folder:
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_large_folder", upload, raising=False)
    else:
        monkeypatch.delattr(huggingface_hub.HfApi, "upload_large_folder", raising=False)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload)
    result = publish_dataset(out, "me/sonicpi", private=True)
    assert calls[0] == ("create_repo", "hf_test", "me/sonicpi",
                        {"repo_type": "dataset", "private": True, "exist_ok": True})
    name, token, kwargs = calls[1]
    assert (name, token) == ("upload", "hf_test")
    assert kwargs["repo_id"] == "me/sonicpi" and kwargs["repo_type"] == "dataset"
    assert kwargs["folder_path"] == str(out)
    assert result.uploaded and result.url.endswith("me/sonicpi")
    assert ("README.md", (out / "README.md").stat().st_size) in result.files


@pytest.mark.parametrize("repo_id", ["sonicpi", "me/", "me/a b", "-x/y"])
def test_publish_refuses_a_bad_repo_id(built, repo_id):
    with pytest.raises(ValueError, match="must be ORG/NAME"):
        publish_dataset(built[1], repo_id, dry_run=True)


@pytest.mark.sonicpi
def test_real_render_to_dataset(tmp_path):
    from renderer.render import RenderSettings, render_programs
    from renderer.server import sonic_pi_installed
    from sonicpi_gen.expand import expand_templates

    if not sonic_pi_installed():
        pytest.skip("Sonic Pi server stack not installed (scripts/setup.sh installs it)")
    programs = expand_templates(tmp_path / "programs", 2, seed=0, templates=["haunted"])
    summary = render_programs(tmp_path / "programs", tmp_path / "renders",
                              RenderSettings(workers=1, acceleration=8.0), progress=False)
    assert summary.counts.get("ok", 0) >= 1, summary.counts
    built = build_dataset(tmp_path / "renders", tmp_path / "dataset")
    assert built.clips == summary.counts["ok"]
    status = {r["id"]: r for r in summary.rows}
    rows = all_rows(tmp_path / "dataset", "default")
    assert {r["id"] for r in rows} == {p.id for p in programs if status[p.id]["status"] == "ok"}
    for row in rows:
        samples, sr = decode_audio(row, dtype="int16")
        expected, expected_sr = sf.read(tmp_path / "renders" / status[row["id"]]["path"], dtype="int16",
                                        always_2d=True)
        assert sr == expected_sr == 44100 and np.array_equal(samples, expected)
        assert samples.shape == (793800, 2)


def test_tutorial_config_holds_out_whole_templates_and_says_its_licence(renders, tmp_path):
    lifted = [Program(f"s{t:03d}_block_01", i, i, 0, {"note_1": 50 + i}, f"play {50 + i}\n# {t}\n")
              for t in range(10) for i in range(3)]
    tutorial, written = make_renders(tmp_path / "tut", lifted, failed={}, clipped=0)
    out = tmp_path / "d"
    result = CliRunner().invoke(main, ["dataset", "build", "--in", str(renders[0]), "--tutorial-in",
                                       str(tutorial), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = all_rows(out, "tutorial")
    assert sorted(r["id"] for r in rows) == sorted(written)
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["template"], r["split"]) == r["split"], "a template is in one split"
    held = held_out_templates(sorted(split_of))
    assert split_of == held and sorted(held.values()).count("test") == 1
    assert not {r["template"] for r in all_rows(out, "default")} & set(split_of)
    card = (out / "README.md").read_text()
    assert "**`tutorial`.**" in card and "CC BY-SA 4.0" in card
    assert {c["config_name"] for c in card_yaml(out)["configs"]} >= {"default", "tutorial"}
    clash = CliRunner().invoke(main, ["dataset", "build", "--in", str(renders[0]), "--tutorial-in",
                                      str(renders[0]), "--out", str(tmp_path / "x")])
    assert clash.exit_code == 1 and "are in both --in and --tutorial-in folders" in clash.output
