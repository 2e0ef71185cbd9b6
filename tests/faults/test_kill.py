"""kill -9 at seeded random points of harvest, train and analyze: the rerun completes, and what
it leaves equals an uninterrupted run's, byte for byte or row for row (timings aside), with no
debris.

Each command runs as a child process, as a user runs it. A kill point is drawn from a fixed seed:
a count of progress marks on disk (shards written, steps logged, progress checkpoints), then a
few milliseconds more, so that kills land between and inside those writes; wall-clock fractions
would not do, a run's speed varies tenfold on a shared machine. Each command is also killed
inside an atomic file write (its temporary file on disk), and analyze inside a write transaction
(its rollback journal on disk). The child is stopped (SIGSTOP) before the SIGKILL, so that the
test can check that the kill lands where it should: the command has not reported success, and
the write or transaction is still under way."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

CLI = "import sys; from monoscope.cli import main; sys.exit(main(sys.argv[1:]))"
SLOW_FSYNC_CLI = (
    "import os, time; fsync = os.fsync; os.fsync = lambda fd: (time.sleep(0.03), fsync(fd))[1]; "
    + CLI
)
"""The command with every fsync 30 ms late, for the kills inside an atomic write: a small file's
write otherwise ends in microseconds, and a run could finish between two polls (seen in CI). The
temporary file, whole but not yet renamed, lives that much longer; what is written is the same."""
DONE = {"harvest": "wrote ", "train": "trained ", "analyze": "wrote the feature store"}
"""The line each command prints once its work is done (children run unbuffered)."""
SEEDS = (0, 3)
POLL_S = 0.002
TIMEOUT_S = 180


class Child:
    """One `monoscope` command in a child process, its output in a log file beside `cwd`."""

    def __init__(self, args: list[str], cwd: Path, slow_fsync: bool = False) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.command, self.log = args[0], cwd / f"{args[0]}-{time.monotonic_ns()}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", "-c", SLOW_FSYNC_CLI if slow_fsync else CLI, *args],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.deadline = time.monotonic() + TIMEOUT_S

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{self.command} exited ({self.proc.returncode}) before {what}:\n"
                    f"{self.output()}"
                )
            if time.monotonic() > self.deadline:
                self.proc.kill()
                pytest.fail(f"{self.command}: no {what} within {TIMEOUT_S} s")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Freeze the child (what it has written stays as it is) while it is checked."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL the stopped child, which must not have finished its work."""
        finished = DONE[self.command] in self.output()
        os.kill(self.proc.pid, signal.SIGKILL)
        returncode = self.proc.wait(timeout=30)
        assert not finished, f"the kill point came after {self.command} finished"
        assert returncode == -signal.SIGKILL

    def finish(self) -> None:
        try:
            returncode = self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.command} did not finish within {TIMEOUT_S} s")
        assert returncode == 0, f"{self.command} failed ({returncode}):\n{self.output()}"


def run_to_end(args: list[str], out: Path) -> Path:
    Child(args, out.parent).finish()
    return out


@dataclass
class KillPoint:
    marks: int
    """Progress marks on disk to wait for."""
    extra_s: float
    """Then this many seconds more."""


def kill_point(command: str, seed: int, most_marks: int) -> KillPoint:
    rng = random.Random(f"{command}-{seed}")
    return KillPoint(rng.randint(1, most_marks), rng.uniform(0.0, 0.01))


def kill_at(
    args: list[str],
    out: Path,
    marks: Callable[[], int],
    point: KillPoint,
    inside: Callable[[], bool] = lambda: True,
    lasting_s: float = 0.0,
    slow_fsync: bool = False,
) -> None:
    """Run `args` and SIGKILL it after the kill point, at the first moment `inside()` has held
    for `lasting_s` (checked again while the child is stopped: it holds at the kill); with
    `slow_fsync`, as `SLOW_FSYNC_CLI`."""
    child = Child(args, out.parent, slow_fsync)
    child.wait_for(lambda: marks() >= point.marks, f"{point.marks} progress marks")
    time.sleep(point.extra_s)
    while True:
        child.wait_for(inside, "the kill's moment")
        began = time.monotonic()
        while inside() and time.monotonic() - began < lasting_s:
            time.sleep(POLL_S)
        child.stop()
        if inside():
            break
        os.kill(child.proc.pid, signal.SIGCONT)  # it moved on in between: wait for the next
    child.kill()


def writing_a_file(folder: Path) -> Callable[[], bool]:
    """Whether an atomic write is under way in `folder` (its temporary file exists)."""
    return lambda: folder.is_dir() and any(p.name.endswith(".tmp") for p in folder.iterdir())


def in_a_transaction(db: Path) -> Callable[[], bool]:
    """Whether a write transaction on `db` is open (its rollback journal exists)."""
    return db.with_name(db.name + "-journal").exists


# harvest ---------------------------------------------------------------------------------


def harvest_args(model: Path, corpus: Path, out: Path) -> list[str]:
    """8 shards (7 of 420 rows, one of 60), each 7 forward batches."""
    return [
        "harvest",
        *("--model", str(model), "--site", "blocks.1.hook_resid_post"),
        *("--corpus", str(corpus), "--tokens", "3000", "--out", str(out)),
        *("--context", "16", "--batch-tokens", "64", "--shard-tokens", "400", "--no-progress"),
    ]


@pytest.fixture(scope="module")
def harvested(tiny_model_dir, corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("harvest_ref") / "acts"
    return run_to_end(harvest_args(tiny_model_dir, corpus_file, out), out)


def shard_files(out: Path) -> Callable[[], int]:
    """Shard files in `out`, temporary ones included: a kill comes in or after the k-th write."""
    return lambda: len(list(out.glob("*shard-*"))) if out.is_dir() else 0


def assert_same_store(got: Path, want: Path) -> None:
    """The same files (no debris), shards byte for byte, manifests equal but for the timing
    (a rerun that reads the store checks its manifest)."""
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    for shard in sorted(want.glob("shard-*.safetensors")):
        assert (got / shard.name).read_bytes() == shard.read_bytes(), shard.name
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (got, want)]
    for m in manifests:
        assert m.pop("seconds") >= 0 and m["complete"]
        m.pop("checksum", None)  # the manifest's seal over its own contents, timing included
    assert manifests[0] == manifests[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_harvest_reruns_to_the_same_shards(
    harvested, tiny_model_dir, corpus_file, tmp_path, seed
):
    out = tmp_path / "acts"
    args = harvest_args(tiny_model_dir, corpus_file, out)
    kill_at(args, out, shard_files(out), kill_point("harvest", seed, 6))
    run_to_end(args, out)
    assert_same_store(out, harvested)


def test_harvest_killed_inside_a_file_write_reruns_to_the_same_shards(
    harvested, tiny_model_dir, corpus_file, tmp_path
):
    out = tmp_path / "acts"
    args = harvest_args(tiny_model_dir, corpus_file, out)
    point = kill_point("harvest-write", 0, 5)
    kill_at(args, out, shard_files(out), point, writing_a_file(out), slow_fsync=True)
    run_to_end(args, out)
    assert_same_store(out, harvested)


# train -----------------------------------------------------------------------------------


def train_args(acts: Path, out: Path) -> list[str]:
    """30 steps, a checkpoint every 4."""
    return [
        "train",
        *("--acts", str(acts), "--out", str(out), "--arch", "topk", "--features", "4x"),
        *("--k", "4", "--batch-size", "64", "--tokens", str(64 * 30), "--dead-window", "512"),
        *("--checkpoint-every", "4", "--log-every", "1", "--no-progress"),
    ]


@pytest.fixture(scope="module")
def trained(harvested, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_ref") / "sae"
    return run_to_end(train_args(harvested, out), out)


def steps_logged(out: Path) -> Callable[[], int]:
    log = out / "train_log.jsonl"
    return lambda: log.read_text().count("\n") if log.exists() else 0


TIMING_KEYS = ("tokens_per_s", "seconds")


def log_rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_same_sae(got: Path, want: Path) -> None:
    """The same files (no checkpoint left), weights byte for byte, the same log of every step."""
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    assert (got / "weights.safetensors").read_bytes() == (want / "weights.safetensors").read_bytes()
    for name in ("config.json", "checksums.json"):
        assert json.loads((got / name).read_text()) == json.loads((want / name).read_text()), name
    assert log_rows(got) == log_rows(want)


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_train_reruns_to_the_same_weights(harvested, trained, tmp_path, seed):
    out = tmp_path / "sae"
    args = train_args(harvested, out)
    kill_at(args, out, steps_logged(out), kill_point("train", seed, 25))
    run_to_end(args, out)
    assert_same_sae(out, trained)


def test_train_killed_inside_a_file_write_reruns_to_the_same_sae(harvested, trained, tmp_path):
    out = tmp_path / "sae"
    args = train_args(harvested, out)
    point = kill_point("train-write", 0, 20)
    kill_at(args, out, steps_logged(out), point, writing_a_file(out), slow_fsync=True)
    run_to_end(args, out)
    assert_same_sae(out, trained)


# analyze ---------------------------------------------------------------------------------


def analyze_args(sae: Path, acts: Path, out: Path) -> list[str]:
    """47 batches, a progress checkpoint (and a transaction) every 3: 15 checkpoints."""
    return [
        "analyze",
        *("--sae", str(sae), "--acts", str(acts), "--out", str(out)),
        *("--batch-size", "64", "--checkpoint-every", "3", "--no-map", "--no-progress"),
    ]


@pytest.fixture(scope="module")
def analyzed(harvested, trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analyze_ref") / "features.db"
    return run_to_end(analyze_args(trained, harvested, out), out)


def checkpoints_written(db: Path) -> Callable[[], int]:
    """Versions of the progress file seen (each checkpoint replaces it with a new file)."""
    progress, seen = db.with_name(db.name + ".progress.safetensors"), set()

    def count() -> int:
        with contextlib.suppress(FileNotFoundError):
            st = progress.stat()
            seen.add((st.st_ino, st.st_mtime_ns))
        return len(seen)

    return count


UNTIMED_META = ("created_at", "seconds")


def store_contents(db: Path) -> dict[str, list[tuple]]:
    """Every table's rows in a canonical order; the meta table without its timings."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        contents = {}
        for table in tables:
            width = len(conn.execute(f"SELECT * FROM {table} LIMIT 0").description)
            order = ", ".join(str(i) for i in range(1, width + 1))
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            if table == "meta":
                rows = [r for r in rows if r[0] not in UNTIMED_META]
            contents[table] = rows
        return contents
    finally:
        conn.close()


def assert_same_feature_store(got: Path, want: Path) -> None:
    """No journal or progress file left; every table row for row (timings aside)."""
    assert sorted(p.name for p in got.parent.iterdir() if p.suffix != ".log") == [got.name]
    mine, theirs = store_contents(got), store_contents(want)
    assert list(mine) == list(theirs)
    for table, rows in theirs.items():
        assert len(mine[table]) == len(rows), table
        for row, expected in zip(mine[table], rows, strict=True):
            assert row == expected, table


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_analyze_reruns_to_the_same_feature_store(
    harvested, trained, analyzed, tmp_path, seed
):
    out = tmp_path / "features.db"
    args = analyze_args(trained, harvested, out)
    kill_at(args, out, checkpoints_written(out), kill_point("analyze", seed, 10))
    run_to_end(args, out)
    assert_same_feature_store(out, analyzed)


def test_analyze_killed_inside_a_file_write_reruns_to_the_same_feature_store(
    harvested, trained, analyzed, tmp_path
):
    """Inside the atomic write of a progress checkpoint (its temporary file beside the store)."""
    out = tmp_path / "features.db"
    args = analyze_args(trained, harvested, out)
    point = kill_point("analyze-write", 0, 10)
    kill_at(args, out, checkpoints_written(out), point, writing_a_file(out.parent), slow_fsync=True)
    run_to_end(args, out)
    assert_same_feature_store(out, analyzed)


@pytest.mark.parametrize(
    "lasting_s", [0.0, 0.03], ids=["a-checkpoint-transaction", "the-final-transaction"]
)
def test_analyze_killed_in_a_transaction_reruns_to_the_same_feature_store(
    harvested, trained, analyzed, tmp_path, lasting_s
):
    """A progress checkpoint's transaction takes a millisecond, the final one (every table,
    the examples' windows read as they are written) far longer: one open for 30 ms is, after
    the 12th of 15 checkpoints, the final one in practice. The rerun rolls the journal back."""
    out = tmp_path / "features.db"
    args = analyze_args(trained, harvested, out)
    point = kill_point("analyze-journal", 1, 10) if not lasting_s else KillPoint(12, 0.0)
    kill_at(args, out, checkpoints_written(out), point, in_a_transaction(out), lasting_s)
    run_to_end(args, out)
    assert_same_feature_store(out, analyzed)
