"""Recording written shards: in the manifest (one process), or each in its own entry file
(several processes write shards at once; only process 0 writes the manifest, and it folds the
entries in). On every open, entries that continue the manifest are folded in, entries that fit
the plan are kept for the processes to skip (or dropped, in a world of one: redone), and files
that no record names (a crash between a write and its record) are removed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from monoscope.artifacts import CorruptFileError, read_sealed_json, write_sealed_json
from monoscope.harvest.forward import MadeShard
from monoscope.harvest.plan import PlannedShard
from monoscope.harvest.shards import CorruptShardError, check_shard_file, shard_name, write_shard
from monoscope.harvest.store import MANIFEST

ENTRY_SUFFIX = ".entry.json"


def entry_name(index: int) -> str:
    """Entry file of shard `index` (written after the shard, by the process that made it)."""
    return shard_name(index).removesuffix(".safetensors") + ENTRY_SUFFIX


def write_made_shard(folder: Path, made: MadeShard) -> dict[str, Any]:
    """Write the shard file; returns its manifest entry."""
    entry = write_shard(folder / shard_name(made.plan.index), made.tensors)
    entry["first_context"] = made.plan.first_context
    entry["n_contexts"] = made.n_contexts
    entry["norm_sums"] = made.norm_sums
    return entry


def record_in_manifest(folder: Path, manifest: dict[str, Any], made: MadeShard) -> None:
    """Write the shard, then the manifest that lists it (the shards are made in order)."""
    _append(manifest, write_made_shard(folder, made))
    write_sealed_json(folder / MANIFEST, manifest)


def record_in_entry_file(folder: Path, made: MadeShard) -> None:
    """Write the shard, then its entry file."""
    entry = write_made_shard(folder, made)
    write_sealed_json(folder / entry_name(made.plan.index), entry)


def _append(manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    manifest["shards"].append(entry)
    manifest["tokens"] += entry["tokens"]
    manifest["contexts"] += entry["n_contexts"]
    for site, info in manifest["sites"].items():
        total = sum(s["norm_sums"][site] for s in manifest["shards"])
        info["mean_norm"] = total / manifest["tokens"]


def settle_entries(
    folder: Path,
    manifest: dict[str, Any],
    plan: list[PlannedShard],
    keep_pending: bool,
    checksums: bool,
) -> set[int]:
    """Fold the entries of `plan`'s first shards into `manifest` (rewritten if any), and return
    the indices of the other planned shards whose entries are kept (none unless keep_pending).
    Every other entry, unlisted shard and temporary file in `folder` is removed."""
    written = {s.index: e for s in plan if (e := _planned_entry(folder, s, checksums))}
    folded = 0
    while folded < len(plan) and plan[folded].index in written:
        _append(manifest, written.pop(plan[folded].index))
        folded += 1
    if folded:
        write_sealed_json(folder / MANIFEST, manifest)
    pending = set(written) if keep_pending else set()
    _remove_unrecorded_files(folder, manifest, pending)
    return pending


def _planned_entry(folder: Path, shard: PlannedShard, checksums: bool) -> dict[str, Any] | None:
    """The entry of planned `shard`, if it was written whole and as planned; a damaged one is
    set aside with a warning (the shard is harvested again: it is not in the store yet)."""
    path = folder / entry_name(shard.index)
    if not path.exists():
        return None
    try:
        entry = read_sealed_json(path)
        planned = (entry["file"], entry["first_context"], entry["tokens"]) == (
            shard_name(shard.index),
            shard.first_context,
            shard.rows,
        )
        if planned:
            check_shard_file(folder / entry["file"], entry, checksums)
    except (CorruptFileError, CorruptShardError, KeyError, TypeError) as err:
        print(f"warning: {err}; shard {shard.index} will be harvested again", file=sys.stderr)
        return None
    return entry if planned else None


def _remove_unrecorded_files(folder: Path, manifest: dict[str, Any], pending: set[int]) -> None:
    """Drop temp files, entries and shards that neither the manifest nor `pending` names."""
    keep = {s["file"] for s in manifest["shards"]}
    keep |= {name for i in pending for name in (shard_name(i), entry_name(i))}
    for f in folder.iterdir():
        if f.name.endswith(".tmp") or (f.name.startswith("shard-") and f.name not in keep):
            f.unlink()
