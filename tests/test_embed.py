"""embed with real loading code on tiny models built here (no downloads, CPU)."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402
from scipy.signal import resample_poly  # noqa: E402

from embed import (EmbedResult, EmbedSettings, EmbedSettingsError, ModelUnavailableError,  # noqa: E402
                   embed_dataset, load_audio_encoder, load_code_encoder, read_embeddings)
from embed.cli import embed_command  # noqa: E402
from embed.dataset import read_dataset_index  # noqa: E402
from embed.pipeline import output_dir  # noqa: E402
from tests.tiny_models import TINY_ROBERTA_WINDOW, build_tiny_roberta, build_tiny_wav2vec2  # noqa: E402

PROGRAMS = {
    "a1": "use_bpm 120\nlive_loop :drums do\n  sample :bd_haus\n  sleep 0.5\nend\n",
    "b2": "use_synth :prophet\nplay 60, release: 2\nsleep 1\n",
    "c3": "with_fx :reverb do\n  play_pattern_timed [60, 64, 67], [0.25]\nend\n" * 3,
    "d4": "play 72",
}
WINDOW = TINY_ROBERTA_WINDOW


@pytest.fixture(scope="module")
def code_model(tmp_path_factory):
    return build_tiny_roberta(tmp_path_factory.mktemp("models") / "tiny-roberta")


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    return build_tiny_wav2vec2(tmp_path_factory.mktemp("models") / "tiny-wav2vec2")


@pytest.fixture(scope="module")
def clap_model(tmp_path_factory):
    """Tiny CLAP (HTSAT audio tower, 1 s window at 48 kHz)."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    folder = tmp_path_factory.mktemp("models") / "tiny-clap"
    config = ClapConfig(
        text_config=dict(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=40),
        audio_config=dict(window_size=4, num_mel_bins=64, spec_size=128, patch_size=4,
                          patch_stride=(4, 4), depths=[1, 1], num_attention_heads=[1, 2],
                          patch_embeds_hidden_size=8, hidden_size=16, projection_dim=8,
                          num_classes=3),
        projection_dim=8)
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(folder)
    ClapFeatureExtractor(feature_size=64, sampling_rate=48000, hop_length=480, max_length_s=1,
                         fft_window_size=1024, truncation="rand_trunc",
                         padding="repeatpad").save_pretrained(folder)
    return folder


def clip(freq: float, seconds: float = 1.0, sr: int = 44100) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    left = 0.3 * np.sin(2 * np.pi * freq * t)
    right = 0.2 * np.sin(2 * np.pi * freq * 1.5 * t)
    return np.stack([left, right], axis=1).astype(np.float32)


def flac(wave: np.ndarray, sr: int = 44100) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_shard(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {k: [r.get(k) for r in rows] for k in
            ("id", "template", "split", "code", "family", "scenario", "group_id", "sonic_pi_version")}
    table = pa.table({**{k: pa.array(v, pa.string()) for k, v in cols.items()},
                      "audio": pa.array([r["audio"] for r in rows], AUDIO_TYPE)})
    pq.write_table(table, path, row_group_size=2)


def make_dataset(root, bad_audio_id=None):
    """default: train a1 b2 c3, test d4; scenarios: train a1 (shared id) + e5."""
    freqs = {"a1": 220.0, "b2": 330.0, "c3": 440.0, "d4": 550.0, "e5": 660.0}
    programs = {**PROGRAMS, "e5": "play 50\nsleep 0.25\nplay 52\n"}

    def row(i, split, scenario=None):
        audio = b"not a flac file" if i == bad_audio_id else flac(clip(freqs[i]))
        return {"id": i, "template": "haunted", "split": split, "code": programs[i],
                "family": None, "scenario": scenario,
                "group_id": f"haunted:{scenario}:a1" if scenario else None,
                "sonic_pi_version": "3.2.2", "audio": {"bytes": audio, "path": f"{i}.flac"}}

    write_shard(root / "data/default/train-00000-of-00001.parquet",
                [row("a1", "train"), row("b2", "train"), row("c3", "train")])
    write_shard(root / "data/default/test-00000-of-00001.parquet", [row("d4", "test")])
    write_shard(root / "data/scenarios/train-00000-of-00001.parquet",
                [row("a1", "train", "melody"), row("e5", "train", "melody")])
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/default/train-*.parquet\n  - split: test\n"
        "    path: data/default/test-*.parquet\n- config_name: scenarios\n  data_files:\n"
        "  - split: train\n    path: data/scenarios/train-*.parquet\n---\n# tiny\n")
    return root


@pytest.fixture()
def dataset(tmp_path):
    return make_dataset(tmp_path / "dataset")


@pytest.fixture(scope="module")
def encoders(code_model, audio_model):
    return load_code_encoder(str(code_model)), load_audio_encoder(str(audio_model))


# ---------------------------------------------------------------- encoders


def manual_mean(model, ids_list):
    """Reference: run each window alone, token-weighted mean, L2 norm."""
    total, count = 0, 0
    for ids in ids_list:
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        total = total + hidden.sum(0).numpy().astype(np.float64)
        count += len(ids)
    vec = total / count
    return vec / np.linalg.norm(vec)


def test_code_encoder_mean_pooling_matches_reference(code_model, encoders):
    enc = encoders[0]
    assert enc.max_length == WINDOW and enc.dim == 32
    out = enc.encode(list(PROGRAMS.values()))
    assert out.shape == (4, 32) and out.dtype == np.float32
    assert np.linalg.norm(out, axis=1) == pytest.approx(np.ones(4), abs=1e-5)
    tok = enc.tokenizer
    text = PROGRAMS["b2"]  # short: one window
    ref = manual_mean(enc.model, [tok(text)["input_ids"]])
    np.testing.assert_allclose(out[1], ref, atol=1e-5)


def test_code_encoder_chunks_long_programs(encoders):
    enc = encoders[0]
    text = PROGRAMS["c3"]  # 150 bytes -> 3 windows of at most 62 body tokens
    body = enc.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(body) > 2 * (WINDOW - 2)
    windows = [[0] + body[i:i + WINDOW - 2] + [2] for i in range(0, len(body), WINDOW - 2)]
    np.testing.assert_allclose(enc.encode([text])[0], manual_mean(enc.model, windows), atol=1e-5)


def test_code_encoder_truncate_uses_sentence_transformers_length(code_model):
    enc = load_code_encoder(str(code_model), long_input="truncate")
    assert enc.max_length == 32  # from sentence_bert_config.json
    text = PROGRAMS["c3"]
    body = enc.tokenizer(text, add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(enc.encode([text])[0],
                               manual_mean(enc.model, [[0] + body[:30] + [2]]), atol=1e-5)


def test_code_encoder_deterministic_and_batch_invariant(encoders):
    enc = encoders[0]
    texts = list(PROGRAMS.values())
    a = enc.encode(texts)
    np.testing.assert_array_equal(a, enc.encode(texts))
    one_by_one = np.stack([enc.encode([t], batch_size=1)[0] for t in texts])
    np.testing.assert_allclose(a, one_by_one, atol=1e-5)  # padding never leaks into the mean


def test_code_encoder_cls_pooling_and_options(code_model):
    enc = load_code_encoder(str(code_model), pooling="cls", normalize=False)
    ids = enc.tokenizer(PROGRAMS["c3"])["input_ids"][:WINDOW - 1] + [2]
    with torch.no_grad():
        ref = enc.model(input_ids=torch.tensor([ids])).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(enc.encode([PROGRAMS["c3"]])[0], ref, atol=1e-5)
    with pytest.raises(ValueError, match="long_input"):
        load_code_encoder(str(code_model), long_input="bogus")


def test_code_encoder_describe_reads_licence_and_revision(encoders):
    desc = encoders[0].describe()
    assert desc["licence"] == "apache-2.0"  # from the folder's README front matter
    assert desc["revision"].startswith("local-sha256:")
    assert desc["pooling"].startswith("mean") and "L2" in desc["pooling"]


def test_audio_encoder_resamples_and_mean_pools(encoders):
    enc = encoders[1]
    assert enc.sample_rate == 16000 and enc.dim == 32
    wave = clip(440.0)
    out = enc.encode([(wave, 44100)])
    mono = wave.mean(axis=1)
    x = resample_poly(mono, 160, 441).astype(np.float32)  # 44100 -> 16000
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # Wav2Vec2FeatureExtractor normalisation
    with torch.no_grad():
        ref = enc.model(torch.from_numpy(x[None])).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(out[0], ref, atol=1e-4)


def test_audio_encoder_deterministic_mixed_lengths_and_rates(encoders):
    enc = encoders[1]
    clips = [(clip(220.0), 44100), (clip(330.0, 0.5), 44100), (clip(440.0)[:, 0], 48000),
             (clip(220.0), 44100)]
    a = enc.encode(clips, batch_size=4)
    np.testing.assert_array_equal(a, enc.encode(clips, batch_size=4))
    np.testing.assert_allclose(a, enc.encode(clips, batch_size=1), atol=1e-5)
    np.testing.assert_array_equal(a[0], a[3])


def test_bf16_autocast_path_stays_close_to_fp32(code_model, audio_model, encoders):
    # the GPU path's autocast, exercised on CPU: same numbers to bf16 precision
    code16 = load_code_encoder(str(code_model), precision="bf16")
    audio16 = load_audio_encoder(str(audio_model), precision="bf16")
    assert code16.describe()["precision"] == "bf16"
    texts = list(PROGRAMS.values())
    np.testing.assert_allclose(code16.encode(texts), encoders[0].encode(texts), atol=0.05)
    clips = [(clip(220.0), 44100)]
    a16, a32 = audio16.encode(clips), encoders[1].encode(clips)
    assert a16.dtype == np.float32
    assert np.corrcoef(a16[0], a32[0])[0, 1] > 0.99


def test_clap_encoder_windows_and_normalises(clap_model):
    enc = load_audio_encoder(str(clap_model))
    assert enc.sample_rate == 48000 and enc.dim == 8
    assert enc.preparer.window_starts(int(2.5 * 48000)) == [0, 36000, 72000]  # 1 s windows
    wave = clip(330.0, 2.5)
    out = enc.encode([(wave, 44100), (wave, 44100)])
    assert out.shape == (2, 8)
    assert np.linalg.norm(out, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out, enc.encode([(wave, 44100), (wave, 44100)]))
    assert "window" in enc.describe()["pooling"]


def test_missing_model_names_model_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError,
                       match=r"someorg/missing-model.*offline.*huggingface-cli download someorg/missing-model"):
        load_code_encoder("someorg/missing-model", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_code_encoder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="could not be loaded from the folder"):
        load_audio_encoder(str(tmp_path / "empty"))


def test_populated_hub_cache_loads_without_network(tmp_path, code_model, monkeypatch):
    import shutil
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someorg--tiny-roberta"
    shutil.copytree(code_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    start = time.perf_counter()
    enc = load_code_encoder("someorg/tiny-roberta", cache_dir=str(tmp_path / "cache"))
    assert time.perf_counter() - start < 30  # no hub round trips with retries
    assert enc.revision == commit
    by_folder = load_code_encoder(str(repo / "snapshots" / commit))
    assert by_folder.revision == commit
    assert by_folder.describe()["licence"] == "apache-2.0"


# ---------------------------------------------------------------- the stage


def run(dataset, out, code_model, audio_model, **settings):
    settings.setdefault("num_workers", 0)
    return embed_dataset(dataset, out, EmbedSettings(code_model=str(code_model), audio_model=str(audio_model),
                                                     **settings), progress=False)


def test_embed_dataset_writes_the_contract(dataset, tmp_path, code_model, audio_model, encoders):
    result = run(dataset, tmp_path / "emb", code_model, audio_model)
    assert result.path == tmp_path / "emb/tiny-roberta__tiny-wav2vec2/embeddings.parquet"
    assert result.rows == 6 and result.new_rows == 6 and not result.failed
    assert result.code_computed == 5 and result.audio_computed == 5  # a1 embedded once
    table = pq.read_table(result.path)
    assert table.column_names == ["id", "config", "split", "template", "family", "scenario",
                                  "group_id", "code_emb", "audio_emb"]
    assert table.schema.field("code_emb").type == pa.list_(pa.float32())
    assert table.schema.field("audio_emb").type == pa.list_(pa.float32())
    keys = list(zip(table.column("config").to_pylist(), table.column("split").to_pylist(),
                    table.column("id").to_pylist()))
    assert keys == [("default", "test", "d4"), ("default", "train", "a1"),
                    ("default", "train", "b2"), ("default", "train", "c3"),
                    ("scenarios", "train", "a1"), ("scenarios", "train", "e5")]
    assert table.column("scenario").to_pylist()[4] == "melody"
    assert table.column("group_id").to_pylist()[4] == "haunted:melody:a1"
    meta_table, code, audio, meta = read_embeddings(result.path)
    assert code.shape == (6, 32) and audio.shape == (6, 32)
    for key in ("code_model", "code_revision", "code_pooling", "audio_model", "audio_revision",
                "audio_pooling", "audio_sample_rate", "code_licence", "audio_licence"):
        assert meta[key], key
    assert meta["audio_sample_rate"] == "16000" and meta["sonic_pi_version"] == "3.2.2"
    code_enc, audio_enc = encoders
    ids = meta_table.column("id").to_pylist()
    programs = {**PROGRAMS, "e5": "play 50\nsleep 0.25\nplay 52\n"}
    np.testing.assert_allclose(code, code_enc.encode([programs[i] for i in ids]), atol=1e-5)
    freqs = {"a1": 220.0, "b2": 330.0, "c3": 440.0, "d4": 550.0, "e5": 660.0}
    decoded = [sf.read(io.BytesIO(flac(clip(freqs[i]))), dtype="float32") for i in ids]
    np.testing.assert_allclose(audio, audio_enc.encode([(w, sr) for w, sr in decoded]), atol=1e-5)
    np.testing.assert_array_equal(audio[1], audio[4])  # same id in two configs
    prov = json.loads((result.path.parent / "provenance.json").read_text())
    assert prov["code_encoder"]["model"] == str(code_model)
    assert prov["audio_encoder"]["sample_rate"] == 16000
    assert prov["counts"]["rows"] == 6 and prov["sonic_pi_version"] == ["3.2.2"]
    assert not (result.path.parent / ".parts").exists()


def test_rerun_embeds_only_what_is_missing(dataset, tmp_path, code_model, audio_model):
    out = tmp_path / "emb"
    first = run(dataset, out, code_model, audio_model, limit=2)
    assert first.rows == 2 and first.audio_computed == 2
    before = pq.read_table(first.path)
    second = run(dataset, out, code_model, audio_model)
    assert second.rows == 6 and second.new_rows == 4
    # rows: d4, a1 done; b2, c3, e5 new; scenarios/a1 reuses a1's vectors
    assert second.code_computed == 3 and second.audio_computed == 3
    after = pq.read_table(second.path)
    for i, key in enumerate(zip(before.column("config").to_pylist(), before.column("id").to_pylist())):
        j = list(zip(after.column("config").to_pylist(), after.column("id").to_pylist())).index(key)
        assert after.column("code_emb")[j].as_py() == before.column("code_emb")[i].as_py()
    mtime = second.path.stat().st_mtime_ns
    third = run(dataset, out, code_model, audio_model)
    assert third.new_rows == 0 and third.code_computed == 0
    assert second.path.stat().st_mtime_ns == mtime
    prov = json.loads((second.path.parent / "provenance.json").read_text())
    assert len(prov["history"]) == 1


def test_a_rerun_follows_a_rebuilt_dataset_splits_and_drops_what_left_it(tmp_path, code_model,
                                                                         audio_model):
    """A dataset rebuilt with more programs re-splits some of them: the embeddings must
    carry the dataset's splits as they are now, reusing the vectors, and drop rows the
    dataset no longer has."""
    dataset = make_dataset(tmp_path / "dataset")
    out = tmp_path / "emb"
    first = run(dataset, out, code_model, audio_model)
    vectors = {(c, i): v for c, i, v in zip(*(pq.read_table(first.path).column(k).to_pylist()
                                              for k in ("config", "id", "code_emb")))}
    # the rebuild: c3 moves from train to test, b2 leaves the dataset
    table = pq.read_table(dataset / "data/default/train-00000-of-00001.parquet")
    rows = {r["id"]: r for r in table.to_pylist()}
    write_shard(dataset / "data/default/train-00000-of-00001.parquet", [rows["a1"]])
    test = pq.read_table(dataset / "data/default/test-00000-of-00001.parquet").to_pylist()
    write_shard(dataset / "data/default/test-00000-of-00001.parquet", test + [{**rows["c3"], "split": "test"}])

    second = run(dataset, out, code_model, audio_model)
    assert second.code_computed == 0 and second.audio_computed == 0  # nothing new to embed
    after = pq.read_table(second.path)
    keys = list(zip(*(after.column(k).to_pylist() for k in ("config", "split", "id"))))
    assert keys == [("default", "test", "c3"), ("default", "test", "d4"), ("default", "train", "a1"),
                    ("scenarios", "train", "a1"), ("scenarios", "train", "e5")]
    for config, _, id_ in keys:
        j = keys.index((config, _, id_))
        assert after.column("code_emb")[j].as_py() == vectors[config, id_]
    third = run(dataset, out, code_model, audio_model)
    assert third.new_rows == 0 and third.path.stat().st_mtime_ns == second.path.stat().st_mtime_ns


def test_interrupted_run_resumes_from_checkpoints(dataset, tmp_path, code_model, audio_model,
                                                 monkeypatch):
    from embed.encoders import HFAudioEncoder

    def broken(self, batch):
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(HFAudioEncoder, "encode_prepared", broken)
        crashed = run(dataset, tmp_path / "emb", code_model, audio_model, checkpoint_every=2)
    assert crashed.rows == 0 and len(crashed.failed) == 5
    assert {f["stage"] for f in crashed.failed} == {"audio"}
    assert "simulated crash" in crashed.failed[0]["error"]
    parts = crashed.path.parent / ".parts"
    assert len(list(parts.glob("code-*.parquet"))) == 3  # 5 programs, 2 per checkpoint
    resumed = run(dataset, tmp_path / "emb", code_model, audio_model)
    assert resumed.code_computed == 0 and resumed.audio_computed == 5 and resumed.rows == 6
    assert not parts.exists()


def test_one_bad_clip_is_recorded_and_skipped(tmp_path, code_model, audio_model):
    data = make_dataset(tmp_path / "dataset", bad_audio_id="b2")
    result = run(data, tmp_path / "emb", code_model, audio_model)
    assert [f["id"] for f in result.failed] == ["b2"]
    assert "LibsndfileError" in result.failed[0]["error"] or "Error" in result.failed[0]["error"]
    assert result.rows == 5
    prov = json.loads((result.path.parent / "provenance.json").read_text())
    assert prov["failed"][0]["id"] == "b2"


def test_changed_settings_refuse_to_mix(dataset, tmp_path, code_model, audio_model):
    run(dataset, tmp_path / "emb", code_model, audio_model, limit=2)
    with pytest.raises(EmbedSettingsError, match="code.long_input.*another --out"):
        run(dataset, tmp_path / "emb", code_model, audio_model, long_input="truncate")


def test_workers_give_the_same_numbers(dataset, tmp_path, code_model, audio_model):
    serial = run(dataset, tmp_path / "a", code_model, audio_model, num_workers=0)
    parallel = run(dataset, tmp_path / "b", code_model, audio_model, num_workers=2,
                   audio_batch_size=2)
    _, code_a, audio_a, _ = read_embeddings(serial.path)
    _, code_b, audio_b, _ = read_embeddings(parallel.path)
    np.testing.assert_array_equal(code_a, code_b)
    np.testing.assert_allclose(audio_a, audio_b, atol=1e-5)


def test_datasets_reader_matches_parquet_reader(dataset, tmp_path, code_model):
    pytest.importorskip("datasets")
    via_pyarrow = read_dataset_index(dataset, reader="parquet")
    via_datasets = read_dataset_index(str(dataset), reader="datasets")
    key = lambda r: (r.config, r.split, r.id, r.code, r.column("scenario"))  # noqa: E731
    assert sorted(map(key, via_pyarrow.rows)) == sorted(map(key, via_datasets.rows))
    result = run(dataset, tmp_path / "emb", code_model, "logmel", reader="datasets")
    _, _, audio, meta = read_embeddings(result.path)
    assert audio.shape == (6, 128) and meta["audio_model"] == "logmel-stats"
    assert result.path.parent.name == "tiny-roberta__logmel-stats"


def test_configs_and_splits_filter(dataset, tmp_path, code_model):
    result = run(dataset, tmp_path / "emb", code_model, "logmel", configs=["default"],
                 splits=["train"])
    table, _, _, _ = read_embeddings(result.path)
    assert table.column("id").to_pylist() == ["a1", "b2", "c3"]


def test_output_dir_names():
    assert output_dir("emb", "flax-sentence-embeddings/st-codesearch-distilroberta-base",
                      "facebook/wav2vec2-base-960h").name == \
        "st-codesearch-distilroberta-base__wav2vec2-base-960h"
    assert output_dir("emb", "codebert", "clap").name == "codebert-base__clap-htsat-unfused"


# ---------------------------------------------------------------- the command


def test_cli_embeds_and_reports(dataset, tmp_path, code_model, audio_model):
    args = ["--dataset", str(dataset), "--out", str(tmp_path / "emb"), "--code-model",
            str(code_model), "--audio-model", str(audio_model), "--workers", "0",
            "--no-progress", "--config", "default", "--audio-batch-size", "2",
            "--code-batch-size", "4", "--precision", "fp32", "--device", "cpu"]
    result = CliRunner().invoke(embed_command, args)
    assert result.exit_code == 0, result.output
    assert "wrote 4 rows (4 new)" in result.output and "clips/s" in result.output
    assert "licence apache-2.0" in result.output
    again = CliRunner().invoke(embed_command, args)
    assert again.exit_code == 0 and "wrote 4 rows (0 new)" in again.output


def test_cli_defaults_are_embed_settings_defaults(dataset, tmp_path, monkeypatch):
    import embed.cli

    seen = {}

    def fake_embed(dataset, out_dir, settings, **kw):
        seen.update(settings=settings, **kw)
        return EmbedResult(path=tmp_path / "x", rows=0, new_rows=0)

    monkeypatch.setattr(embed.cli, "embed_dataset", fake_embed)
    result = CliRunner().invoke(embed_command, ["--dataset", str(dataset)])
    assert result.exit_code == 0, result.output
    assert seen["settings"] == EmbedSettings() and seen["progress"] is True


def test_cli_help_lists_licences():
    result = CliRunner().invoke(embed_command, ["--help"])
    assert result.exit_code == 0
    assert "CC-BY-NC-4.0" in result.output and "non-commercial" in result.output
    assert "laion/clap-htsat-unfused" in result.output and "HF_HUB_OFFLINE" in result.output


def test_cli_missing_model_is_a_clean_error(dataset, tmp_path):
    result = CliRunner().invoke(embed_command, [
        "--dataset", str(dataset), "--out", str(tmp_path / "emb"),
        "--code-model", str(tmp_path / "missing-model"), "--audio-model", "logmel", "--no-progress"])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "huggingface-cli download" in result.output
    assert "Traceback" not in result.output


def test_cli_notes_restrictive_licence(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(embed_command, [
        "--dataset", str(dataset), "--out", str(tmp_path / "emb"), "--code-model", "codebert",
        "--audio-model", "mert", "--no-progress", "--offline"])
    assert result.exit_code == 1
    assert "non-commercial use only" in result.output
    assert "microsoft/codebert-base" in result.output and "huggingface-cli download" in result.output
