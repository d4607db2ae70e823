"""The SQLite store refuses a damaged file at start (one line naming it and the fix), ends
the service when its file is deleted or replaced while running, and gives the space of
pruned fingerprints back to the file system."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.app import run_service
from bridge.charging.store import DedupeLimits, SqliteStore, StoreError
from tests.bridge.charging.harness import settings_for
from tests.bridge.charging.store.test_sqlite import T0, reported
from tests.broker import Mosquitto

PAGE = 4096


def filled(path: Path, sessions: int = 400) -> None:
    """A store file of a few hundred pages, checkpointed (closed) so that all is in it."""
    store = SqliteStore(path)
    base = reported(40)
    rows = []
    for i in range(sessions):
        session = dataclasses.replace(base, session_id=f"{i:032X}")
        rows.append((session.session_id, session.to_json()))
    store.commit(now=T0, sessions=rows, initialized=True)
    store.close()


def test_a_page_damaged_in_the_middle_is_refused_at_start(tmp_path: Path) -> None:
    good = tmp_path / "good.sqlite3"
    filled(good)
    pages = good.stat().st_size // PAGE
    assert pages > 50
    bad = tmp_path / "state" / "charging.sqlite3"
    bad.parent.mkdir()
    shutil.copy(good, bad)
    with bad.open("r+b") as f:
        f.seek((pages // 2) * PAGE)
        f.write(b"\xa5" * PAGE)
    with pytest.raises(StoreError) as caught:
        SqliteStore(bad)
    message = str(caught.value)
    assert str(bad) in message and "restore it from a backup" in message
    assert "\n" not in message
    SqliteStore(good).close()  # the intact copy still opens

    # The command: one line on stderr, exit 1, nothing connected (no broker is running).
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "service", "--state-dir", str(bad.parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in done.stderr


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "charging.sqlite3"
    path.write_bytes(b"not a database at all" * 500)
    with pytest.raises(StoreError, match="damaged"):
        SqliteStore(path)


async def test_a_store_deleted_while_running_ends_the_service(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = settings_for(broker, tmp_path / "state", store_check_interval_s=0.1)
    ready = asyncio.Event()
    task = asyncio.create_task(run_service(settings, ready=ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        (tmp_path / "state" / "charging.sqlite3").unlink()
        with pytest.raises(StoreError, match="was deleted while in use"):
            async with asyncio.timeout(10):
                await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_replaced_store_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "charging.sqlite3"
    store = SqliteStore(path)
    store.check()
    shutil.copy(path, tmp_path / "copy")
    (tmp_path / "copy").replace(path)  # a restore over the running store: another inode
    with pytest.raises(StoreError, match="was replaced while in use"):
        store.check()
    store.close()


def test_pruned_fingerprints_give_the_space_back(tmp_path: Path) -> None:
    path = tmp_path / "charging.sqlite3"
    store = SqliteStore(path, DedupeLimits(redelivery_window_s=0.0))
    for chunk in range(20):
        keys = ["msg:" + hashlib.sha256(b"%d-%d" % (chunk, i)).hexdigest() for i in range(5000)]
        store.commit(now=T0, seen=keys)
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = path.stat().st_size
    assert store.prune_seen(T0 + 1) == 100_000
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.fingerprint_count() == 0
    assert path.stat().st_size < full / 4, (full, path.stat().st_size)
    store.close()
