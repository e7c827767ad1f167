"""Figures a reader can read: one style per template, both modalities visible, and a
failed figure that leaves the rest of the report."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from align import plots  # noqa: E402


def test_27_templates_get_27_distinct_styles():
    labels = [f"t{i:02d}" for i in range(27)] * 2
    styles = plots.template_styles(labels)
    assert len(styles) == 27 and len(set(styles.values())) == 27


def _figure_data(n_templates=27, per=2, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = [f"template_{i}" for i in range(n_templates) for _ in range(per)]
    n = len(labels)
    return rng.normal(size=(n, dim)), rng.normal(size=(n, dim + 2)), labels, rng.normal(size=(n, 4)), rng.normal(size=(n, 4))


def test_joint_plot_draws_both_modalities_and_axis_labels(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, path, *a, **kw):
        ax = fig.axes[0]
        cols = ax.collections
        seen[str(path).rsplit("/", 1)[-1]] = {
            "points": sum(len(c.get_offsets()) for c in cols),
            # hollow markers (audio) need an outline to be seen at all
            "outlined_points": sum(len(c.get_offsets()) for c in cols if float(np.max(c.get_linewidths())) > 0),
            "xlabel": ax.get_xlabel(),
            "legend_entries": sum(len(lg.get_texts()) for lg in fig.legends),
        }
        return real_savefig(fig, path, *a, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    code, audio, labels, zc, za = _figure_data()
    paths, errors = plots.plot_modalities(tmp_path, code, audio, labels, zc, za)
    assert not errors and [p.name for p in paths] == ["embeddings_2d.png", "aligned_joint.png"]
    joint = seen["aligned_joint.png"]
    assert joint["points"] == 2 * len(labels)  # code and audio both drawn
    assert joint["outlined_points"] == len(labels)  # every audio point visible
    assert joint["xlabel"] == "PC 1" and joint["legend_entries"] == 27
    assert seen["embeddings_2d.png"]["legend_entries"] == 27


def test_umap_projection_runs(tmp_path):
    pytest.importorskip("umap")
    code, audio, labels, _, _ = _figure_data(n_templates=6, per=5)
    paths, errors = plots.plot_modalities(tmp_path, code, audio, labels, projection="umap")
    assert not errors and paths[0].stat().st_size > 1000


def test_a_failed_figure_leaves_the_report(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")  # noqa: F841
    from align.report import build_report
    from align.synthetic import write_synthetic_embeddings

    emb = write_synthetic_embeddings(tmp_path / "synthetic__synthetic", n_templates=6, per_template=40, dim=16)

    def broken(*args, **kwargs):
        raise RuntimeError("no display for this projection")

    monkeypatch.setattr(plots, "project_2d", broken)
    out = tmp_path / "report"
    build_report(emb, out, n_boot=0, n_perm=10)
    text = (out / "report.md").read_text()
    assert "Figures failed: embeddings_2d.png: RuntimeError: no display" in text
    assert "Within templates" in text and "Code-completion scenarios" in text
    assert json.loads((out / "report.json").read_text())["test_raw"]["cka"]["p_value"] is not None
