"""sonicpi_gen/folders.py: every folder's writer and reader round-trip rows and types, the
readers import no other stage, and a row's bpm and bars are what its program plays."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from sonicpi_gen import __version__, folders
from sonicpi_gen.folders import (DATASET_SCHEMA, MANIFEST_SCHEMA, PROVENANCE_KEYS, STATUS_SCHEMA,
                                 append_status, dataset_row, dataset_shards, decode_audio,
                                 embeddings_table, iter_rows, make_provenance, played_tempo,
                                 read_embeddings, read_manifest, read_provenance, read_status,
                                 replace_dir, status_row, write_atomically, write_embeddings,
                                 write_manifest, write_provenance, write_status)

REPO = Path(__file__).resolve().parent.parent
OTHER_STAGES = ("renderer", "embed", "align", "torch", "transformers")
SR = 44100


# --- no stage imports another to read its folder ----------------------------------------------

@pytest.mark.parametrize("statement, forbidden", [
    ("import sonicpi_gen.folders; from sonicpi_gen.folders import read_manifest, read_status, "
     "iter_rows, dataset_shards, decode_audio, read_embeddings", OTHER_STAGES),
    ("import sonicpi_gen.dataset; from sonicpi_gen.dataset import read_renders", OTHER_STAGES),
    ("import embed.dataset", ("renderer", "align", "torch", "transformers")),
    ("import align.data", ("renderer", "embed", "torch", "transformers")),
])
def test_a_folder_reader_imports_no_other_stage(statement, forbidden):
    probe = (f"import sys; {statement}; "
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", f"{statement!r} imported {out.stdout.strip()}"


def _imports(tree) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("module, forbidden", [
    ("sonicpi_gen/folders.py", ("renderer", "embed", "align", "torch", "transformers", "datasets",
                                "sonicpi_gen.expand", "sonicpi_gen.dataset")),
    ("sonicpi_gen/dataset.py", ("renderer", "embed", "align")),
    ("embed/dataset.py", ("renderer", "align", "sonicpi_gen.dataset")),
    ("align/data.py", ("renderer", "embed", "sonicpi_gen.dataset")),
    ("renderer/render.py", ("sonicpi_gen.expand", "sonicpi_gen.dataset", "embed", "align")),
    ("embed/pipeline.py", ("renderer", "align", "sonicpi_gen.dataset")),
])
def test_no_import_statement_names_another_stage(module, forbidden):
    """Also the imports inside functions, which the subprocess probe does not run."""
    names = _imports(ast.parse((REPO / module).read_text()))
    bad = [n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden)]
    assert bad == []


# --- round trips ------------------------------------------------------------------------------

def _manifest_rows():
    return [
        {"id": "a" * 16, "template": "acid", "index": 0, "draw": 3, "seed": 7, "params": '{"n": 1}',
         "code": "play 60\n", "family": None, "scenario": None, "group_id": None, "varied": None,
         "prompt": None, "source": None},
        {"id": "b" * 16, "template": "acid", "index": 1, "draw": 4, "seed": 7, "params": '{"bpm": 80}',
         "code": "use_bpm 80\nplay 60\n", "family": "bpm", "scenario": None,
         "group_id": "acid:bpm:" + "a" * 16, "varied": "bpm", "prompt": None, "source": "x.rb"},
    ]


def test_manifest_round_trip_keeps_rows_and_types(tmp_path):
    rows = _manifest_rows()
    write_manifest(tmp_path, rows)
    table = read_manifest(tmp_path)
    assert table.schema == MANIFEST_SCHEMA
    assert table.to_pylist() == rows
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]  # no temporary left


def test_manifest_writer_fills_missing_columns_with_null(tmp_path):
    write_manifest(tmp_path, [{"id": "c" * 16, "template": "user", "code": "play 1"}])
    (row,) = read_manifest(tmp_path).to_pylist()
    assert row["family"] is None and row["index"] is None and row["code"] == "play 1"


def _status_rows():
    ok = status_row(id="a" * 16, template="acid", code_sha256="0" * 64, status="ok", path="acid/a.flac",
                    audio_sha256="1" * 64, duration_s=18.0, sample_rate=SR, bpm=80.0, bars=6.0,
                    peak_dbfs=-3.5, rms_dbfs=-20.25, full_scale_fraction=0.0, longest_silence_s=0.5,
                    clipped=False, render_s=3.25, attempts=2, worker=1, acceleration=8.0,
                    sonic_pi_version="3.2.2")
    failed = status_row(id="b" * 16, template="acid", code_sha256="2" * 64, status="syntax_error",
                        message="line 2: unexpected end", bpm=130.0, bars=9.75, attempts=1, worker=0,
                        acceleration=1.0, sonic_pi_version="3.2.2")
    duplicate = status_row(id="a" * 16, template="user", source="copy.rb", status="duplicate",
                           message="same text as a.rb")
    return [ok, failed, duplicate]


def test_status_round_trip_through_parquet_and_journal(tmp_path):
    ok, failed, duplicate = _status_rows()
    write_status(tmp_path, {"a": ok, "source:copy.rb": duplicate})
    append_status(tmp_path, failed)
    rows = read_status(tmp_path)
    assert rows == {"a" * 16: ok, "b" * 16: failed, "source:copy.rb": duplicate}
    write_status(tmp_path, rows)  # compaction empties the journal
    assert not (tmp_path / folders.STATUS_JOURNAL).exists()
    table = pq.read_table(tmp_path / folders.STATUS_FILE)
    assert table.schema == STATUS_SCHEMA
    assert read_status(tmp_path) == rows
    row = read_status(tmp_path)["a" * 16]
    assert type(row["bpm"]) is float and type(row["attempts"]) is int and type(row["clipped"]) is bool


def test_status_rows_with_int_tempo_from_older_renders_are_read_as_floats(tmp_path):
    row = status_row(id="a" * 16, template="t", status="ok", bpm=120, bars=9)
    write_status(tmp_path, {"a": row})
    (read,) = read_status(tmp_path).values()
    assert (read["bpm"], read["bars"]) == (120.0, 9.0) and type(read["bars"]) is float


def test_status_row_names_an_unknown_column():
    with pytest.raises(KeyError, match=r"\['tempo'\] are not status columns; add them to STATUS_SCHEMA"):
        status_row(id="x", tempo=80)


def _flac(seed: int, frames: int = 2205) -> tuple[bytes, np.ndarray]:
    audio = np.random.default_rng(seed).integers(-8000, 8000, size=(frames, 2), dtype=np.int16)
    data = io.BytesIO()
    sf.write(data, audio, SR, format="FLAC", subtype="PCM_16")
    return data.getvalue(), audio


def test_dataset_round_trip_keeps_rows_and_types(tmp_path):
    programs = _manifest_rows()
    statuses = _status_rows()[:2]
    statuses[1] = {**statuses[1], "status": "ok", "path": "acid/b.flac", "audio_sha256": "3" * 64,
                   "duration_s": 18.0, "sample_rate": SR}
    rows, samples = [], []
    for i, (program, status) in enumerate(zip(programs, statuses)):
        flac, audio = _flac(i)
        samples.append(audio)
        rows.append(dataset_row(program, status, flac, "train", __version__))
    folder = tmp_path / "data" / "default"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=DATASET_SCHEMA), folder / "train-00000-of-00001.parquet")
    assert dataset_shards(tmp_path) == [("default", "train", folder / "train-00000-of-00001.parquet")]
    read = list(iter_rows(tmp_path, "default", "train"))
    assert read == rows
    assert [(r["bpm"], r["bars"], r["acceleration"], r["attempts"]) for r in read] == [
        (80.0, 6.0, 8.0, 2), (130.0, 9.75, 1.0, 1)]
    assert [r["family"] for r in read] == [None, "bpm"] and read[0]["toolkit_version"] == __version__
    for row, audio in zip(read, samples):
        decoded, sr = decode_audio(row, dtype="int16")
        assert sr == SR and np.array_equal(decoded, audio)


def test_dataset_row_takes_each_schema_column_from_manifest_or_status():
    program, status = _manifest_rows()[0], _status_rows()[0]
    row = dataset_row(program, status, b"fLaC", "test", "9.9")
    assert list(row) == DATASET_SCHEMA.names
    assert row["code"] == program["code"] and row["seed"] == 7
    assert row["sample_rate"] == SR and row["attempts"] == 2 and row["acceleration"] == 8.0
    assert row["audio"] == {"bytes": b"fLaC", "path": "acid/a.flac"}
    assert (row["split"], row["toolkit_version"]) == ("test", "9.9")


def test_embeddings_round_trip_keeps_rows_and_types(tmp_path):
    meta = {"id": ["a", "b", "c"], "config": ["default", "default", "families"],
            "split": ["train", "test", "test"], "template": ["t", "t", "u"],
            "family": [None, None, "bpm"], "scenario": [None, None, None],
            "group_id": [None, None, "u:bpm:c"]}
    code = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    audio = -np.arange(6, dtype=np.float32).reshape(3, 2) / 3
    path = write_embeddings(tmp_path, embeddings_table(meta, code, audio, {"code_model": "m"}))
    assert path == tmp_path / "embeddings.parquet" and [p.name for p in tmp_path.iterdir()] == [path.name]
    table, code_read, audio_read, kv = read_embeddings(tmp_path)
    assert table.to_pydict() == meta
    assert code_read.dtype == np.float32 and np.array_equal(code_read, code)
    assert np.array_equal(audio_read, audio) and kv == {"code_model": "m"}
    assert pq.read_schema(path).remove_metadata() == folders.EMBEDDINGS_SCHEMA


def test_provenance_has_one_shape_and_round_trips(tmp_path):
    record = make_provenance("render", "sonicpi-gen render", {"workers": 2}, [tmp_path], "3.2.2",
                             counts={"ok": 3})
    assert list(record)[:len(PROVENANCE_KEYS)] == list(PROVENANCE_KEYS)
    assert record["tool"] == "sonicpi-gen" and record["tool_version"] == __version__
    assert record["sonic_pi_version"] == ["3.2.2"] and record["inputs"] == [str(tmp_path)]
    assert record["created"].endswith("Z") and record["counts"] == {"ok": 3}
    write_provenance(tmp_path, record)
    assert read_provenance(tmp_path) == json.loads(json.dumps(record))
    assert make_provenance("expand", "sonicpi-gen expand", {}, timestamp=False)["created"] is None
    with pytest.raises(ValueError, match=r"extras \['tool'\] would replace"):
        make_provenance("dataset", "x", {}, tool="other")
    assert read_provenance(tmp_path / "missing") == {}


@pytest.mark.parametrize("module", ["sonicpi_gen/expand.py", "sonicpi_gen/dataset.py", "renderer/render.py",
                                    "embed/pipeline.py", "sonicpi_gen/templatize.py"])
def test_every_stage_writes_provenance_through_make_provenance(module):
    source = (REPO / module).read_text()
    assert "make_provenance(" in source and '"tool": "sonicpi-gen"' not in source


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "status.parquet"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["status.parquet"]
    write_atomically(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"


def test_replace_dir_swaps_whole_folders(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    new = tmp_path / ".out.tmp-123"
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]


# --- bpm and bars: what the program plays ---------------------------------------------------------

@pytest.mark.parametrize("code, bpm, bars", [
    ("play 60\n", 120.0, 9.0),  # the renderer's prelude tempo
    ("use_bpm 80\nplay 60\n", 80.0, 6.0),
    ("use_bpm 130\nplay 60\n", 130.0, 9.75),
    ("# intro\nuse_bpm(92.5)  # slow\nplay 60\n", 92.5, 6.9375),
    ("live_loop :a do\n  use_bpm 60\n  play 60\nend\n", 120.0, 9.0),  # inside a block: not the program's
    ("use_bpm 100\nuse_bpm 60\n", 100.0, 7.5),  # the first one
    ("t = 90\nuse_bpm t\n", 120.0, 9.0),  # not a literal
])
def test_played_tempo_known_answers(code, bpm, bars):
    assert played_tempo(code, 18.0, 120) == {"bpm": bpm, "bars": bars}


def test_a_bpm_family_row_gets_the_tempo_its_code_plays(tmp_path):
    """Programs of the bpm family, their status rows made by the renderer's own row
    writer (_Batch.finish, no server), then the dataset built from that renders folder."""
    from renderer.clip import BPM, CLIP_SECONDS, ClipResult
    from renderer.render import Job, _Batch
    from sonicpi_gen.dataset import build_dataset
    from sonicpi_gen.expand import FAMILY_BPMS, expand_families

    programs = expand_families(tmp_path / "programs", ["bpm"], k=3, seed=1, templates=["acid"])
    renders = tmp_path / "renders"
    renders.mkdir()
    write_manifest(renders, read_manifest(tmp_path / "programs").to_pylist())
    batch = _Batch(renders, renders / ".work", 8.0, 0.3, 5, None, 0.01, "flac", None)
    for i, program in enumerate(programs):
        _, audio = _flac(i)
        batch.finish(Job(program.id, program.template, program.code), ClipResult("ok", audio=audio),
                     attempts=1 + i, factor=8.0 / (i + 1), worker=0, version="3.2.2", render_s=1.0)
    write_status(renders, batch.rows)
    build_dataset(renders, tmp_path / "dataset", configs=("families",),
                  card_template=REPO / "dataset_card.md")
    status = read_status(renders)
    rows = {r["id"]: r for r in iter_rows(tmp_path / "dataset", "families", "test")}
    want = {p.id: float(p.params.get("bpm", BPM)) for p in programs}
    assert sorted(want.values()) == [*map(float, FAMILY_BPMS[:3]), float(BPM)]  # 80, 90, 100 and the base
    assert rows.keys() == want.keys()
    for id_, bpm in want.items():
        bars = CLIP_SECONDS * bpm / 240
        assert (rows[id_]["bpm"], rows[id_]["bars"]) == (bpm, bars)
        assert (status[id_]["bpm"], status[id_]["bars"]) == (bpm, bars)
    by_bpm = {r["bpm"]: r for r in rows.values()}
    assert (by_bpm[80.0]["bars"], by_bpm[120.0]["bars"]) == (6.0, 9.0)
    assert sorted((r["attempts"], r["acceleration"]) for r in rows.values()) == [
        (1, 8.0), (2, 4.0), (3, 8.0 / 3), (4, 2.0)]


def test_embeddings_reader_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no embeddings.parquet in .*pass the folder written by"):
        read_embeddings(tmp_path)
    pq.write_table(pa.table({"id": ["a"], "code_emb": [[1.0]]}), tmp_path / "embeddings.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['split', 'audio_emb'\]"):
        read_embeddings(tmp_path)
    ragged = embeddings_table({"id": ["a", "b"], "split": ["train", "test"]},
                              [np.ones(2), np.ones(1)], [np.ones(3), np.ones(3)])
    write_embeddings(tmp_path, ragged)
    with pytest.raises(ValueError, match="'code_emb' has rows of different lengths"):
        read_embeddings(tmp_path)


def test_rendering_again_refreshes_the_tempo_of_rows_from_older_renders(tmp_path):
    """All clips done, so no server starts: the rerun only rewrites status and provenance."""
    import hashlib

    from renderer.render import RenderSettings, render_programs
    from sonicpi_gen.expand import expand_families

    programs = expand_families(tmp_path / "programs", ["bpm"], k=1, seed=1, templates=["acid"])
    renders = tmp_path / "renders"
    rows = {}
    for i, program in enumerate(programs):
        flac, _ = _flac(i)
        path = renders / program.template / f"{program.id}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(flac)
        rows[program.id] = status_row(  # as an older render wrote it: 120 and 9 on every row
            id=program.id, template=program.template, status="ok", bpm=120, bars=9,
            code_sha256=hashlib.sha256(program.code.encode()).hexdigest(), path=str(path.relative_to(renders)),
            audio_sha256=hashlib.sha256(flac).hexdigest(), attempts=1, acceleration=8.0)
    write_status(renders, rows)
    summary = render_programs(tmp_path / "programs", renders, RenderSettings(workers=1, acceleration=8),
                              progress=False)
    assert summary.rendered == 0 and summary.skipped == 2
    tempo = {r["bpm"]: r["bars"] for r in read_status(renders).values()}
    assert tempo == {80.0: 6.0, 120.0: 9.0}
    provenance = read_provenance(renders)
    assert list(provenance)[:len(PROVENANCE_KEYS)] == list(PROVENANCE_KEYS)
    assert provenance["stage"] == "render" and provenance["settings"]["default_bpm"] == 120
    assert provenance["inputs"] == [str((tmp_path / "programs").resolve())]


def test_a_status_column_added_to_the_dataset_schema_reaches_the_rows(monkeypatch, tmp_path):
    """Adding a dataset column is one line in DATASET_SCHEMA: the row takes it by name."""
    from sonicpi_gen import dataset

    schema = DATASET_SCHEMA.append(pa.field("render_s", pa.float64()))
    monkeypatch.setattr(folders, "DATASET_SCHEMA", schema)
    monkeypatch.setattr(dataset, "DATASET_SCHEMA", schema)
    row = dataset_row(_manifest_rows()[0], _status_rows()[0], b"fLaC", "train", __version__)
    assert row["render_s"] == 3.25 and list(row) == schema.names
    assert dataset.dataset_features()["render_s"].dtype == "float64"
