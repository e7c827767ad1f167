"""scsynth's sample clock (renderer/sample_clock.c) as a shared library, built on demand."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

SAMPLE_CLOCK_SOURCE = Path(__file__).with_name("sample_clock.c")
# built once per source version, into the user's cache, with the system's C compiler
SAMPLE_CLOCK_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sonicpi-gen"


class SampleClockError(RuntimeError):
    """The sample clock could not be built."""


@functools.lru_cache(maxsize=1)
def sample_clock_library() -> Path:
    """scsynth's sample clock as a shared library, built from SAMPLE_CLOCK_SOURCE the
    first time a version of it is needed."""
    source = SAMPLE_CLOCK_SOURCE.read_bytes()
    library = SAMPLE_CLOCK_CACHE / f"sample-clock-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if library.exists():
        return library
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SampleClockError("building scsynth's sample clock needs a C compiler: apt-get install "
                               "gcc libc6-dev (scripts/setup.sh installs them)")
    library.parent.mkdir(parents=True, exist_ok=True)
    # servers boot side by side: each builds under its own name, the rename is atomic
    partial = library.with_name(f"{library.name}.{os.getpid()}-{threading.get_ident()}")
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial),
                            str(SAMPLE_CLOCK_SOURCE), "-ldl", "-lpthread"],
                           capture_output=True, text=True)
    if built.returncode:
        partial.unlink(missing_ok=True)
        raise SampleClockError(f"could not build scsynth's sample clock from {SAMPLE_CLOCK_SOURCE} "
                               f"with {compiler}:\n{built.stderr.strip()[-800:]}")
    os.replace(partial, library)
    return library
