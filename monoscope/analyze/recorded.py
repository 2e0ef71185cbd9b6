"""Finding the folders a feature store recorded (its SAE, its activation store) after the run
folder was moved, copied or is read from another working directory.

One rule for every stage that goes back to them (serve's steering, hard negatives,
compare-neurons): the folder the user names, else the path as recorded, else that path taken
relative to the store's folder, else the folder of that name next to the store.
"""

from __future__ import annotations

from pathlib import Path


class RecordedFolderMissing(FileNotFoundError):
    """None of the places a recorded folder could be holds it."""


def locate(recorded: str | None, db: str | Path, what: str, option: str = "") -> Path:
    """The folder `recorded` (as written in the meta of feature store `db`), wherever it is now.

    `what` names it in the error ("SAE", "activation store"); `option` is the flag that names
    it explicitly, suggested when nothing is found.
    """
    db = Path(db)
    hint = f": pass {option} FOLDER" if option else ""
    if not recorded:
        raise RecordedFolderMissing(f"{db} records no {what} folder{hint}")
    path = Path(recorded)
    candidates = [path, db.parent / path, db.parent / path.name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RecordedFolderMissing(
        f"{db} was analysed with the {what} {recorded!r}, which is neither there nor next to "
        f"the store{hint}"
    )
