"""Tests for the dataset card (dataset_card.md rendered by build_dataset), the repo id
written in by publish, and CITATION.cff. Renders folders are made in the test with
tests/test_dataset.py's helpers (synthetic FLACs, the project's own manifest and status
writers)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sonicpi_gen.dataset import (REPO_ID_PLACEHOLDER, SPLITS, _acceleration_text, _tempo_text,
                                 build_dataset, iter_rows)
from sonicpi_gen.expand import Program
from sonicpi_gen.folders import DATASET_SCHEMA, read_status, write_status
from sonicpi_gen.publish import fill_repo_id, publish_dataset
from tests.test_dataset import _programs, make_renders

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "someone/sonicpi-pairs"
# Every card must have these sections (issue 20: "a dataset card that tells the whole truth").
SECTIONS = ("## Configurations", "## How the audio was made", "## Columns", "## Statistics",
            "## Usage", "## Uses", "## Out-of-scope uses", "## Limitations and biases",
            "## Licences", "## Citation")
# What the Hub reads from the front matter (huggingface_hub.DatasetCardData fields we set).
HUB_KEYS = ("license", "pretty_name", "task_categories", "size_categories", "tags", "configs",
            "dataset_info")


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def shard_bytes(out: Path, config: str) -> int:
    return sum(p.stat().st_size for p in (out / "data" / config).glob("*.parquet"))


SLOW = Program("alpha", 99, 99, 0, {"note": 61}, "# alpha\nuse_bpm 80\nplay 61\nsleep 1\n")


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """The test_dataset renders, with some clips rendered slower and retried, and one more
    base program that plays at 80 BPM (18 s = 6 bars; its status says so too)."""
    folder, written = make_renders(tmp_path_factory.mktemp("r"), [SLOW] + _programs())
    status = read_status(folder)
    ok = sorted(i for i, s in status.items() if s["status"] == "ok" and i != SLOW.id)
    status[ok[0]].update(acceleration=4.0, attempts=3)
    status[ok[1]].update(acceleration=1.0, attempts=5)
    status[ok[2]].update(attempts=2)
    status[SLOW.id].update(bpm=80, bars=6)
    write_status(folder, status)
    return folder, written


@pytest.fixture(scope="module")
def cards(renders, tmp_path_factory):
    """Dataset folders built without and with --repo-id: {"anonymous": out, "named": out}."""
    root = tmp_path_factory.mktemp("d")
    build_dataset([renders[0]], root / "anonymous")
    build_dataset([renders[0]], root / "named", repo_id=REPO_ID)
    return {"anonymous": root / "anonymous", "named": root / "named"}


@pytest.mark.parametrize("which", ["anonymous", "named"])
def test_front_matter_parses_with_the_keys_the_hub_reads(cards, which):
    meta = front_matter((cards[which] / "README.md").read_text())
    assert all(key in meta for key in HUB_KEYS), sorted(set(HUB_KEYS) - set(meta))
    assert meta["license"] == "mit"
    names = {c["config_name"] for c in meta["configs"]}
    assert names == {p.name for p in (cards[which] / "data").iterdir()}
    for config in meta["configs"]:
        for entry in config["data_files"]:
            assert list(cards[which].glob(entry["path"])), entry
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert infos["default"]["download_size"] == shard_bytes(cards[which], "default")


@pytest.mark.parametrize("heading", SECTIONS)
def test_every_required_section_is_there(cards, heading):
    card = (cards["named"] / "README.md").read_text()
    assert re.search(rf"^{re.escape(heading)}$", card, re.M), heading


def test_a_known_repo_id_is_in_every_example_and_no_placeholder_is_left(cards):
    card = (cards["named"] / "README.md").read_text()
    assert REPO_ID_PLACEHOLDER not in card and "Repository id not set" not in card
    assert card.count(f'load_dataset("{REPO_ID}", "default"') == 3  # two usage examples, unseen rebuild
    assert f"https://huggingface.co/datasets/{REPO_ID}}}" in card
    assert "@misc{sonicpi_pairs," in card


def test_an_unknown_repo_id_is_said_and_publish_writes_it_in(cards, tmp_path):
    out = tmp_path / "anonymous"
    shutil.copytree(cards["anonymous"], out)
    card = (out / "README.md").read_text()
    assert card.count(REPO_ID_PLACEHOLDER) >= 4 and "**Repository id not set.**" in card
    before = card
    result = publish_dataset(out, REPO_ID, dry_run=True)
    assert result.card_filled and (out / "README.md").read_text() == before  # a dry run writes nothing
    assert fill_repo_id(out / "README.md", REPO_ID)
    filled = (out / "README.md").read_text()
    assert REPO_ID_PLACEHOLDER not in filled and "Repository id not set" not in filled
    assert "repo-id-notice" not in filled
    assert filled.count(f'load_dataset("{REPO_ID}"') == before.count(f'load_dataset("{REPO_ID_PLACEHOLDER}"') == 3
    assert front_matter(filled) == front_matter(before)
    assert not fill_repo_id(out / "README.md", REPO_ID)  # already there: nothing to do
    assert not list(out.glob(".README.md.tmp-*"))


def test_the_card_counts_factors_attempts_and_tempos_of_the_clips(cards):
    card = (cards["named"] / "README.md").read_text()
    n_clips = int(re.search(r"^(\d+) distinct clips", card, re.M).group(1))
    assert "| x8 | %d |" % (n_clips - 2) in card and "| x4 | 1 |" in card and "| x1 | 1 |" in card
    assert "| 1 | %d |" % (n_clips - 3) in card
    assert all(f"| {a} | 1 |" in card for a in (2, 3, 5))
    assert f"{n_clips - 2} of {n_clips} clips on a clock accelerated x8, the others at other factors" in card
    assert f"(120 BPM for {n_clips - 1} clips, 80 for the other 1; " in card
    # bars as the rows have them (whoever sets the column), in the card's words
    rows = {r["id"]: r for c in ("default", "families", "scenarios") for split in SPLITS
            if list((cards["named"] / "data" / c).glob(f"{split}-*"))
            for r in iter_rows(cards["named"], c, split, ["id", "bpm", "bars"])}
    assert len(rows) == n_clips
    bars = Counter(r["bars"] for r in rows.values())
    assert f"; {_tempo_text({120: 1}, dict(bars)).split('; ')[1]};" in card
    for column in ("acceleration", "attempts", "bpm", "bars"):  # the card's type is the schema's
        dtype = str(DATASET_SCHEMA.field(column).type).replace("double", "float64")
        assert re.search(rf"^\| {column} \| {dtype} \| .+ \|$", card, re.M), column


@pytest.mark.parametrize("counts, text", [
    ({120: 5}, "120 BPM; 9 bars of 4/4"),
    ({120: 5, 80: 1, 130: 2}, "120 BPM for 5 clips, 80-130 for the other 3; 9 bars of 4/4"),
    ({"unknown": 2}, "BPM not recorded; 9 bars of 4/4"),
])
def test_tempo_text(counts, text):
    assert _tempo_text(counts, {9: 8}) == text


@pytest.mark.parametrize("counts, text", [
    ({8.0: 3}, "all 3 clips on a clock accelerated x8"),
    ({1.0: 2}, "all 2 clips in real time"),
    ({1.0: 1, 4.0: 1, 8.0: 5}, "5 of 7 clips on a clock accelerated x8, the others at other factors"),
    ({"unknown": 4}, "at a clock factor not recorded"),
])
def test_acceleration_text(counts, text):
    assert _acceleration_text(counts) == text


def test_the_card_says_what_unseen_templates_costs_and_how_to_do_without_it(cards, renders, tmp_path):
    out = cards["named"]
    card = (out / "README.md").read_text()
    unseen, total = shard_bytes(out, "unseen_templates"), sum(
        shard_bytes(out, p.name) for p in (out / "data").iterdir())
    assert f"its shards take {unseen / 1e6:.1f} MB of the\n{total / 1e6:.1f} MB here" in card
    assert "--configs\ndefault,families,scenarios`" in card
    # unseen_templates is default's audio a second time ...
    audio = lambda config: sorted(r["audio_sha256"] for s in SPLITS  # noqa: E731
                                  for r in iter_rows(out, config, s, ["audio_sha256"]))
    assert audio("unseen_templates") == audio("default")
    # ... and the template lists the card gives rebuild its splits from default alone.
    held = json.loads(re.search(r"^HELD_OUT = (.+)$", card, re.M).group(1))
    split_of = lambda t: next((s for s, names in held.items() if t in names), "train")  # noqa: E731
    rebuilt = {(r["id"], split_of(r["template"])) for s in SPLITS
               for r in iter_rows(out, "default", s, ["id", "template"])}
    assert rebuilt == {(r["id"], r["split"]) for s in SPLITS
                       for r in iter_rows(out, "unseen_templates", s, ["id", "split"])}
    # Leaving it out saves exactly its shards and stores each clip of default once.
    lean = tmp_path / "lean"
    build_dataset([renders[0]], lean, configs=("default", "families", "scenarios"))
    assert not (lean / "data" / "unseen_templates").exists()
    assert sum(shard_bytes(lean, c) for c in ("default", "families", "scenarios")) == total - unseen
    assert "What `unseen_templates` costs" not in (lean / "README.md").read_text()


def test_tutorial_rows_add_their_licence_to_the_front_matter(renders, tmp_path):
    lifted = [Program(f"s{t:03d}_block_01", i, i, 0, {"note_1": 50 + i}, f"play {50 + i}\n# {t}\n")
              for t in range(4) for i in range(2)]
    tutorial, _ = make_renders(tmp_path / "tut", lifted, failed={}, clipped=0)
    build_dataset([renders[0]], tmp_path / "d", tutorial_dirs=[tutorial], repo_id=REPO_ID)
    card = (tmp_path / "d" / "README.md").read_text()
    assert front_matter(card)["license"] == ["mit", "cc-by-sa-4.0"]
    licences = card[card.index("## Licences"):card.index("## Citation")]
    assert "**`tutorial` rows** (code and audio): CC BY-SA 4.0" in licences
    assert "130 of the\n  package's 165 sample files one by one as **CC0**" in licences
    assert "Copyright 2016 Samuel Aaron\n\nPermission is hereby granted" in licences  # MIT's notice goes along


def test_citation_cff_is_cff_1_2_0_with_the_study_by_full_names():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert all(cff.get(key) for key in ("authors", "cff-version", "message", "title"))  # CFF's required keys
    assert cff["type"] == "software" and cff["license"] == "MIT"
    import sonicpi_gen
    assert cff["version"] == sonicpi_gen.__version__
    study = next(r for r in cff["references"] if r.get("identifiers") or r.get("url", "").startswith("https://arxiv"))
    assert study["title"] == "Embedding Alignment in Code Generation for Audio"
    assert [(a["given-names"], a["family-names"]) for a in study["authors"]] == [
        ("Sam", "Kouteili"), ("Hiren", "Madhu"), ("George", "Typaldos"), ("Mark", "Santolucito")]
    for work in [cff] + cff["references"]:
        assert all(("family-names" in a) != ("name" in a) for a in work["authors"]), work["title"]


def test_the_card_quotes_the_checks_the_renders_recorded_or_says_they_are_not(renders, tmp_path):
    """The fidelity check's numbers come from the renders' provenance.json (what the
    renderer that made them enforced), not from the toolkit that builds the dataset."""
    from renderer.fidelity import recorded_checks

    recorded = tmp_path / "renders"
    shutil.copytree(renders[0], recorded)
    checks = {**recorded_checks(), "onset_tolerance_ms": 4.25}  # a value no default has
    provenance = json.loads((recorded / "provenance.json").read_text())
    provenance["settings"] = {"checks": checks}
    (recorded / "provenance.json").write_text(json.dumps(provenance))
    build_dataset([recorded], tmp_path / "with")
    card = (tmp_path / "with" / "README.md").read_text()
    assert "every onset on its 0.5 s grid within\n4.25 ms" in card
    assert "do not record the renderer's checks" not in card

    build_dataset([renders[0]], tmp_path / "without")  # provenance.json without settings.checks
    card = (tmp_path / "without" / "README.md").read_text()
    assert "do not record the renderer's checks" in card and "4.25" not in card


def test_a_render_records_its_checks_in_its_provenance():
    from renderer.clip import MAX_CLOCK_DRIFT_S
    from renderer.fidelity import CANDIDATE_FACTORS, ONSET_TOLERANCE_S, recorded_checks

    checks = recorded_checks()
    assert checks["candidate_factors"] == [float(f) for f in CANDIDATE_FACTORS]
    assert checks["onset_tolerance_ms"] == ONSET_TOLERANCE_S * 1000
    assert checks["max_drift_ms"] == MAX_CLOCK_DRIFT_S * 1000
