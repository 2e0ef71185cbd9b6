"""What every report plot shares: matplotlib present (an optional extra, checked before the
work it illustrates) and a figure saved as a PNG atomically. Figures are built with
matplotlib.figure.Figure, never pyplot: no GUI backend and no process-wide state."""

from __future__ import annotations

import io
from pathlib import Path

from monoscope.artifacts import atomic_write_bytes


def require_matplotlib(what: str, opt_out: str) -> None:
    """ImportError naming the extra when matplotlib is missing: `what` needs it, `opt_out` is
    the flag that goes without."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{what} need(s) matplotlib: pip install 'monoscope[plots]' (or {opt_out})"
        ) from None


def save_png(fig, path: Path) -> None:
    """Write `fig` to `path` as a PNG (120 dpi, tight), atomically, creating its folder."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
