"""The run's output folder: made ready for a new or resumed run, and removed again if the run
fails before anything in it could be resumed."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from monoscope.artifacts import remove_write_debris
from monoscope.folders import first_missing, remove_empty_folders
from monoscope.sae.files import formats_in
from monoscope.train.checkpoint import POINTER

RUN_MARKS = (POINTER, "train_log.jsonl")
"""Files that make a folder a training run (with a trained SAE's files, `formats_in`)."""


def prepare_out(out: Path, overwrite: bool) -> None:
    """Make `out` ready: refused if it is a file or a folder monoscope did not write, or if
    it holds a trained SAE (unless `overwrite`); emptied for `overwrite`."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    held = formats_in(out) if out.is_dir() else []
    foreign = out.is_dir() and not held and not any((out / m).exists() for m in RUN_MARKS)
    if foreign and any(out.iterdir()):
        # Not even --overwrite: it would delete a folder monoscope did not write.
        found = sorted(p.name for p in out.iterdir())
        names = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise FileExistsError(
            f"{out} exists and is not a training run this monoscope writes (it holds {names}, "
            f"and no {POINTER} or trained SAE); choose another --out, or a new or empty folder"
        )
    if held and not (out / POINTER).exists():
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a trained SAE ({', '.join(held)} format): "
                "pass --overwrite to replace it"
            )
        shutil.rmtree(out)
    elif overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_write_debris(out)  # a run killed inside an atomic write leaves its temp file


@contextlib.contextmanager
def removed_if_failed_early(out: Path) -> Iterator[None]:
    """If the body fails before a checkpoint or the SAE is written to `out`, and `out` is a
    folder this run created, remove it (and the parents it created): nothing in it could be
    resumed. A folder that existed before the run is left as it is."""
    created = first_missing(out)
    try:
        yield
    except BaseException:
        kept = (out / POINTER).exists() or formats_in(out)
        if created is not None and out.is_dir() and not kept:
            shutil.rmtree(out, ignore_errors=True)  # the error that got us here matters more
            remove_empty_folders(out.parent, created)
        raise
