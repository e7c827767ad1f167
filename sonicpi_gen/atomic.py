"""All-or-nothing output folders: build under a temporary name, then swap into place."""

from __future__ import annotations

import shutil
from pathlib import Path


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target`, replacing what was there.

    Both live in the same parent folder, so each step is a rename: at every moment
    `target` is either the old complete folder or the new complete one.
    """
    if target.exists():
        old = target.with_name(f".{target.name}.old-{new.name.rsplit('-', 1)[-1]}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)
