"""The folders a run creates for its output, and removing them again when it fails: a run
refused before it wrote anything worth keeping leaves no empty folder behind, and never
removes one that existed before it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist (the first folder a
    `mkdir(parents=True)` of `path` creates), as an absolute path; None if `path` exists."""
    missing = None
    absolute = Path(os.path.abspath(path))
    for folder in (absolute, *absolute.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def remove_empty_folders(folder: Path, top: Path) -> None:
    """Remove `folder`, then its parents up to `top` (`folder` or one of its parents), each
    only while it is empty: what another process put there since stays, with its parents."""
    absolute = Path(os.path.abspath(folder))
    for path in (absolute, *absolute.parents):
        try:
            path.rmdir()
        except OSError:  # not empty, or already gone
            return
        if path == top:
            return


@contextlib.contextmanager
def made_folder(folder: Path) -> Iterator[None]:
    """Make `folder` (and its missing parents) for the body; if the body fails, remove the
    ones this call created that it left empty."""
    created = first_missing(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created is not None:
            remove_empty_folders(folder, created)
        raise
