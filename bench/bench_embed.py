"""Throughput of the embed stage: clips/s and audio-seconds/s on N synthetic 18 s clips.

    .venv/bin/python bench/bench_embed.py --clips 16                 # base-size stand-ins
    .venv/bin/python bench/bench_embed.py --size tiny --clips 64     # quick sanity run
    .venv/bin/python bench/bench_embed.py --code-model /models/st-codesearch \
        --audio-model /models/wav2vec2-base-960h --device cuda       # real weights

Without model folders it builds stand-ins with the default encoders' architectures
(`base`: distilroberta-base 6x768 and wav2vec2-base 12x768 with random weights, so the
arithmetic per clip is the real one; `tiny`: 2-layer toys) and a byte-level BPE
tokenizer trained on the synthetic programs. The whole stage runs: a dataset folder in
the contract's layout, FLAC decoding in DataLoader workers, resampling, batched
inference, the Parquet write. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embed import EmbedSettings, embed_dataset  # noqa: E402
from embed.encoders import load_audio_encoder, load_code_encoder  # noqa: E402

CLIP_S = 18.0  # 120 BPM x 9 bars of 4/4 (docs/contracts.md)
SAMPLE_RATE = 44100
SYNTHS = ("prophet", "tb303", "dsaw", "blade", "hollow", "fm", "pluck")
SAMPLES = ("bd_haus", "sn_dub", "hat_snap", "loop_amen", "bass_hit_c")


def synth_program(rng: np.random.Generator) -> str:
    """A plausible Sonic Pi program of 1-3 KB (the size of the bundled examples)."""
    lines = ["use_bpm 120", f"use_random_seed {int(rng.integers(1000))}"]
    for loop in range(int(rng.integers(3, 7))):
        lines += [f"live_loop :part{loop} do", f"  use_synth :{rng.choice(SYNTHS)}",
                  f"  with_fx :reverb, room: {rng.uniform(0, 1):.2f} do"]
        for _ in range(int(rng.integers(3, 8))):
            if rng.random() < 0.4:
                lines.append(f"    sample :{rng.choice(SAMPLES)}, amp: {rng.uniform(0.2, 1.5):.2f}, "
                             f"rate: {rng.choice([0.5, 1, 2])}")
            else:
                lines.append(f"    play {int(rng.integers(36, 84))}, attack: {rng.uniform(0, 0.3):.2f}, "
                             f"release: {rng.uniform(0.1, 2):.2f}, cutoff: {int(rng.integers(60, 130))}")
            lines.append(f"    sleep {rng.choice([0.25, 0.5, 1])}")
        lines += ["  end", "end"]
    return "\n".join(lines) + "\n"


def synth_clip(rng: np.random.Generator) -> np.ndarray:
    """18 s stereo: decaying notes on a 0.25 s grid plus noise hits (compresses like music)."""
    n = int(CLIP_S * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros((n, 2), dtype=np.float32)
    for onset in np.arange(0, CLIP_S, 0.25):
        if rng.random() < 0.5:
            continue
        start = int(onset * SAMPLE_RATE)
        length = min(n - start, int(rng.uniform(0.1, 0.8) * SAMPLE_RATE))
        tt = t[:length]
        freq = 440.0 * 2 ** ((int(rng.integers(36, 84)) - 69) / 12)
        note = np.sin(2 * np.pi * freq * tt) * np.exp(-tt * rng.uniform(2, 12))
        if rng.random() < 0.3:
            note = note + rng.standard_normal(length) * np.exp(-tt * 30) * 0.5
        pan = rng.uniform(0.2, 0.8)
        out[start:start + length, 0] += 0.2 * pan * note
        out[start:start + length, 1] += 0.2 * (1 - pan) * note
    return np.clip(out, -1, 1)


def write_dataset(root: Path, clips: int, seed: int) -> Path:
    """`clips` rows in data/default/train-00000-of-00001.parquet (HF layout, FLAC bytes)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(clips):
        buf = io.BytesIO()
        sf.write(buf, synth_clip(rng), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        rows.append({"id": f"{i:016x}", "template": "bench", "split": "train",
                     "code": synth_program(rng), "audio": {"bytes": buf.getvalue(), "path": f"{i}.flac"}})
    path = root / "data/default/train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({k: pa.array([r[k] for r in rows], pa.string())
                      for k in ("id", "template", "split", "code")}
                     | {"audio": pa.array([r["audio"] for r in rows], audio_type)})
    pq.write_table(table, path, row_group_size=100)  # datasets' row group size for audio
    return root


def build_code_standin(folder: Path, size: str, corpus: list[str]) -> Path:
    """distilroberta-base architecture (or a toy) + a byte-level BPE trained on `corpus`."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=4000, special_tokens=specials, show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))
    RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt")).save_pretrained(folder)
    dims = (dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072)
            if size == "base" else
            dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128))
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=50265, max_position_embeddings=514, pad_token_id=1,
                               bos_token_id=0, eos_token_id=2, **dims)).save_pretrained(folder)
    return folder


def build_audio_standin(folder: Path, size: str) -> Path:
    """wav2vec2-base architecture (Wav2Vec2Config defaults) or a toy, with its extractor."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = (Wav2Vec2Config() if size == "base" else
              Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, conv_dim=(32,) * 7))
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=False).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="synthetic 18 s clips")
    parser.add_argument("--size", choices=("base", "tiny"), default="base",
                        help="stand-in size when no model folder is given")
    parser.add_argument("--code-model", help="real code model folder (default: stand-in)")
    parser.add_argument("--audio-model", help="real audio model folder (default: stand-in)")
    parser.add_argument("--also", default="logmel",
                        help="extra audio encoders to time, comma-separated ('' for none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--audio-batch-size", type=int, default=8)
    parser.add_argument("--code-batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        data = write_dataset(tmp_path / "dataset", args.clips, args.seed)
        made = time.perf_counter() - t0
        corpus = [synth_program(np.random.default_rng(s)) for s in range(200)]
        code_path = args.code_model or str(build_code_standin(
            tmp_path / f"code-{args.size}", args.size, corpus))
        audio_path = args.audio_model or str(build_audio_standin(tmp_path / f"audio-{args.size}", args.size))
        code_enc = load_code_encoder(code_path, args.device, precision=args.precision,
                                     batch_size=args.code_batch_size)
        tokens = np.mean([len(t) for t in code_enc.token_ids(corpus[:50])])
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"device {code_enc.device} ({torch.get_num_threads()} torch threads, "
              f"{os.cpu_count()} cores, load average {load:.1f} at start), precision "
              f"{code_enc.precision}; {args.clips} clips x {CLIP_S:g} s made in {made:.1f} s; "
              f"programs ~{tokens:.0f} tokens")
        results = []
        for audio_name in [audio_path] + [a for a in args.also.split(",") if a]:
            audio_enc = load_audio_encoder(audio_name, args.device, precision=args.precision,
                                           batch_size=args.audio_batch_size)
            label = ("stand-in " + args.size if audio_name == audio_path and not args.audio_model
                     else audio_name)
            start = time.perf_counter()
            settings = EmbedSettings(num_workers=args.workers, device=args.device,
                                     audio_batch_size=args.audio_batch_size,
                                     code_batch_size=args.code_batch_size)
            res = embed_dataset(data, tmp_path / f"out-{len(results)}", settings,
                                code_encoder=code_enc, audio_encoder=audio_enc, progress=False)
            total = time.perf_counter() - start
            row = {"audio_encoder": audio_enc.name if args.audio_model or audio_name != audio_path
                   else f"wav2vec2-base architecture ({args.size} stand-in)",
                   "code_encoder": code_path if args.code_model
                   else f"distilroberta-base architecture ({args.size} stand-in)",
                   "device": str(code_enc.device), "precision": code_enc.precision,
                   "clips": args.clips, "clips_per_s": round(res.clips_per_s, 3),
                   "audio_seconds_per_s": round(res.audio_seconds_per_s, 2),
                   "code_programs_per_s": round(res.code_computed / max(res.code_seconds, 1e-9), 2),
                   "total_s": round(total, 2), "failed": len(res.failed)}
            results.append(row)
            print(f"{label:28} audio {row['clips_per_s']:8.2f} clips/s "
                  f"{row['audio_seconds_per_s']:9.1f} audio-s/s | code "
                  f"{row['code_programs_per_s']:8.1f} programs/s | stage {total:.1f} s")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
