"""The study's analyses on an embeddings table: base-program correlation, perturbation
families and code-completion scenarios. Each takes an EmbeddingTable and, where it
applies, an optional function mapping raw code embeddings into the aligned space."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pandas as pd

from align import chance, metrics
from align.data import EmbeddingTable, base_rows

logger = logging.getLogger(__name__)

# The study's fixed thresholds for the perturbation finding (code similarity above
# CODE_SIM_HIGH, audio below AUDIO_SIM_LOW). They suit wav2vec2's similarity scale only
# (log-mel scores an exact tempo change 0.995), so they are reported for comparison and
# the finding is judged on each encoder's own scale (REFERENCE_QUANTILE).
CODE_SIM_HIGH = 0.990
AUDIO_SIM_LOW = 0.975
# An encoder's own scale: cosine similarities between distinct programs of one template.
# A variant "keeps its code" when it is closer to its base than all but this share of
# those pairs, and "changes its audio" when it is farther than this share of them.
REFERENCE_QUANTILE = 0.05
GOLD_SIZE = 3  # "the 3 most mutually distant candidates"
MANTEL_PERMUTATIONS = 9999  # p-values to 1e-4; 351 pairs take about a second
SCENARIO_PERMUTATIONS = 2000

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


def base_program_correlation(
    table: EmbeddingTable, config: str = "default", n_perm: int = MANTEL_PERMUTATIONS, seed: int = 0
) -> dict:
    """Correlation between code-code and audio-audio pairwise cosine distances over one
    base program per template (27 programs -> 351 pairs in the study).

    ``pearson_p`` / ``spearman_p`` are the textbook p-values (as the study's), which
    treat the 351 pairs as independent; ``mantel`` holds the Mantel permutation test
    (points relabelled), the p-values to read.
    """
    rows, how = base_program_rows(table, config)
    if len(rows) < 3:
        return {"n_programs": int(len(rows)), "selection": how, "note": "fewer than 3 templates"}
    Dc = metrics.cosine_distances(table.code[rows])
    Da = metrics.cosine_distances(table.audio[rows])
    dc, da = metrics.upper_triangle(Dc), metrics.upper_triangle(Da)
    mantel = chance.mantel_test(Dc, Da, n_perm=n_perm, seed=seed)
    return {
        "n_programs": int(len(rows)),
        "n_pairs": int(len(dc)),
        "selection": how,
        "templates": table.meta["template"].iloc[rows].tolist(),
        **correlation_with_p(dc, da),
        "mantel_p": {"pearson": mantel["pearson_p"], "spearman": mantel["spearman_p"]},
        "mantel_permutations": mantel["n_perm"],
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


def template_reference(table: EmbeddingTable, config: str | None = "default") -> dict[str, dict[str, np.ndarray]]:
    """Each encoder's own similarity scale: per template, the cosine similarities of all
    pairs of distinct base programs of that template, {"code": {template: sims},
    "audio": {...}}. Templates with one program are absent."""
    mask = base_rows(table, config)
    meta = table.meta[mask]
    out: dict[str, dict[str, np.ndarray]] = {"code": {}, "audio": {}}
    for template, group in meta.groupby("template", sort=False):
        idx = group.index.to_numpy()
        if len(idx) < 2:
            continue
        for side, X in (("code", table.code), ("audio", table.audio)):
            S = 1.0 - metrics.cosine_distances(X[idx])
            out[side][template] = metrics.upper_triangle(S)
    return out


def add_reference_quantiles(sims: pd.DataFrame, reference: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Add ``code_q`` / ``audio_q``: the share of distinct same-template program pairs
    at least as similar as the variant is to its base (0: closer than any two distinct
    programs of its template; 1: farther than all), nan where the template has no
    reference. The template is the group_id's first field (<template>:<param>:<base>)."""
    if sims.empty:
        return sims
    sims = sims.copy()
    templates = sims["group_id"].astype(str).str.split(":").str[0]
    for side in ("code", "audio"):
        q = np.full(len(sims), np.nan)
        for i, (t, v) in enumerate(zip(templates, sims[f"{side}_sim"])):
            ref = reference.get(side, {}).get(t)
            if ref is not None and len(ref):
                q[i] = float(np.mean(ref >= v))
        sims[f"{side}_q"] = q
    return sims


def summarise_families(sims: pd.DataFrame) -> pd.DataFrame:
    """Per family: groups, variants, code/audio similarity (mean, min); the shares under
    the study's fixed thresholds (code sim > 0.990, audio sim < 0.975); and, when
    ``code_q`` / ``audio_q`` are there (add_reference_quantiles), the same finding on
    each encoder's own scale: code kept = closer to its base than all but 5% of distinct
    same-template pairs (code_q < 0.05), audio changed = farther from its base than 5%
    of them (audio_q > 0.05)."""
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
        if "code_q" in g and g["code_q"].notna().any():
            kept = g["code_q"] < REFERENCE_QUANTILE
            changed = g["audio_q"] > REFERENCE_QUANTILE
            row.update(
                code_q_median=g["code_q"].median(),
                audio_q_median=g["audio_q"].median(),
                share_code_kept=kept.mean(),
                share_audio_changed=changed.mean(),
                share_kept_and_changed=(kept & changed).mean(),
            )
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
        "_dc": dc,  # kept for the chance levels (summarise_scenarios); not written out
        "_da": da,
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


def scenario_null(
    per_group: pd.DataFrame, n_perm: int = SCENARIO_PERMUTATIONS, seed: int = 0
) -> dict[str, np.ndarray]:
    """Null distribution of the means over ``per_group``'s groups, candidates shuffled.

    Shuffling which audio goes with which code makes the code-chosen triple a uniformly
    random one (its Jaccard and overlap with the gold triple are hypergeometric) and
    relabels the audio distance matrix (a Mantel null for the correlations). Needs the
    ``_dc`` / ``_da`` distance matrices that scenario_agreement keeps per group.
    Returns {"jaccard", "overlap", "spearman", "pearson"}: arrays of n_perm means.
    """
    rng = np.random.default_rng(seed)
    sums = {k: np.zeros(n_perm) for k in ("jaccard", "overlap", "spearman", "pearson")}
    counts = {k: np.zeros(n_perm) for k in sums}
    for dc, da, gold in zip(per_group["_dc"], per_group["_da"], per_group["gold"]):
        n, iu = dc.shape[0], np.triu_indices(dc.shape[0], k=1)
        uc, rc = dc[iu], metrics.rank_data(dc[iu])
        for t in range(n_perm):
            p = rng.permutation(n)
            pick = p[: len(gold)]  # a uniformly random triple, as a shuffled pick is
            vals = {
                "jaccard": metrics.jaccard(gold, pick),
                "overlap": metrics.overlap_at_k(gold, pick, len(gold)),
                "pearson": metrics.pearson(uc, da[np.ix_(p, p)][iu]),
                "spearman": metrics.pearson(rc, metrics.rank_data(da[np.ix_(p, p)][iu])),
            }
            for k, v in vals.items():
                if np.isfinite(v):
                    sums[k][t] += v
                    counts[k][t] += 1
    return {k: sums[k] / np.maximum(counts[k], 1) for k in sums}


def summarise_scenarios(per_group: pd.DataFrame, n_perm: int = SCENARIO_PERMUTATIONS, seed: int = 0) -> pd.DataFrame:
    """Mean over groups per scenario and method, each beside its chance level.

    nan correlations (e.g. from identical code) are left out of the mean and counted.
    For each of Jaccard, overlap@3, Spearman and Pearson: ``<name>_chance`` (mean of
    the shuffled-candidates null; for Jaccard and overlap it equals the exact random-pick
    value, 0.20 and 0.30 for 3 of 10) and ``<name>_p`` (one-sided permutation p-value of
    the mean over groups). Without the ``_dc`` column (older callers) no chance columns.
    """
    if per_group.empty:
        return pd.DataFrame()
    rows = []
    for (scenario, method), g in per_group.groupby(["scenario", "method"], sort=False):
        row = {
            "scenario": scenario,
            "method": method,
            "groups": len(g),
            "candidates": int(g["candidates"].median()) if "candidates" in g else None,
            "jaccard": g["jaccard"].mean(),
            "overlap": g["overlap"].mean(),
            "spearman": g["spearman"].mean(),
            "pearson": g["pearson"].mean(),
            "nan_correlations": int(g["spearman"].isna().sum()),
        }
        if "_dc" in g and n_perm:
            null = scenario_null(g, n_perm, seed)
            for k in ("jaccard", "overlap", "spearman", "pearson"):
                s = chance.summarise_null(row[k], null[k])
                row[f"{k}_chance"], row[f"{k}_p"] = s["null_mean"], s["p_value"]
        rows.append(row)
    order = {"melody": 0, "drum": 1, "bass": 2, "raw": 0, "aligned": 1}
    df = pd.DataFrame(rows)
    return df.sort_values(by=["scenario", "method"], key=lambda s: s.map(order).fillna(9)).reset_index(drop=True)
