"""`align report`: the study's analyses end to end, as one Markdown file with figures,
next to the study's published numbers (Kouteili et al., arXiv 2508.05473)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from align import __version__, analysis
from align.data import read_embeddings, select_splits
from align.evaluate import evaluate_pairs

logger = logging.getLogger(__name__)

# Published numbers (docs/align.md; shared PAPER.md).
PAPER_RAW = {"pearson": 0.0159, "pearson_p": 0.677, "spearman": 0.0409, "spearman_p": 0.445, "n_pairs": 351}
PAPER_ALIGNMENT = {"before": {"cka": 0.090, "cca": 0.140}, "after": {"cka": 0.590, "cca": 0.902}}
PAPER_SCENARIOS = {  # (scenario, method) -> (Jaccard, overlap@3, Spearman, Pearson); None = "-"
    ("melody", "raw"): (0.20, 0.33, 0.21, 0.18),
    ("melody", "aligned"): (0.34, 0.47, 0.16, 0.07),
    ("drum", "raw"): (0.00, 0.00, None, -0.25),
    ("drum", "aligned"): (0.16, 0.27, -0.05, -0.12),
    ("bass", "raw"): (0.20, 0.33, 0.24, 0.21),
    ("bass", "aligned"): (0.50, 0.67, 0.44, 0.46),
}
METRIC_LABELS = {
    "cka": "linear CKA (biased)",
    "cka_debiased": "linear CKA (debiased)",
    "cca": "CCA, mean canonical corr. (SVCCA, 32 PCs)",
    "knn10_jaccard": "10-NN Jaccard",
    "knn10_overlap": "10-NN overlap@10",
    "dist_pearson": "distance Pearson (RSA)",
    "dist_spearman": "distance Spearman (RSA)",
}
REPORT_FILE = "report.md"


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _ci(d: dict | float | None) -> str:
    """A value with its interval ({"value", "low", "high"}), or a bare value (no bootstrap)."""
    if d is None:
        return "-"
    if not isinstance(d, dict):
        return _f(d)
    return f"{_f(d['value'])} [{_f(d['low'])}, {_f(d['high'])}]"


def _table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _resolve_checkpoint(checkpoint: str | Path | None, sweep: str | Path | None) -> Path | None:
    if checkpoint:
        return Path(checkpoint)
    if sweep and (Path(sweep) / "best" / "checkpoint.pt").exists():
        return Path(sweep) / "best" / "checkpoint.pt"
    return None


def section_raw_correlation(res: dict) -> str:
    out = ["## Raw-space correlation over the base programs\n"]
    if res.get("n_programs", 0) < 3:
        return out[0] + f"\nNot enough base programs ({res.get('n_programs', 0)}; need 3 templates).\n"
    out.append(
        f"One program per template ({res['n_programs']} programs: {res['selection']}), "
        f"{res['n_pairs']} pairs; correlation between code-code and audio-audio pairwise cosine distances.\n"
    )
    out.append(
        _table(
            ["", "Pearson", "p", "Spearman", "p", "pairs"],
            [
                ["this data", _f(res["pearson"], 4), _f(res["pearson_p"]), _f(res["spearman"], 4), _f(res["spearman_p"]), res["n_pairs"]],
                ["study", PAPER_RAW["pearson"], PAPER_RAW["pearson_p"], PAPER_RAW["spearman"], PAPER_RAW["spearman_p"], PAPER_RAW["n_pairs"]],
            ],
        )
    )
    return "\n".join(out)


def section_families(summary) -> str:
    head = "## Perturbation families\n\n"
    if summary.empty:
        return head + "No perturbation families in these embeddings (no rows with `family` set).\n"
    rows = []
    for r in summary.to_dict("records"):
        rows.append(
            [r["family"], r["groups"], r["variants"], _f(r["code_sim_mean"], 4), _f(r["code_sim_min"], 4),
             _f(r["audio_sim_mean"], 4), _f(r["audio_sim_min"], 4), _f(r["share_code_high"], 2),
             _f(r["share_audio_low"], 2), _f(r["share_both"], 2),
             _f(r.get("raw_code_vs_audio_sim_pearson")), _f(r.get("aligned_code_vs_audio_sim_pearson"))]
        )
    return head + (
        "Cosine similarity of each variant to its group's base program. Study: one parameter "
        f"changed keeps code similarity > {analysis.CODE_SIM_HIGH} while audio similarity falls "
        f"below {analysis.AUDIO_SIM_LOW}, with no consistent pattern per parameter. The last two "
        "columns: how well the variants' code similarity (raw, aligned) tracks their audio similarity (Pearson).\n\n"
    ) + _table(
        ["family", "groups", "variants", "code sim mean", "code sim min", "audio sim mean", "audio sim min",
         f"share code > {analysis.CODE_SIM_HIGH}", f"share audio < {analysis.AUDIO_SIM_LOW}", "share both",
         "r(code, audio) raw", "r(code, audio) aligned"],
        rows,
    )


def section_alignment(raw: dict, aligned: dict | None, sizes: dict, n_boot: int) -> str:
    out = ["## Representation similarity on the held-out test split\n"]
    out.append(
        f"Test split: {sizes['test']} pairs (train {sizes['train']}, validation {sizes['validation']}). "
        + (f"Values with {n_boot}-resample bootstrap 95% intervals (centred percentile). " if n_boot else "")
        + "The study reported on its validation split and did not publish its CCA settings.\n"
    )
    rows = []
    for key, label in METRIC_LABELS.items():
        paper_b = PAPER_ALIGNMENT["before"].get(key)
        paper_a = PAPER_ALIGNMENT["after"].get(key)
        rows.append([label, _ci(raw.get(key)), _ci(aligned.get(key)) if aligned else "no checkpoint", _f(paper_b), _f(paper_a)])
    out.append(_table(["metric", "raw (before)", "aligned (after)", "study before", "study after (best)"], rows))
    return "\n".join(out)


def section_scenarios(summary) -> str:
    head = "## Code-completion scenarios\n\n"
    if summary.empty:
        return head + "No code-completion scenarios in these embeddings (no rows with `scenario` set).\n"
    rows = []
    for r in summary.to_dict("records"):
        paper = PAPER_SCENARIOS.get((r["scenario"], r["method"]))
        rows.append(
            [r["scenario"], r["method"], r["groups"], _f(r["jaccard"], 2), _f(r["overlap"], 2), _f(r["spearman"], 2), _f(r["pearson"], 2)]
            + ([_f(v, 2) for v in paper] if paper else ["-"] * 4)
        )
    return head + (
        "Gold = the 3 most mutually distant candidates in raw audio space (largest sum of pairwise "
        "cosine distances, exhaustive); the same selection from code embeddings (raw or aligned). "
        "Spearman/Pearson between the code and audio upper-triangle distance vectors; means over groups.\n\n"
    ) + _table(
        ["scenario", "method", "groups", "Jaccard", "overlap@3", "Spearman", "Pearson",
         "study Jaccard", "study overlap@3", "study Spearman", "study Pearson"],
        rows,
    )


def section_sweep(sweep: str | Path | None) -> str:
    head = "## Hyper-parameter sweep\n\n"
    if not sweep:
        return head + "No sweep folder given (`--sweep DIR` from `align sweep`).\n"
    md = Path(sweep) / "results.md"
    if not md.exists():
        return head + f"No results.md in {sweep}; run `align sweep` to completion first.\n"
    text = md.read_text()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text  # drop its own title
    return head + f"From `{sweep}`. The study: best of 24 configurations x 5 runs, CKA 0.590, CCA 0.902.\n" + body


def build_report(
    embeddings: str | Path,
    out: str | Path,
    checkpoint: str | Path | None = None,
    sweep: str | Path | None = None,
    config: str = "default",
    n_boot: int = 100,
    projection: str = "pca",
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """Run every analysis on one embeddings folder and write ``out/report.md``.

    Args:
        embeddings: embeddings folder (``embeddings/<code>__<audio>/``).
        out: report folder: report.md, report.json (every number), figures/*.png.
        checkpoint: aligner checkpoint (run folder or checkpoint.pt); when None and the
            sweep folder has best/checkpoint.pt, that one; else raw-only sections.
        sweep: sweep folder for the hyper-parameter table.
        config: dataset configuration whose splits are scored (default "default").
        n_boot: bootstrap resamples for the test-split intervals (default 100).
        projection: "pca" (default) or "umap" (needs umap-learn) for the figures.
        max_points: test rows scored and drawn at most (seeded subsample; the metrics
            build n x n matrices).
        seed: seed of the bootstrap and subsample.
    Returns:
        Path of report.md.
    """
    out = Path(out)
    table = read_embeddings(embeddings)
    ckpt_path = _resolve_checkpoint(checkpoint, sweep)
    model = ckpt = None
    if ckpt_path is not None:
        from align.train import load_checkpoint  # torch only when a checkpoint is used

        model, ckpt = load_checkpoint(ckpt_path)
        if (ckpt["code_dim"], ckpt["audio_dim"]) != (table.code.shape[1], table.audio.shape[1]):
            raise ValueError(
                f"checkpoint {ckpt_path} expects code/audio dims {ckpt['code_dim']}/{ckpt['audio_dim']}, "
                f"embeddings have {table.code.shape[1]}/{table.audio.shape[1]}: use the embeddings it was trained on"
            )
    code_map = audio_map = None
    if model is not None:
        from align.train import embed_audio, embed_code

        code_map = lambda x: embed_code(model, x)  # noqa: E731
        audio_map = lambda x: embed_audio(model, x)  # noqa: E731

    numbers: dict = {"embeddings": table.source.get("path"), "checkpoint": str(ckpt_path) if ckpt_path else None}
    raw_corr = analysis.base_program_correlation(table, config)
    fam = analysis.summarise_families(analysis.family_similarities(table, code_map, audio_map))
    scen = analysis.summarise_scenarios(analysis.scenario_agreement(table, code_map))
    numbers.update(raw_correlation=raw_corr, families=fam.to_dict("records"), scenarios=scen.to_dict("records"))

    sections = [section_raw_correlation(raw_corr), section_families(fam)]
    figures: list[Path] = []
    try:
        splits = select_splits(table, config)
    except ValueError as err:
        splits = None
        sections.append(f"## Representation similarity on the held-out test split\n\nNo test metrics: {err}\n")
    if splits is not None:
        tc, ta = splits.test
        labels = splits.test_meta["template"].fillna("?").astype(str).tolist()
        if len(tc) > max_points:
            idx = np.sort(np.random.default_rng(seed).choice(len(tc), max_points, replace=False))
            tc, ta, labels = tc[idx], ta[idx], [labels[i] for i in idx]
        logger.info("scoring %d test pairs with %d bootstrap resamples", len(tc), n_boot)
        raw = evaluate_pairs(tc, ta, n_boot=n_boot, seed=seed)
        aligned = zc = za = None
        if model is not None:
            from align.train import embed_pairs

            zc, za = embed_pairs(model, tc, ta)
            aligned = evaluate_pairs(zc, za, n_boot=n_boot, seed=seed)
        numbers.update(test_raw=raw, test_aligned=aligned, split_sizes=splits.sizes())
        sections.append(section_alignment(raw, aligned, splits.sizes(), n_boot))
        from align.plots import plot_modalities  # matplotlib only when drawing

        figures = plot_modalities(out / "figures", tc, ta, labels, zc, za, projection)
    sections.append(section_scenarios(scen))
    sections.append(section_sweep(sweep))
    if figures:
        sections.append("## Pictures\n\n" + "\n".join(f"![{p.stem}](figures/{p.name})" for p in figures) + "\n")
    header = (
        "# Code-audio alignment report\n\n"
        f"- embeddings: `{table.source.get('path')}` ({len(table)} rows; code model "
        f"`{table.code_model}`, audio model `{table.audio_model}`)\n"
        f"- aligner: {f'`{ckpt_path}` ' + json.dumps(ckpt['config'], sort_keys=True) if ckpt else 'none (raw spaces only)'}\n"
        f"- align {__version__}; study: Kouteili et al., arXiv 2508.05473\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    text = header + "\n" + "\n".join(sections)
    for name, content in ((REPORT_FILE, text), ("report.json", json.dumps(numbers, indent=2, default=_json_default) + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        os.replace(tmp, out / name)
    logger.info("wrote %s", out / REPORT_FILE)
    return out / REPORT_FILE


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
