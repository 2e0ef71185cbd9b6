"""Peak resident memory of one `monoscope` CLI run in a fresh process, shared by benchmarks.

`/usr/bin/time -v` when present (counts the whole process tree); otherwise the child reports
its own getrusage maximum. Run from the repo root's benchmarks/ (as `python benchmarks/X.py`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GNU_TIME = "/usr/bin/time"
_RSS_WRAPPER = (
    "import resource, sys\n"
    "from monoscope.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(f'PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def how_measured() -> str:
    return "/usr/bin/time -v" if Path(GNU_TIME).exists() else "in-process getrusage"


def peak_rss(cli: list[str]) -> tuple[int, float]:
    """Run `monoscope *cli`; (peak RSS in KiB, wall seconds). RuntimeError if it fails."""
    if Path(GNU_TIME).exists():
        cmd = [GNU_TIME, "-v", sys.executable, "-m", "monoscope.cli", *cli]
        pattern = r"Maximum resident set size \(kbytes\):\s*(\d+)"
    else:
        cmd = [sys.executable, "-c", _RSS_WRAPPER, *cli]
        pattern = r"PEAK_RSS_KB (\d+)"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    match = re.search(pattern, proc.stderr)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(
            f"`monoscope {cli[0]}` failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return int(match.group(1)), wall
