"""`--features`: which features an interpret command works on.

ids and ranges (`0:200,512`), `random:N` (a seeded sample of the features that fired), and
`top-density:N` (the N most frequently firing). Parts combine with commas, in order, without
repeats.
"""

from __future__ import annotations

import random
import re
import sqlite3

_RANGE = re.compile(r"^(\d+)(?::(\d+))?$")
_NAMED = re.compile(r"^(random|top-density):(\d+)$")


def select_features(conn: sqlite3.Connection, spec: str, seed: int = 0) -> list[int]:
    """Feature ids named by `spec`, in the order named; ValueError naming the bad part."""
    (n_features,) = conn.execute("SELECT COUNT(*) FROM features").fetchone()
    chosen: dict[int, None] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        for fid in _part_ids(conn, part, n_features, seed):
            chosen.setdefault(fid, None)
    if not chosen:
        raise ValueError(f"--features {spec!r} names no feature")
    return list(chosen)


def _part_ids(conn: sqlite3.Connection, part: str, n_features: int, seed: int) -> list[int]:
    if match := _RANGE.match(part):
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start + 1
        if stop <= start or start >= n_features:
            raise ValueError(
                f"--features {part!r}: the store has features 0 to {n_features - 1}"
                + (" (a range is start:stop, stop excluded)" if stop <= start else "")
            )
        return list(range(start, min(stop, n_features)))
    if match := _NAMED.match(part):
        kind, n = match.group(1), int(match.group(2))
        if kind == "top-density":
            rows = conn.execute("SELECT id FROM features ORDER BY density DESC, id LIMIT ?", (n,))
            return [fid for (fid,) in rows]
        alive = [fid for (fid,) in conn.execute("SELECT id FROM features WHERE n_fired > 0")]
        return sorted(random.Random(seed).sample(alive, min(n, len(alive))))
    raise ValueError(
        f"--features: cannot read {part!r} (ids and ranges such as 0:200,512, random:N, "
        "top-density:N)"
    )
