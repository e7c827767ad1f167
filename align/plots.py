"""2-D pictures of code and audio embeddings, before and after alignment.

Projection: PCA (numpy, deterministic) by default; UMAP with ``projection="umap"``
(umap-learn, installed by the align extra / scripts/setup.sh --ml).

Every template gets its own (colour, marker) pair: ten colours x six markers = 60
distinct styles, so 27 templates never share one, and a legend names them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PROJECTIONS = ("pca", "umap")
MARKERS = ("o", "s", "^", "D", "v", "P")
N_COLOURS = 10  # tab10: ten colours that stay apart in print and for most colour-blind readers
MAX_JOINT_LINES = 200  # pair lines drawn in the joint plot; more turn it grey


def project_2d(X: np.ndarray, projection: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, d) -> (n, 2) by PCA (top two principal components) or UMAP."""
    X = np.asarray(X, dtype=np.float64)
    if projection == "pca":
        Xc = X - X.mean(axis=0)
        _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
        P = Xc @ Vt[:2].T
        return P if P.shape[1] == 2 else np.pad(P, ((0, 0), (0, 2 - P.shape[1])))
    if projection == "umap":
        try:
            import umap
        except ImportError as err:
            raise ValueError("projection 'umap' needs umap-learn: scripts/setup.sh --ml, or "
                             "pip install umap-learn==0.5.12 (or use --projection pca)") from err
        n_neighbors = max(2, min(15, len(X) - 1))  # UMAP needs fewer neighbours than points
        return umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=seed).fit_transform(X)
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")


def template_styles(labels: list[str]) -> dict[str, tuple]:
    """A distinct (colour, marker) per label, in sorted label order."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    cats = sorted(set(labels))
    return {c: (cmap(i % N_COLOURS), MARKERS[(i // N_COLOURS) % len(MARKERS)]) for i, c in enumerate(cats)}


def _axis_names(projection: str) -> tuple[str, str]:
    name = "PC" if projection == "pca" else "UMAP"
    return f"{name} 1", f"{name} 2"


def _scatter(ax, P, labels, styles, title, projection, hollow=False, size=14):
    labels = np.asarray(labels)
    for c, (colour, marker) in styles.items():
        m = labels == c
        if not m.any():
            continue
        if hollow:  # the other modality: same style, unfilled, so both stay visible
            ax.scatter(P[m, 0], P[m, 1], s=size, marker=marker, facecolors="none", edgecolors=[colour],
                       linewidths=0.8, alpha=0.9)
        else:
            ax.scatter(P[m, 0], P[m, 1], s=size, marker=marker, color=colour, alpha=0.8, linewidths=0, label=c)
    ax.set_title(title, fontsize=9)
    x, y = _axis_names(projection)
    ax.set_xlabel(x, fontsize=8)
    ax.set_ylabel(y, fontsize=8)
    ax.tick_params(labelsize=7)


def _legend(fig, styles, ncol: int):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker=mk, color=col, label=name, markersize=5) for name, (col, mk) in styles.items()]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False, title="template",
               title_fontsize=8)


def plot_embeddings_2d(out: Path, raw_code, raw_audio, labels, aligned_code=None, aligned_audio=None,
                       projection: str = "pca") -> Path:
    """``embeddings_2d.png``: code and audio (columns), raw and aligned (rows), each panel
    projected on its own, one style per template, legend below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = template_styles(labels)
    rows = 2 if aligned_code is not None else 1
    ncol = min(len(styles), 5)
    legend_rows = -(-len(styles) // ncol)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.4 * rows + 0.25 * legend_rows + 0.6), squeeze=False)
    name = projection.upper()
    panels = [(raw_code, f"code, raw ({name})"), (raw_audio, f"audio, raw ({name})")]
    if rows == 2:
        panels += [(aligned_code, f"code, aligned ({name})"), (aligned_audio, f"audio, aligned ({name})")]
    for ax, (X, title) in zip(axes.ravel(), panels):
        _scatter(ax, project_2d(X, projection), labels, styles, title, projection)
    fig.suptitle(f"test split ({len(labels)} programs), one colour and marker per template", fontsize=10)
    _legend(fig, styles, ncol)
    fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.5) / fig.get_figheight(), 1, 0.97))
    path = out / "embeddings_2d.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_aligned_joint(out: Path, aligned_code, aligned_audio, labels, projection: str = "pca") -> Path:
    """``aligned_joint.png``: both modalities in one projection of the shared space, code
    filled, audio hollow in its template's style, a grey line joining each pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = template_styles(labels)
    n = len(aligned_code)
    P = project_2d(np.concatenate([aligned_code, aligned_audio]), projection)
    ncol = min(len(styles), 4)
    legend_rows = -(-len(styles) // ncol)
    fig, ax = plt.subplots(figsize=(7, 6.5 + 0.25 * legend_rows))
    for i in range(min(n, MAX_JOINT_LINES)):
        ax.plot([P[i, 0], P[n + i, 0]], [P[i, 1], P[n + i, 1]], lw=0.3, color="0.75", zorder=0)
    name = projection.upper()
    _scatter(ax, P[:n], labels, styles, "", projection, size=16)
    _scatter(ax, P[n:], labels, styles, f"aligned space ({name}): code filled, audio hollow, "
             f"lines join pairs", projection, hollow=True, size=22)
    _legend(fig, styles, ncol)
    fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.5) / fig.get_figheight(), 1, 1))
    path = out / "aligned_joint.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_modalities(
    out: Path,
    raw_code: np.ndarray,
    raw_audio: np.ndarray,
    labels: list[str],
    aligned_code: np.ndarray | None = None,
    aligned_audio: np.ndarray | None = None,
    projection: str = "pca",
) -> tuple[list[Path], list[str]]:
    """Write every figure that can be drawn; returns (paths, errors).

    One figure failing (e.g. UMAP on too few points) costs that figure only; its error
    ("<figure>: <message>") is returned for the report to print.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("embeddings_2d.png", lambda: plot_embeddings_2d(out, raw_code, raw_audio, labels, aligned_code,
                                                             aligned_audio, projection))]
    if aligned_code is not None:
        jobs.append(("aligned_joint.png", lambda: plot_aligned_joint(out, aligned_code, aligned_audio, labels,
                                                                     projection)))
    paths, errors = [], []
    for name, draw in jobs:
        try:
            paths.append(draw())
        except Exception as err:  # noqa: BLE001 - a figure never costs the report
            logger.warning("figure %s not drawn: %s", name, err)
            errors.append(f"{name}: {type(err).__name__}: {err}")
    return paths, errors
