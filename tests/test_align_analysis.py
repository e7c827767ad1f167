"""The study's analyses on hand-made embedding tables (numpy and pandas only)."""

import numpy as np
import pandas as pd
import pytest

from align import analysis
from align.data import EmbeddingTable, select_splits


def _table(rows, code, audio):
    meta = pd.DataFrame(rows, columns=["id", "config", "split", "template", "family", "scenario", "group_id"])
    return EmbeddingTable(meta, np.asarray(code, np.float32), np.asarray(audio, np.float32), {})


def _unit(deg):
    r = np.deg2rad(deg)
    return [np.cos(r), np.sin(r)]


def test_base_program_correlation_picks_one_per_template_and_correlates():
    rng = np.random.default_rng(0)
    rows, code, audio = [], [], []
    for t in range(8):
        for j in range(3):  # the first row of each template is its base
            rows.append([f"t{t}-{j}", "default", "train", f"t{t}", None, None, None])
            v = rng.normal(size=4)
            code.append(v)
            audio.append(v * 2 if j == 0 else rng.normal(size=4))
    res = analysis.base_program_correlation(_table(rows, code, audio))
    assert res["n_programs"] == 8 and res["n_pairs"] == 28
    assert res["pearson"] == pytest.approx(1.0) and res["spearman"] == pytest.approx(1.0)
    assert res["pearson_p"] < 1e-6


def test_family_base_is_the_group_id_member():
    rows = [
        ["b", "families", "test", "t", "amp", None, "t:amp:b"],
        ["v1", "families", "test", "t", "amp", None, "t:amp:b"],
        ["v2", "families", "test", "t", "amp", None, "t:amp:b"],
    ]
    code = [_unit(0), _unit(1), _unit(2)]  # code barely moves
    audio = [_unit(0), _unit(60), _unit(90)]  # audio moves a lot
    sims = analysis.family_similarities(_table(rows, code, audio))
    assert sims["id"].tolist() == ["v1", "v2"]
    assert sims["code_sim"].tolist() == pytest.approx([np.cos(np.deg2rad(1)), np.cos(np.deg2rad(2))])
    assert sims["audio_sim"].tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    summary = analysis.summarise_families(sims)
    assert summary.loc[0, "share_both"] == 1.0 and summary.loc[0, "variants"] == 2


def test_scenario_gold_and_selection_known_answer():
    # 5 candidates: audio puts 0, 2, 4 far apart; code agrees on 0 and 4 only
    rows = [[f"c{i}", "scenarios", "test", "t", None, "bass", "t:bass:x"] for i in range(5)]
    audio = [_unit(a) for a in (0, 10, 120, 130, 240)]
    code = [_unit(a) for a in (0, 120, 10, 130, 240)]  # candidate 1 and 2 swapped
    per_group = analysis.scenario_agreement(_table(rows, code, audio), code_map=lambda x: x)
    raw = per_group[per_group["method"] == "raw"].iloc[0]
    assert set(raw["gold"]) in ({0, 2, 4}, {0, 3, 4}, {1, 2, 4}, {1, 3, 4})
    assert raw["jaccard"] == pytest.approx(metrics_jaccard(raw["gold"], raw["picked"]))
    assert set(per_group["method"]) == {"raw", "aligned"}
    summary = analysis.summarise_scenarios(per_group)
    assert summary["method"].tolist() == ["raw", "aligned"]


def metrics_jaccard(a, b):
    return len(set(a) & set(b)) / len(set(a) | set(b))


def test_scenario_identical_candidates_give_perfect_agreement():
    rows = [[f"c{i}", "scenarios", "test", "t", None, "melody", "t:melody:x"] for i in range(6)]
    pts = [_unit(a) for a in (0, 50, 100, 170, 220, 300)]
    res = analysis.scenario_agreement(_table(rows, pts, pts)).iloc[0]
    assert res["jaccard"] == 1.0 and res["overlap"] == 1.0 and res["spearman"] == pytest.approx(1.0)


def test_missing_sections_are_empty_not_errors():
    rows = [[f"i{i}", "default", "train", "t", None, None, None] for i in range(4)]
    table = _table(rows, np.eye(4), np.eye(4))
    assert analysis.family_similarities(table).empty
    assert analysis.summarise_families(analysis.family_similarities(table)).empty
    assert analysis.summarise_scenarios(analysis.scenario_agreement(table)).empty


def test_select_splits_names_missing_split():
    rows = [[f"i{i}", "default", "train", "t", None, None, None] for i in range(8)]
    with pytest.raises(ValueError, match="split 'validation' has 0 rows"):
        select_splits(_table(rows, np.eye(8), np.eye(8)))
