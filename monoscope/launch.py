"""`monoscope train --nproc N`: the same command, started in N processes by torchrun.

torchrun (torch.distributed.run) sets each process's rank and world size and restarts nothing:
a process that dies ends the job, and the same command run again resumes from the last
checkpoint. --nproc itself is left out of the processes' arguments: torchrun's own parser
would read it as an abbreviation of its --nproc-per-node.
"""

from __future__ import annotations

import subprocess
import sys


def without_nproc(argv: list[str]) -> list[str]:
    """`argv` without its --nproc option (`--nproc N` or `--nproc=N`)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def torchrun(nproc: int, argv: list[str]) -> None:
    """Run `monoscope <argv>` in `nproc` processes on this machine; a RuntimeError when any
    of them fails (their own messages are printed above it)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one machine: a free local port for the processes to meet at
        f"--nproc-per-node={nproc}",
        "-m",
        "monoscope",
        *without_nproc(argv),
    ]
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise RuntimeError(
            f"{nproc} processes started by torchrun ended with exit code {code} (see above); "
            "the same command resumes from the last checkpoint"
        )
