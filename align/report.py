"""`align report`: the study's analyses end to end, as one Markdown file with figures,
next to the study's published numbers (Kouteili et al., arXiv 2508.05473)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from align import __version__, analysis, chance
from align.data import read_embeddings, select_splits
from align.evaluate import evaluate_pairs
from sonicpi_gen.folders import write_atomically

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
        f"{res['n_pairs']} pairs; correlation between code-code and audio-audio pairwise cosine distances. "
        f"The pairs share their programs, so they are not independent: read the Mantel p-values "
        f"({res.get('mantel_permutations', 0)} relabellings of the programs, two-sided). The textbook "
        f"p-values (as the study's) treat the {res['n_pairs']} pairs as independent and are too small.\n"
    )
    mp = res.get("mantel_p") or {}
    out.append(
        _table(
            ["", "Pearson", "Mantel p", "textbook p", "Spearman", "Mantel p", "textbook p", "pairs"],
            [
                ["this data", _f(res["pearson"], 4), _f(mp.get("pearson")), _f(res["pearson_p"]), _f(res["spearman"], 4),
                 _f(mp.get("spearman")), _f(res["spearman_p"]), res["n_pairs"]],
                ["study", PAPER_RAW["pearson"], "-", PAPER_RAW["pearson_p"], PAPER_RAW["spearman"], "-",
                 PAPER_RAW["spearman_p"], PAPER_RAW["n_pairs"]],
            ],
        )
    )
    return "\n".join(out)


def section_families(summary) -> str:
    head = "## Perturbation families\n\n"
    if summary.empty:
        return head + "No perturbation families in these embeddings (no rows with `family` set).\n"
    q = analysis.REFERENCE_QUANTILE
    rows, rel_rows = [], []
    for r in summary.to_dict("records"):
        rows.append(
            [r["family"], r["groups"], r["variants"], _f(r["code_sim_mean"], 4), _f(r["code_sim_min"], 4),
             _f(r["audio_sim_mean"], 4), _f(r["audio_sim_min"], 4), _f(r["share_code_high"], 2),
             _f(r["share_audio_low"], 2), _f(r["share_both"], 2),
             _f(r.get("raw_code_vs_audio_sim_pearson")), _f(r.get("aligned_code_vs_audio_sim_pearson"))]
        )
        rel_rows.append(
            [r["family"], _f(r.get("code_q_median"), 3), _f(r.get("audio_q_median"), 3), _f(r.get("share_code_kept"), 2),
             _f(r.get("share_audio_changed"), 2), _f(r.get("share_kept_and_changed"), 2)]
        )
    return head + (
        "Cosine similarity of each variant to its group's base program. Study: one parameter "
        f"changed keeps code similarity > {analysis.CODE_SIM_HIGH} while audio similarity falls "
        f"below {analysis.AUDIO_SIM_LOW}, with no consistent pattern per parameter. Those fixed thresholds "
        "suit the study's encoders only (a log-mel descriptor scores an exact tempo change 0.995), so they "
        "are shown for comparison; the second table judges the effects on each encoder's own scale. "
        "The last two columns here: how well the variants' code similarity (raw, aligned) tracks their "
        "audio similarity (Pearson).\n\n"
    ) + _table(
        ["family", "groups", "variants", "code sim mean", "code sim min", "audio sim mean", "audio sim min",
         f"share code > {analysis.CODE_SIM_HIGH}", f"share audio < {analysis.AUDIO_SIM_LOW}", "share both",
         "r(code, audio) raw", "r(code, audio) aligned"],
        rows,
    ) + (
        "\nOn each encoder's own scale. Reference: the cosine similarities between distinct programs of "
        "the variant's template (all pairs of its base programs). q = the share of those pairs at least "
        "as similar as the variant is to its base (0: closer than any two distinct programs; 1: farther "
        f"than all). Code kept: q_code < {q}; audio changed: q_audio > {q} (as different as the closest "
        f"{q:.0%} of distinct programs or more). The study's finding is a large share of both.\n\n"
    ) + _table(
        ["family", "median q code", "median q audio", f"share code kept (q<{q})", f"share audio changed (q>{q})",
         "share both"],
        rel_rows,
    )


def _null(d: dict | None) -> str:
    if not d or d.get("null_mean") is None:
        return "-"
    return f"{_f(d['null_mean'])} / {_f(d['null_p95'])}"


def _p(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _metric_label(key: str, n: int | None) -> str:
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    direction, what = key.split("_", 1)
    name = {"c2a": "code->audio", "a2c": "audio->code"}.get(direction, direction)
    what = "MRR" if what == "mrr" else f"recall@{what[1:]}"
    return f"{name} {what} (pool {n})" if n else f"{name} {what}"


def metrics_table(res: dict, n: int | None, study: dict | None = None, template_null: bool = True) -> str:
    """One row per metric: value [interval], shuffled-pairs null (mean / 95th pct), p,
    and (template_null) the within-template-shuffle level with its p."""
    head = ["metric", "value [95% CI]", "chance: shuffled pairs, mean / p95", "p"]
    if template_null:
        head += ["template identity alone, mean / p95", "p vs template"]
    if study is not None:
        head += ["study"]
    rows = []
    for key, d in res.items():
        row = [_metric_label(key, n), _ci(d), _null(d), _p(d.get("p_value"))]
        if template_null:
            row += [_null({"null_mean": d.get("template_null_mean"), "null_p95": d.get("template_null_p95")}),
                    _p(d.get("template_p_value"))]
        if study is not None:
            row += [_f(study.get(key))]
        rows.append(row)
    return _table(head, rows)


def section_alignment(raw: dict, aligned: dict | None, sizes: dict, n_boot: int, n_perm: int, n_scored: int,
                      templates: int, aligner_line: str) -> str:
    out = ["## Representation similarity on the held-out test split\n"]
    out.append(
        f"Test split: {sizes['test']} pairs (train {sizes['train']}, validation {sizes['validation']}); "
        f"{n_scored} scored, from {templates} templates. "
        + (f"Intervals: {n_boot}-resample bootstrap over templates (rows of one template are not independent), "
           "centred percentile. " if n_boot else "No intervals (--n-boot 0). ")
        + f"Chance: {n_perm} shuffles of the pairs; p = share of shuffles scoring at least the value (one-sided). "
        "'Template identity alone' shuffles pairs only within templates: what an encoder that tells the "
        "templates apart and nothing else would score. The study reported on its validation split and did "
        "not publish its CCA settings. Retrieval needs one shared space: it is scored where both sides "
        "have one dimension (always in the aligned space), over a pool of all scored rows.\n"
    )
    out.append("### Raw encoder spaces (before)\n")
    out.append(metrics_table(raw, n_scored, PAPER_ALIGNMENT["before"]))
    out.append(f"### Aligned space (after): {aligner_line}\n")
    out.append(metrics_table(aligned, n_scored, PAPER_ALIGNMENT["after"]) if aligned else "There is no aligned space: no checkpoint given.\n")
    return "\n".join(out)


def section_within(raw: dict | None, aligned: dict | None, note: str | None) -> str:
    head = "## Within templates\n\n"
    if note:
        return head + note + "\n"
    text = (
        "Every metric again after subtracting each template's mean row in both spaces (test rows; "
        "templates with one test row left out). Template identity, which dominates the numbers above, "
        "is gone; what is left is whether the programs of one template differ in code as they differ "
        "in sound. Chance: pairs shuffled within templates.\n\n### Raw encoder spaces\n\n"
    ) + metrics_table(raw, None, template_null=False)
    text = head + text
    if aligned:
        text += "\n### Aligned space\n\n" + metrics_table(aligned, None, template_null=False)
    return text


SCENARIO_FIELDS = (("jaccard", "Jaccard"), ("overlap", "overlap@3"), ("spearman", "Spearman"), ("pearson", "Pearson"))


def section_scenarios(summary, per_group=None) -> str:
    head = "## Code-completion scenarios\n\n"
    if summary.empty:
        return head + "No code-completion scenarios in these embeddings (no rows with `scenario` set).\n"
    rows = []
    for r in summary.to_dict("records"):
        paper = PAPER_SCENARIOS.get((r["scenario"], r["method"]))
        cells = [r["scenario"], r["method"], r["groups"]]
        for key, _ in SCENARIO_FIELDS:
            cells.append(f"{_f(r[key], 2)} (chance {_f(r.get(f'{key}_chance'), 2)}, p {_p(r.get(f'{key}_p'))})")
        rows.append(cells + ([_f(v, 2) for v in paper] if paper else ["-"] * 4))
    n = summary["candidates"].dropna().iloc[0] if "candidates" in summary and summary["candidates"].notna().any() else None
    exact = chance.selection_chance(int(n), analysis.GOLD_SIZE) if n else None
    text = head + (
        "Gold = the 3 most mutually distant candidates in raw audio space (largest sum of pairwise "
        "cosine distances, exhaustive); the same selection from code embeddings (raw or aligned). "
        "Spearman/Pearson between the code and audio upper-triangle distance vectors; means over groups. "
        + (f"Chance line: a random pick of 3 of {n} gives Jaccard {exact['jaccard']:.2f} and overlap@3 "
           f"{exact['overlap']:.2f} on average, and correlations 0. " if exact else "")
        + "Each value is shown with the mean of its null (candidates shuffled within each group) and the "
        "one-sided permutation p-value of the mean over groups. The study printed no chance line; its "
        "Jaccard 0.20 / overlap 0.33 (raw) are what random picks give.\n\n"
    ) + _table(
        ["scenario", "method", "groups"] + [label for _, label in SCENARIO_FIELDS]
        + ["study Jaccard", "study overlap@3", "study Spearman", "study Pearson"],
        rows,
    )
    if per_group is not None and not per_group.empty:
        g_rows = [[r["scenario"], r["group_id"], r["method"], r["candidates"], _f(r["jaccard"], 2), _f(r["overlap"], 2),
                   _f(r["spearman"], 2), _f(r["pearson"], 2)] for r in per_group.to_dict("records")]
        text += "\n<details><summary>Every scenario group</summary>\n\n" + _table(
            ["scenario", "group", "method", "candidates", "Jaccard", "overlap@3", "Spearman", "Pearson"], g_rows
        ) + "\n</details>\n"
    return text


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


def verdict(raw: dict | None, aligned: dict | None, within_raw: dict | None, within_aligned: dict | None,
            alpha: float = chance.ALPHA) -> list[str]:
    """Sentences saying which numbers are indistinguishable from chance, and why."""
    lines = []
    for name, res, within in (("raw spaces", raw, False), ("aligned space", aligned, False),
                              ("raw spaces, within templates", within_raw, True),
                              ("aligned space, within templates", within_aligned, True)):
        if not res:
            continue
        at_chance = [k for k, d in res.items() if not (d.get("p_value") is not None and d["p_value"] < alpha)]
        template_only = [k for k, d in res.items() if k not in at_chance and not within
                         and not (d.get("template_p_value") is not None and d["template_p_value"] < alpha)]
        above = [k for k in res if k not in at_chance and k not in template_only]
        parts = []
        if at_chance:
            parts.append(f"indistinguishable from shuffled pairs (p >= {alpha}): {', '.join(at_chance)}")
        if template_only:
            parts.append("above shuffled pairs but not above what template identity alone gives "
                         f"(p vs template >= {alpha}): {', '.join(template_only)}")
        if above:
            parts.append(f"above chance{'' if within else ' and above template identity'}: {', '.join(above)}")
        lines.append(f"- {name}: " + "; ".join(parts) + ".")
    return lines


def _checkpoint_info(ckpt_path: Path | None, ckpt: dict | None, sweep) -> tuple[str, dict]:
    """A line naming the checkpoint scored (and, from a sweep, its configuration and seed)."""
    if ckpt is None:
        return "none (raw spaces only)", {}
    info = {"path": str(ckpt_path), "config": ckpt["config"], "best_epoch": ckpt.get("best_epoch"),
            "best_val_loss": ckpt.get("best_val_loss")}
    cfg_file = Path(ckpt_path).parent / "config.json" if Path(ckpt_path).is_file() else Path(ckpt_path) / "config.json"
    if cfg_file.exists():
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError:
            meta = {}
        for key in ("key", "seed", "selected_by"):
            if key in meta:
                info[f"sweep_{key}"] = meta[key]
    line = f"`{ckpt_path}`"
    if "sweep_key" in info:
        line += f" (sweep configuration {info['sweep_key']}, seed {info.get('sweep_seed')})"
    line += f", best epoch {info['best_epoch']}, validation loss {_f(info['best_val_loss'])}; " + json.dumps(ckpt["config"], sort_keys=True)
    return line, info


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
    n_perm: int = chance.DEFAULT_N_PERM,
) -> Path:
    """Run every analysis on one embeddings folder and write ``out/report.md``.

    Args:
        embeddings: embeddings folder (``embeddings/<code>__<audio>/``).
        out: report folder: report.md, report.json (every number), figures/*.png.
        checkpoint: aligner checkpoint (run folder or checkpoint.pt); when None and the
            sweep folder has best/checkpoint.pt, that one; else raw-only sections.
        sweep: sweep folder for the hyper-parameter table.
        config: dataset configuration whose splits are scored (default "default").
        n_boot: template-bootstrap resamples for the test-split intervals (default 100).
        projection: "pca" (default) or "umap" (needs umap-learn) for the figures; a
            figure that fails is named in the report, the rest is still written.
        max_points: test rows scored and drawn at most (seeded subsample; the metrics
            build n x n matrices).
        seed: seed of the bootstrap, shuffles and subsample.
        n_perm: shuffles per permutation null (default 200).
    Returns:
        Path of report.md.
    """
    from align import checks
    from align.evaluate import CCA_PCA_DIMS, DEFAULT_K, evaluate_with_chance, evaluate_within_template

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
    elif sweep:
        logger.warning("sweep %s has no best/checkpoint.pt; reporting the raw spaces only", sweep)
    code_map = audio_map = None
    if model is not None:
        from align.train import embed_audio, embed_code

        code_map = lambda x: embed_code(model, x)  # noqa: E731
        audio_map = lambda x: embed_audio(model, x)  # noqa: E731
    aligner_line, ckpt_info = _checkpoint_info(ckpt_path, ckpt, sweep)

    numbers: dict = {"embeddings": table.source.get("path"), "checkpoint": str(ckpt_path) if ckpt_path else None,
                     "checkpoint_info": ckpt_info, "n_perm": n_perm, "n_boot": n_boot}
    warnings: list[str] = []
    raw_corr = analysis.base_program_correlation(table, config, seed=seed)
    fam_sims = analysis.family_similarities(table, code_map, audio_map)
    fam_sims = analysis.add_reference_quantiles(fam_sims, analysis.template_reference(table, config))
    fam = analysis.summarise_families(fam_sims)
    scen_groups = analysis.scenario_agreement(table, code_map)
    scen = analysis.summarise_scenarios(scen_groups, seed=seed)
    scen_groups_out = scen_groups.drop(columns=[c for c in ("_dc", "_da") if c in scen_groups]) if not scen_groups.empty else scen_groups
    numbers.update(raw_correlation=raw_corr, families=fam.to_dict("records"), scenarios=scen.to_dict("records"),
                   scenarios_per_group=scen_groups_out.to_dict("records"))

    sections = [section_raw_correlation(raw_corr), section_families(fam)]
    figures: list[Path] = []
    figure_error = None
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
        groups = np.asarray(labels)
        logger.info("scoring %d test pairs: %d bootstrap resamples, %d shuffles", len(tc), n_boot, n_perm)
        raw = evaluate_with_chance(tc, ta, groups, n_boot=n_boot, n_perm=n_perm, seed=seed)
        aligned = zc = za = None
        if model is not None:
            from align.train import embed_pairs

            zc, za = embed_pairs(model, tc, ta)
            aligned = evaluate_with_chance(zc, za, groups, n_boot=n_boot, n_perm=n_perm, seed=seed)
        within_raw = within_aligned = within_note = None
        try:
            within_raw = evaluate_within_template(tc, ta, groups, n_boot=n_boot, n_perm=n_perm, seed=seed)
            if zc is not None:
                within_aligned = evaluate_within_template(zc, za, groups, n_boot=n_boot, n_perm=n_perm, seed=seed)
        except ValueError as err:
            within_note = f"Not computed: {err}."
        cca_dims = min(CCA_PCA_DIMS, tc.shape[1], ta.shape[1], len(tc) - 1)
        warnings += checks.check_rows(len(tc), cca_dims, DEFAULT_K)
        for name, X in (("raw code", tc), ("raw audio", ta), ("aligned code", zc), ("aligned audio", za)):
            if X is not None:
                msg = checks.check_collapse(X, name)
                if msg:
                    warnings.append(msg)
        if ckpt is not None and ckpt.get("best_val_loss") is not None:
            msg = checks.check_learned(ckpt["best_val_loss"], splits.sizes()["validation"], ckpt["config"]["batch_size"])
            if msg:
                warnings.append(msg)
        numbers.update(test_raw=raw, test_aligned=aligned, within_template_raw=within_raw,
                       within_template_aligned=within_aligned, split_sizes=splits.sizes(), test_scored=len(tc))
        sections.append(section_alignment(raw, aligned, splits.sizes(), n_boot, n_perm, len(tc),
                                          len(set(labels)), aligner_line))
        sections.append(section_within(within_raw, within_aligned, within_note))
        numbers["verdict"] = verdict(raw, aligned, within_raw, within_aligned)
        try:
            from align.plots import plot_modalities  # matplotlib only when drawing

            figures, errors = plot_modalities(out / "figures", tc, ta, labels, zc, za, projection)
            figure_error = "; ".join(errors) or None
        except Exception as err:  # noqa: BLE001 - a figure never costs the analyses
            figure_error = f"{type(err).__name__}: {err}"
            logger.warning("figures not drawn: %s", figure_error)
    sections.append(section_scenarios(scen, scen_groups_out))
    sections.append(section_sweep(sweep))
    if figures or figure_error:
        sections.append("## Pictures\n\n" + "\n".join(f"![{p.stem}](figures/{p.name})" for p in figures) + "\n"
                        + (f"\nFigures failed: {figure_error}. The numbers above are complete; "
                           "try `--projection pca`.\n" if figure_error else ""))
    numbers["warnings"] = warnings
    for w in warnings:
        logger.warning("%s", w)
    summary = ["## What chance gives, in words\n",
               "A number is indistinguishable from chance when 5% or more of the shuffled pairings score at "
               "least as high (p >= 0.05). Why it can be: the metric's own bias at this size (biased CKA and "
               "CCA are high for unrelated rows when rows are few next to the dimensions; see their null "
               "means), template identity (programs of one template share code and sound, so an encoder that "
               "only tells templates apart scores the 'template identity' level), or an aligner that learned "
               "nothing (warnings below).\n"]
    summary += numbers.get("verdict") or ["- no test metrics."]
    if raw_corr.get("mantel_p"):
        mp = raw_corr["mantel_p"]
        summary.append(f"- raw-space baseline over {raw_corr['n_programs']} base programs: Mantel p "
                       f"{_p(mp['pearson'])} (Pearson), {_p(mp['spearman'])} (Spearman).")
    for r in scen.to_dict("records"):
        if r.get("jaccard_p") is not None and r["jaccard_p"] >= chance.ALPHA:
            summary.append(f"- scenario {r['scenario']}, {r['method']}: Jaccard {_f(r['jaccard'], 2)} against chance "
                           f"{_f(r['jaccard_chance'], 2)} (p {_p(r['jaccard_p'])}): indistinguishable from random picks.")
    if warnings:
        summary.append("\n**Warnings**\n")
        summary += [f"- {w}" for w in warnings]
    header = (
        "# Code-audio alignment report\n\n"
        f"- embeddings: `{table.source.get('path')}` ({len(table)} rows; code model "
        f"`{table.code_model}`, audio model `{table.audio_model}`)\n"
        f"- aligner: {aligner_line}\n"
        f"- align {__version__}; study: Kouteili et al., arXiv 2508.05473\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    text = header + "\n" + "\n".join(summary) + "\n\n" + "\n".join(sections)
    for name, content in ((REPORT_FILE, text), ("report.json", json.dumps(numbers, indent=2, default=_json_default) + "\n")):
        write_atomically(out / name, lambda tmp, content=content: tmp.write_text(content))
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
