"""The renders folder without a server: input rows, the journal, the lock, resume checks."""

import json

import pytest

import renderer.render as render
from renderer.render import (Job, RenderError, _hold_output, _remove_partial_writes, is_done,
                             load_jobs, read_status, status_key)
from sonicpi_gen import folders


def test_every_input_file_gets_a_row_duplicates_and_bad_encodings_named(tmp_path):
    (tmp_path / "a.rb").write_text("play 60\n")
    (tmp_path / "b.rb").write_text("play 60\n")
    (tmp_path / "c.rb").write_bytes(b"play 60 # \xff\xfe\n")
    jobs, rejected = load_jobs(tmp_path)
    assert [j.source for j in jobs] == ["a.rb"]
    assert {r["source"]: r["status"] for r in rejected} == {"b.rb": "duplicate", "c.rb": "unreadable"}
    duplicate = next(r for r in rejected if r["status"] == "duplicate")
    assert duplicate["message"] == f"same text as a.rb, rendered once as {jobs[0].id}"
    assert "byte 0xff at offset 10" in next(r for r in rejected if r["status"] == "unreadable")["message"]
    assert status_key(duplicate) == "source:b.rb" and status_key({"status": "ok", "id": "x"}) == "x"


def test_a_journal_line_that_is_not_a_row_is_skipped_with_a_warning(tmp_path, caplog):
    row = {name: None for name in folders.STATUS_SCHEMA.names}
    row.update(id="abc", template="t", status="ok")
    (tmp_path / "status.jsonl").write_bytes(b"\xff\xfe\n" + json.dumps(row).encode() + b"\n[1, 2]\n{\"id\"")
    rows = read_status(tmp_path)
    assert list(rows) == ["abc"]
    assert [r.getMessage().split(", line ")[1].split(":")[0] for r in caplog.records] == ["1", "3", "4"]


def test_a_finished_clip_counts_only_with_its_recorded_hash(tmp_path):
    job = Job("abc", "t", "play 60")
    clip = tmp_path / "t" / "abc.flac"
    clip.parent.mkdir()
    clip.write_bytes(b"audio")
    import hashlib
    row = {"status": "ok", "code_sha256": job.code_sha256, "path": "t/abc.flac",
           "audio_sha256": hashlib.sha256(b"audio").hexdigest()}
    assert is_done(job, row, tmp_path)
    clip.write_bytes(b"audi")  # cut short
    assert not is_done(job, row, tmp_path)
    clip.unlink()
    assert not is_done(job, row, tmp_path)
    assert not is_done(Job("abc", "t", "play 61"), {**row, "status": "silent"}, tmp_path)  # other text
    assert is_done(job, {**row, "status": "silent", "path": None}, tmp_path)


def test_one_render_holds_an_output_folder_and_a_second_is_refused(tmp_path):
    lock = _hold_output(tmp_path)
    with pytest.raises(RenderError, match=r"still running \(pid \d+\)"):
        _hold_output(tmp_path)
    lock.close()
    _hold_output(tmp_path).close()  # free again


def test_half_written_files_of_a_killed_render_are_removed(tmp_path):
    (tmp_path / "t").mkdir()
    for name in (".status.parquet.tmp-123", "t/.abc.flac.tmp-9", ".provenance.json.tmp-4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "t" / "abc.flac").write_bytes(b"kept")
    _remove_partial_writes(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["t", "t/abc.flac"]


def test_an_output_folder_that_cannot_be_written_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "a.rb").write_text("play 60\n")

    def refuse(out_dir):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(render, "_hold_output", refuse)
    with pytest.raises(RenderError, match="cannot write to .*Permission denied.*choose an --out"):
        render.render_programs(tmp_path / "programs", tmp_path / "out", progress=False)


def test_a_plain_folder_gets_a_manifest_of_its_files_and_a_second_render_unions_it(tmp_path):
    """A folder of .rb files has no manifest: the renders folder gets one made from its
    files (no groups), and rendering another plain folder into it keeps both."""
    from renderer.render import merge_manifest
    from sonicpi_gen.folders import read_manifest

    out = tmp_path / "renders"
    out.mkdir()
    for name, code in (("one", "play 60\n"), ("two", "play 62\n")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{name}.rb").write_text(code)
        jobs, rejected = load_jobs(folder)
        assert not rejected
        merge_manifest(folder, jobs, out)
    rows = read_manifest(out).to_pylist()
    assert sorted((r["code"], r["template"], r["group_id"], r["source"]) for r in rows) == [
        ("play 60\n", "user", None, "one.rb"), ("play 62\n", "user", None, "two.rb")]
