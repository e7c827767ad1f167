"""2-D pictures of code and audio embeddings, before and after alignment.

Projection: PCA (numpy, deterministic) by default; UMAP when ``projection="umap"`` and
umap-learn is installed (it is not a dependency: `pip install umap-learn`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROJECTIONS = ("pca", "umap")


def project_2d(X: np.ndarray, projection: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, d) -> (n, 2) by PCA (top two principal components) or UMAP."""
    X = np.asarray(X, dtype=np.float64)
    if projection == "pca":
        Xc = X - X.mean(axis=0)
        _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
        return Xc @ Vt[:2].T
    if projection == "umap":
        try:
            import umap
        except ImportError as err:
            raise ValueError("projection 'umap' needs umap-learn: pip install umap-learn (or use --projection pca)") from err
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(X)
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")


def _scatter(ax, P, labels, title, marker="o"):
    cats = sorted(set(labels))
    cmap = __import__("matplotlib").colormaps["tab20"]
    for i, c in enumerate(cats):
        m = np.asarray(labels) == c
        ax.scatter(P[m, 0], P[m, 1], s=6, alpha=0.7, color=cmap(i % 20), marker=marker, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_modalities(
    out: Path,
    raw_code: np.ndarray,
    raw_audio: np.ndarray,
    labels: list[str],
    aligned_code: np.ndarray | None = None,
    aligned_audio: np.ndarray | None = None,
    projection: str = "pca",
) -> list[Path]:
    """Write the figures; returns their paths.

    - ``embeddings_2d.png``: code and audio (columns), raw and aligned (rows), each panel
      projected on its own, points coloured by template.
    - ``aligned_joint.png`` (with aligned inputs): both modalities in one projection of
      the shared space, code as dots, audio as crosses, a line joining each pair.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = 2 if aligned_code is not None else 1
    fig, axes = plt.subplots(rows, 2, figsize=(9, 4.2 * rows), squeeze=False)
    name = projection.upper()
    _scatter(axes[0, 0], project_2d(raw_code, projection), labels, f"code, raw ({name})")
    _scatter(axes[0, 1], project_2d(raw_audio, projection), labels, f"audio, raw ({name})")
    if rows == 2:
        _scatter(axes[1, 0], project_2d(aligned_code, projection), labels, f"code, aligned ({name})")
        _scatter(axes[1, 1], project_2d(aligned_audio, projection), labels, f"audio, aligned ({name})")
    fig.suptitle("test split, coloured by template", fontsize=10)
    fig.tight_layout()
    paths = [out / "embeddings_2d.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    if aligned_code is not None:
        n = len(aligned_code)
        P = project_2d(np.concatenate([aligned_code, aligned_audio]), projection)
        fig, ax = plt.subplots(figsize=(6, 6))
        show = np.arange(min(n, 200))
        for i in show:
            ax.plot([P[i, 0], P[n + i, 0]], [P[i, 1], P[n + i, 1]], lw=0.3, color="0.7", zorder=0)
        _scatter(ax, P[:n], labels, f"aligned space ({name}): code dots, audio crosses")
        _scatter(ax, P[n:], labels, f"aligned space ({name}): code dots, audio crosses", marker="x")
        fig.tight_layout()
        paths.append(out / "aligned_joint.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
