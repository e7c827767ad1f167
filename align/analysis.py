"""The study's analyses on an embeddings table: base-program correlation, perturbation
families and code-completion scenarios. Each takes an EmbeddingTable and, where it
applies, an optional function mapping raw code embeddings into the aligned space."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pandas as pd

from align import metrics
from align.data import EmbeddingTable, base_rows

logger = logging.getLogger(__name__)

# The study's thresholds for the perturbation finding: code similarity stays above
# CODE_SIM_HIGH while audio similarity falls below AUDIO_SIM_LOW.
CODE_SIM_HIGH = 0.990
AUDIO_SIM_LOW = 0.975
GOLD_SIZE = 3  # "the 3 most mutually distant candidates"

Mapper = Callable[[np.ndarray], np.ndarray]


def correlation_with_p(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman with two-sided p-values (scipy when installed, else nan p)."""
    out = {"pearson": metrics.pearson(a, b), "spearman": metrics.spearman(a, b)}
    try:
        from scipy import stats
    except ImportError:  # p-values only; the coefficients above need numpy alone
        return {**out, "pearson_p": float("nan"), "spearman_p": float("nan")}
    ok = len(a) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0
    out["pearson_p"] = float(stats.pearsonr(a, b).pvalue) if ok else float("nan")
    out["spearman_p"] = float(stats.spearmanr(a, b).pvalue) if ok else float("nan")
    return out


def base_program_rows(table: EmbeddingTable, config: str = "default") -> tuple[np.ndarray, str]:
    """Row indices of one base program per template, and how they were chosen.

    Per template: its perturbation-family base when there is one (the template's first
    program for the run's seed, member 0 of its groups), else its first row among the
    ``config`` base programs in file order.
    """
    meta = table.meta
    picked: dict[str, int] = {}
    fam = meta[meta["family"].notna() & meta["group_id"].notna()]
    for gid, group in fam.groupby("group_id", sort=False):
        base_id = str(gid).rsplit(":", 1)[-1]
        hit = group.index[group["id"] == base_id]
        if len(hit) and group.loc[hit[0], "template"] not in picked:
            picked[group.loc[hit[0], "template"]] = int(hit[0])
    n_family = len(picked)
    rows = np.flatnonzero(base_rows(table, config))
    for i, template in zip(rows, meta["template"].iloc[rows]):
        picked.setdefault(template, int(i))
    how = f"{n_family} perturbation-family bases, {len(picked) - n_family} first rows of config {config!r}"
    return np.array(sorted(picked.values()), dtype=int), how


def base_program_correlation(table: EmbeddingTable, config: str = "default") -> dict:
    """Correlation between code-code and audio-audio pairwise cosine distances over one
    base program per template (27 programs -> 351 pairs in the study)."""
    rows, how = base_program_rows(table, config)
    if len(rows) < 3:
        return {"n_programs": int(len(rows)), "selection": how, "note": "fewer than 3 templates"}
    dc = metrics.upper_triangle(metrics.cosine_distances(table.code[rows]))
    da = metrics.upper_triangle(metrics.cosine_distances(table.audio[rows]))
    return {
        "n_programs": int(len(rows)),
        "n_pairs": int(len(dc)),
        "selection": how,
        "templates": table.meta["template"].iloc[rows].tolist(),
        **correlation_with_p(dc, da),
    }


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True).clip(1e-12)
    return (a * b).sum(-1)


def family_similarities(table: EmbeddingTable, code_map: Mapper | None = None, audio_map: Mapper | None = None) -> pd.DataFrame:
    """One row per family variant: cosine similarity to its group's base, code and audio.

    The base is the group member whose id ends the group_id (``<template>:<param>:<base
    id>``), else the group's first row. Columns: family, group_id, id, code_sim,
    audio_sim, and aligned_code_sim / aligned_audio_sim when maps are given.
    """
    meta = table.meta
    fam = meta[meta["family"].notna() & meta["group_id"].notna()]
    records = []
    for gid, group in fam.groupby("group_id", sort=False):
        base_id = str(gid).rsplit(":", 1)[-1]
        hit = group.index[group["id"] == base_id]
        base = int(hit[0]) if len(hit) else int(group.index[0])
        others = [int(i) for i in group.index if i != base]
        if not others:
            continue
        rec = pd.DataFrame(
            {
                "family": group.loc[others, "family"].to_numpy(),
                "group_id": gid,
                "id": group.loc[others, "id"].to_numpy(),
                "code_sim": _cos(table.code[others], table.code[base]),
                "audio_sim": _cos(table.audio[others], table.audio[base]),
            }
        )
        if code_map is not None and audio_map is not None:
            zc = code_map(table.code[[base] + others])
            za = audio_map(table.audio[[base] + others])
            rec["aligned_code_sim"] = _cos(zc[1:], zc[0])
            rec["aligned_audio_sim"] = _cos(za[1:], za[0])
        records.append(rec)
    return pd.concat(records, ignore_index=True) if records else pd.DataFrame()


def summarise_families(sims: pd.DataFrame) -> pd.DataFrame:
    """Per family: groups, variants, code/audio similarity (mean, min) and the share of
    variants with code sim > 0.990 and audio sim < 0.975 (the study's finding)."""
    if sims.empty:
        return pd.DataFrame()
    rows = []
    for family, g in sims.groupby("family", sort=True):
        row = {
            "family": family,
            "groups": g["group_id"].nunique(),
            "variants": len(g),
            "code_sim_mean": g["code_sim"].mean(),
            "code_sim_min": g["code_sim"].min(),
            "audio_sim_mean": g["audio_sim"].mean(),
            "audio_sim_min": g["audio_sim"].min(),
            "share_code_high": (g["code_sim"] > CODE_SIM_HIGH).mean(),
            "share_audio_low": (g["audio_sim"] < AUDIO_SIM_LOW).mean(),
            "share_both": ((g["code_sim"] > CODE_SIM_HIGH) & (g["audio_sim"] < AUDIO_SIM_LOW)).mean(),
        }
        if "aligned_code_sim" in g:
            row["aligned_code_vs_audio_sim_pearson"] = metrics.pearson(g["aligned_code_sim"], g["audio_sim"])
            row["raw_code_vs_audio_sim_pearson"] = metrics.pearson(g["code_sim"], g["audio_sim"])
        rows.append(row)
    return pd.DataFrame(rows)


def selection_agreement(code_space: np.ndarray, audio_space: np.ndarray, size: int = GOLD_SIZE) -> dict:
    """Compare the ``size`` most mutually distant candidates chosen in each space, and
    the two spaces' upper-triangle cosine-distance vectors."""
    dc, da = metrics.cosine_distances(code_space), metrics.cosine_distances(audio_space)
    gold = metrics.most_distant_subset(da, size)
    pick = metrics.most_distant_subset(dc, size)
    uc, ua = metrics.upper_triangle(dc), metrics.upper_triangle(da)
    return {
        "gold": list(gold),
        "picked": list(pick),
        "jaccard": metrics.jaccard(gold, pick),
        "overlap": metrics.overlap_at_k(gold, pick, size),
        "spearman": metrics.spearman(uc, ua),
        "pearson": metrics.pearson(uc, ua),
    }


def scenario_agreement(table: EmbeddingTable, code_map: Mapper | None = None) -> pd.DataFrame:
    """Per scenario group and method ("raw", and "aligned" when ``code_map`` is given):
    Jaccard and overlap@3 between the gold triple (3 most mutually distant candidates in
    raw audio space) and the triple chosen from code, plus Spearman and Pearson between
    the code and audio upper-triangle distance vectors."""
    meta = table.meta
    scen = meta[meta["scenario"].notna() & meta["group_id"].notna()]
    records = []
    for gid, group in scen.groupby("group_id", sort=False):
        idx = group.index.to_numpy()
        if len(idx) < GOLD_SIZE + 1:
            logger.info("scenario group %s has %d candidates; skipped (need > %d)", gid, len(idx), GOLD_SIZE)
            continue
        spaces = {"raw": table.code[idx]}
        if code_map is not None:
            spaces["aligned"] = code_map(table.code[idx])
        for method, codes in spaces.items():
            res = selection_agreement(codes, table.audio[idx])
            records.append(
                {"scenario": group["scenario"].iloc[0], "group_id": gid, "method": method, "candidates": len(idx), **res}
            )
    return pd.DataFrame(records)


def summarise_scenarios(per_group: pd.DataFrame) -> pd.DataFrame:
    """Mean over groups per scenario and method (nan correlations, e.g. from identical
    code, are left out of the mean and counted)."""
    if per_group.empty:
        return pd.DataFrame()
    rows = []
    for (scenario, method), g in per_group.groupby(["scenario", "method"], sort=False):
        rows.append(
            {
                "scenario": scenario,
                "method": method,
                "groups": len(g),
                "jaccard": g["jaccard"].mean(),
                "overlap": g["overlap"].mean(),
                "spearman": g["spearman"].mean(),
                "pearson": g["pearson"].mean(),
                "nan_correlations": int(g["spearman"].isna().sum()),
            }
        )
    order = {"melody": 0, "drum": 1, "bass": 2, "raw": 0, "aligned": 1}
    df = pd.DataFrame(rows)
    return df.sort_values(by=["scenario", "method"], key=lambda s: s.map(order).fillna(9)).reset_index(drop=True)
