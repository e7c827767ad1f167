"""Shared test helpers: tiny template folders made inside the test."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from sonicpi_gen.grammar import TEMPLATES_DIR

TINY_TOML = """
title = "Tiny"
description = "A test template."

[slots.seed]
type = "int"
role = "seed"
part = "global"
min = 0
max = 99

[slots.lead]
type = "synth"
part = "melody"
choices = ["tb303", "saw"]

[slots.amp]
type = "float"
role = "amp"
part = "melody"
min = 0.5
max = 1.0
step = 0.1

[slots.beat]
type = "choice"
role = "sleep"
part = "drum"
choices = [0.5, 1]

[slots.cutoff]
type = "int"
role = "cutoff"
part = "bass"
min = 60
max = 100
step = 10
option = "cutoff"
of = "lead"
"""

TINY_J2 = """use_random_seed {{ seed }}
live_loop :lead do
  use_synth :{{ lead }}
  play 60, amp: {{ amp }}, cutoff: {{ cutoff }}
  sleep {{ beat }}
end
"""


@pytest.fixture
def tiny_templates(tmp_path: Path) -> Path:
    """A templates folder holding one small valid template, `tiny`."""
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "tiny.toml").write_text(textwrap.dedent(TINY_TOML))
    (folder / "tiny.rb.j2").write_text(TINY_J2)
    return folder


@pytest.fixture
def copy_of_templates(tmp_path: Path) -> Path:
    folder = tmp_path / "all-templates"
    shutil.copytree(TEMPLATES_DIR, folder)
    return folder
