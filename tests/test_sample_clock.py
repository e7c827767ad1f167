"""scsynth's sample clock (renderer/sample_clock.c): built on demand, errors that say what to do.

That it holds scsynth's loop to its samples is tested against the real server in
tests/test_render.py."""

import ctypes
import shutil

import pytest

import renderer.sample_clock as server_module
from renderer.sample_clock import SampleClockError, sample_clock_library


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(server_module, "SAMPLE_CLOCK_CACHE", tmp_path / "cache")
    sample_clock_library.cache_clear()
    yield tmp_path / "cache"
    sample_clock_library.cache_clear()


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler "
                    "(scripts/setup.sh installs gcc)")
def test_the_sample_clock_is_built_once_per_source_version_and_exports_its_hooks(fresh_cache):
    library = sample_clock_library()
    assert library.parent == fresh_cache and library.name.startswith("sample-clock-")
    built_at = library.stat().st_mtime_ns
    sample_clock_library.cache_clear()
    assert sample_clock_library() == library and library.stat().st_mtime_ns == built_at
    assert [p.name for p in fresh_cache.iterdir()] == [library.name]  # no partial builds left
    hooks = ctypes.CDLL(str(library))  # loaded here, it interposes nothing
    for name in ("clock_gettime", "jack_activate", "jack_set_process_callback",
                 "jack_set_buffer_size_callback", "jack_set_sample_rate_callback",
                 "jack_set_xrun_callback"):
        assert hasattr(hooks, name), name


def test_without_a_compiler_the_error_says_what_to_install(fresh_cache, monkeypatch):
    monkeypatch.setattr(server_module.shutil, "which", lambda name: None)
    with pytest.raises(SampleClockError, match="apt-get install gcc libc6-dev"):
        sample_clock_library()


def test_a_build_that_fails_names_the_source_and_the_compiler_message(fresh_cache, tmp_path, monkeypatch):
    broken = tmp_path / "sample_clock.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(server_module, "SAMPLE_CLOCK_SOURCE", broken)
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    with pytest.raises(SampleClockError, match=r"could not build .*sample_clock\.c(.|\n)*error"):
        sample_clock_library()
    assert not list(fresh_cache.iterdir())
