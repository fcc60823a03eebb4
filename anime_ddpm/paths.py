"""Whether a path can take what we are about to write there, asked before the work that would fill it starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def why_not_writable(folder: str | os.PathLike) -> str | None:
    """None when `folder` is, or can be created as, a folder that accepts new files; else why not, in a few words.

    Asked of the nearest part of the path that exists, by creating a file there: permission bits alone do not say
    what root on a read-only file system may do.
    """
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            return None
    except OSError:
        return f"the folder {existing} does not accept new files"
