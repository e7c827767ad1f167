"""Synthetic paired embeddings with a known hidden relation, for tests and benchmarks.

Both modalities see one shared latent z (per-template centre + per-program variation)
through different non-linear maps, buried under modality-specific nuisance factors that
carry most of the variance:

    code  = tanh((z + s e_c) W_c) P_c + 1.5 tanh(u_c) Q_c + noise
    audio = sin((z + s e_a) W_a)  P_a + 1.5 relu(u_a) Q_a + noise

so the raw spaces agree poorly (linear CKA ~0.1-0.2) while an aligner that recovers z
from both sides can make them agree well, but not perfectly: each side sees the latent
through its own noise e_c, e_a (scale s = ``latent_noise``), so, as with real programs
whose code does not fix their sound, pairs cannot all be told apart and training
overfits after a while. Families and scenarios rows follow the contract, so every
section of the report has data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sonicpi_gen.folders import EMBEDDINGS_META_COLUMNS, embeddings_table, write_embeddings

LATENT_DIM = 8
NUISANCE_DIM = 16
LATENT_NOISE = 0.4  # per-modality noise on the shared latent (its spread is 0.8)
FAMILY_PARAMS = ("amp", "sleep", "bpm")
SCENARIOS = ("melody", "drum", "bass")


class SyntheticWorld:
    """The fixed random maps from latent to each modality (one per seed)."""

    def __init__(self, code_dim: int = 768, audio_dim: int = 768, n_templates: int = 27, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.centres = rng.normal(size=(n_templates, LATENT_DIM)) * 1.2
        self.Wc = rng.normal(size=(LATENT_DIM, 32)) / np.sqrt(LATENT_DIM)
        self.Wa = rng.normal(size=(LATENT_DIM, 32)) * 1.5 / np.sqrt(LATENT_DIM)
        self.Pc = rng.normal(size=(32, code_dim)) / np.sqrt(32)
        self.Pa = rng.normal(size=(32, audio_dim)) / np.sqrt(32)
        self.Qc = rng.normal(size=(NUISANCE_DIM, code_dim)) / np.sqrt(NUISANCE_DIM)
        self.Qa = rng.normal(size=(NUISANCE_DIM, audio_dim)) / np.sqrt(NUISANCE_DIM)
        self.code_dim, self.audio_dim = code_dim, audio_dim

    def latent(self, templates: np.ndarray, spread: float = 0.8) -> np.ndarray:
        return self.centres[templates] + spread * self.rng.normal(size=(len(templates), LATENT_DIM))

    def views(self, z: np.ndarray, noise: float = 0.05, latent_noise: float = LATENT_NOISE) -> tuple[np.ndarray, np.ndarray]:
        n = len(z)
        uc = self.rng.normal(size=(n, NUISANCE_DIM)) * 2.0
        ua = self.rng.normal(size=(n, NUISANCE_DIM)) * 2.0
        zc = z + latent_noise * self.rng.normal(size=z.shape)
        za = z + latent_noise * self.rng.normal(size=z.shape)
        code = np.tanh(zc @ self.Wc) @ self.Pc + 1.5 * np.tanh(uc) @ self.Qc
        audio = np.sin(za @ self.Wa) @ self.Pa + 1.5 * np.maximum(ua, 0) @ self.Qa
        code += noise * self.rng.normal(size=code.shape)
        audio += noise * self.rng.normal(size=audio.shape)
        return code.astype(np.float32), audio.astype(np.float32)


def make_pairs(
    n: int,
    code_dim: int = 64,
    audio_dim: int = 64,
    n_templates: int = 27,
    seed: int = 0,
    latent_noise: float = LATENT_NOISE,
):
    """``n`` paired rows: (code (n, code_dim), audio (n, audio_dim), template index (n,))."""
    world = SyntheticWorld(code_dim, audio_dim, n_templates, seed)
    templates = np.arange(n) % n_templates
    code, audio = world.views(world.latent(templates), latent_noise=latent_noise)
    return code, audio, templates


def _split_of(i: int) -> str:
    r = i % 10  # 80/10/10, interleaved so each template lands in every split
    return "train" if r < 8 else "validation" if r == 8 else "test"


def write_synthetic_embeddings(
    out: str | Path,
    n_templates: int = 27,
    per_template: int = 500,
    dim: int = 768,
    families: int = 2,
    scenarios: int = 2,
    candidates: int = 10,
    seed: int = 0,
) -> Path:
    """Write ``out/embeddings.parquet`` in the embed stage's layout (docs/contracts.md).

    Args:
        n_templates, per_template: base programs (27 x 500 = 13,500 as in the study).
        dim: code and audio embedding size.
        families: perturbation groups per family parameter (amp, sleep, bpm), each a base
            program plus 4 variants with a small latent change.
        scenarios: groups per completion scenario (melody, drum, bass) of ``candidates``.
        seed: everything is drawn from it.
    Returns:
        The folder written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(dim, dim, n_templates, seed)
    rows: dict[str, list] = {k: [] for k in EMBEDDINGS_META_COLUMNS}
    codes, audios = [], []

    def add(ids, config, split, template, family, scenario, group, code, audio):
        for j, i in enumerate(ids):
            rows["id"].append(i)
            rows["config"].append(config)
            rows["split"].append(split[j] if isinstance(split, list) else split)
            rows["template"].append(template[j] if isinstance(template, list) else template)
            rows["family"].append(family)
            rows["scenario"].append(scenario)
            rows["group_id"].append(group)
        codes.append(code)
        audios.append(audio)

    templates = np.repeat(np.arange(n_templates), per_template)
    z = world.latent(templates)
    code, audio = world.views(z)
    names = [f"t{t:02d}" for t in templates]
    ids = [f"{k:016x}" for k in range(len(templates))]
    add(ids, "default", [_split_of(k) for k in range(len(ids))], names, None, None, None, code, audio)

    for param in FAMILY_PARAMS:
        for g in range(families):
            base = g * per_template  # the first program of template g
            zz = z[base] + 0.05 * world.rng.normal(size=(5, LATENT_DIM))
            zz[0] = z[base]
            c, a = world.views(zz)
            group = f"{names[base]}:{param}:{ids[base]}"
            vids = [ids[base]] + [f"{param}{g}v{v}" for v in range(1, 5)]
            add(vids, "families", "test", names[base], param, None, group, c, a)

    for scen in SCENARIOS:
        for g in range(scenarios):
            base = (g + 1) * per_template % len(ids)
            zz = z[base] + 0.6 * world.rng.normal(size=(candidates, LATENT_DIM))
            c, a = world.views(zz)
            group = f"{names[base]}:{scen}:{ids[base]}"
            cids = [f"{scen}{g}c{v}" for v in range(candidates)]
            add(cids, "scenarios", "test", names[base], None, scen, group, c, a)

    code_all = np.concatenate(codes).astype(np.float32)
    audio_all = np.concatenate(audios).astype(np.float32)
    table = embeddings_table(rows, code_all, audio_all, {"code_model": "synthetic/code", "audio_model": "synthetic/audio",
                                                          "synthetic_seed": str(seed)})
    write_embeddings(out, table)
    return out
