"""`convert`: rewrite an SAE folder (monoscope, SAELens or sparsify) as any of the three."""

from __future__ import annotations

from pathlib import Path

from monoscope.sae.checksums import CHECKSUMS_FILE
from monoscope.sae.files import FORMAT_FILES
from monoscope.sae.io import load_sae
from monoscope.sae.saelens import export_saelens
from monoscope.sae.sparsify import export_sparsify

TARGETS = ("monoscope", "saelens", "sparsify")


def convert(
    src: str | Path, to: str, out: str | Path, overwrite: bool = False, verify: bool | None = None
) -> Path:
    """Load the SAE in `src` (format detected) and write it to `out` in format `to`, with
    checksums. `src` is verified (`verify` as in `load_sae`): damage is refused, not copied.

    Reconstructions are unchanged (see saelens.py for what an SAELens export folds into the
    weights). A folder `out` that already has files is refused unless `overwrite`; then the SAE
    files of every known format there are replaced, so the folder holds one SAE.
    """
    if to not in TARGETS:
        raise ValueError(f"cannot convert to {to!r}; choose one of {', '.join(TARGETS)}")
    src, out = Path(src), Path(out)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ValueError(f"{out} is the source folder: write the conversion to another folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        names = sorted(p.name for p in out.iterdir())
        raise FileExistsError(
            f"{out} already has files ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
            ": choose an empty folder, or pass --overwrite to replace them"
        )
    sae = load_sae(src, verify=verify)
    if overwrite and out.is_dir():
        # The SAE files of every format, and the training log of the SAE they held: nothing
        # stale beside the new one. An unfinished run's checkpoint and log are left alone.
        stale = [name for files in FORMAT_FILES.values() for name in files] + [CHECKSUMS_FILE]
        if not (out / "checkpoint.json").exists():
            stale.append("train_log.jsonl")
        for name in stale:
            (out / name).unlink(missing_ok=True)
    if to == "monoscope":
        sae.save(out)
    elif to == "saelens":
        export_saelens(sae, out)
    else:
        export_sparsify(sae, out)
    return out
