"""Issue 22, point 1: a feature-store writer SIGKILLed mid-transaction leaves a hot rollback
journal; analyze (resume), serve, export-site and interpret each open the store as of its last
commit, and a live writer's journal is left alone."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from monoscope.analyze import analyze
from monoscope.analyze.schema import journal_path, open_readonly, read_meta
from monoscope.cli import main
from monoscope.interpret.session import open_store
from monoscope.sae import SAEConfig, build_sae
from monoscope.serve import FeatureStore
from monoscope.testing import harvest_tiny

SITE = "blocks.1.hook_resid_post"
OPTIONS = dict(map=False, batch_size=200, progress=False)
FIRST = 10**6  # vocab ids the uncommitted transaction inserts (the real ones are below)

# Commits one change, then starts a transaction that empties the examples, marks the store
# incomplete and inserts enough rows to overflow a 2-page cache: SQLite then writes the
# uncommitted pages into the store file itself, and only the journal can undo them.
KILLED_WRITER = f"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA cache_size = 2")
with conn:
    conn.execute("UPDATE features SET explanation = 'committed' WHERE id = 0")
conn.execute("BEGIN")
conn.execute("DELETE FROM examples")
conn.execute("UPDATE meta SET value = 'false' WHERE key = 'complete'")
conn.executemany("INSERT INTO vocab VALUES (?, ?)", (({FIRST} + i, "x" * 500) for i in range(2000)))
print("written", flush=True)
time.sleep(60)
"""

# The same uncommitted change, small enough to stay in the cache (the writer holds the store's
# RESERVED lock, readers go on reading), committed when the parent says so.
LIVE_WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("BEGIN")
conn.execute("DELETE FROM examples")
conn.execute("UPDATE meta SET value = 'false' WHERE key = 'complete'")
print("written", flush=True)
sys.stdin.readline()
conn.commit()
"""


@pytest.fixture(scope="module")
def analysed(tiny_llama, corpus_file, tmp_path_factory):
    """(sae, store, db): a complete feature store written by `analyze` from a tiny store."""
    root = tmp_path_factory.mktemp("recovery")
    store = harvest_tiny(
        tiny_llama, corpus_file, root / "acts", SITE, batch_tokens=128, shard_tokens=600
    )
    sae = build_sae(SAEConfig(arch="topk", d_in=32, n_features=64, k=4, site=SITE), seed=0)
    db = analyze(sae.eval(), store, model=tiny_llama, out=root / "features.db", **OPTIONS)
    return sae, store, db


def counts(db: Path) -> dict:
    """What the tests change in a store, read through a read-only open."""
    conn = open_readonly(db)
    try:

        def one(sql: str):
            return conn.execute(sql).fetchone()[0]

        return {
            "examples": one("SELECT count(*) FROM examples"),
            "vocab": one("SELECT count(*) FROM vocab"),
            "complete": read_meta(conn)["complete"],
            "explanation": one("SELECT explanation FROM features WHERE id = 0"),
        }
    finally:
        conn.close()


def killed_mid_write(source: Path, db: Path) -> dict:
    """Copy `source` to `db`, have a child process commit one change to it and then die in
    the middle of a second transaction; returns what the store held at the last commit."""
    shutil.copy(source, db)
    before = counts(db)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "written\n"
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert journal_path(db).stat().st_size > 0
    # The uncommitted writes reached the file: without its journal the store is damaged.
    raw = sqlite3.connect(f"{db.resolve().as_uri()}?immutable=1", uri=True)
    assert raw.execute("SELECT count(*) FROM examples").fetchone() == (0,)
    raw.close()
    return {**before, "explanation": "committed"}


def open_with_analyze(analysed, tiny_llama, db: Path, capsys) -> None:
    sae, store, _ = analysed
    analyze(sae, store, model=tiny_llama, out=db, **OPTIONS)  # the resume path
    assert "already complete" in capsys.readouterr().err


def open_with_serve(analysed, tiny_llama, db: Path, capsys) -> None:
    assert FeatureStore(db).feature(0)["explanation"] == "committed"


def open_with_export_site(analysed, tiny_llama, db: Path, capsys) -> None:
    site = db.with_name("site")
    assert main(["export-site", str(db), "--out", str(site), "--similar", "0"]) == 0
    assert any("committed" in p.read_text() for p in (site / "data" / "features").iterdir())


def open_with_interpret(analysed, tiny_llama, db: Path, capsys) -> None:
    open_store(db).close()


@pytest.mark.parametrize(
    "opener", [open_with_analyze, open_with_serve, open_with_export_site, open_with_interpret]
)
def test_a_store_killed_mid_write_opens_as_of_its_last_commit(
    analysed, tiny_llama, tmp_path, capsys, opener
):
    db = tmp_path / "features.db"
    committed = killed_mid_write(analysed[2], db)
    opener(analysed, tiny_llama, db, capsys)
    assert not journal_path(db).exists()
    assert counts(db) == committed
    conn = open_readonly(db)
    assert conn.execute("SELECT count(*) FROM vocab WHERE id >= ?", (FIRST,)).fetchone() == (0,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_a_live_writers_journal_is_left_alone(analysed, tmp_path):
    db = tmp_path / "features.db"
    shutil.copy(analysed[2], db)
    before = counts(db)
    writer = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline() == "written\n"
        assert journal_path(db).exists()
        assert counts(db) == before  # readers see the last commit, the journal stays
        assert FeatureStore(db).n_features == 64
        assert journal_path(db).exists()
        writer.stdin.write("commit\n")
        writer.stdin.flush()
        assert writer.wait(timeout=30) == 0  # the writer's transaction was not undone
    finally:
        writer.kill()
        writer.wait()
    after = counts(db)
    assert (after["examples"], after["complete"]) == (0, False)
