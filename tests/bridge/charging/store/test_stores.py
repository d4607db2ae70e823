"""What both stores (SQLite and a real PostgreSQL) must do alike: keep state across a reopen,
bound the dedupe state by time and rows, and migrate from the previous schema."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.charging.model import ChargingStats
from bridge.charging.store import (
    Conflict,
    DedupeLimits,
    SessionRow,
    SqliteStore,
    StoreError,
    open_store,
)
from bridge.charging.store.migrations.postgres import MIGRATIONS as PG_MIGRATIONS
from bridge.charging.store.migrations.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from bridge.charging.store.postgres import PostgresStore, redact
from tests.bridge.charging.store.conftest import Opener
from tests.bridge.charging.store.test_sqlite import ORDER, T0, reported

MSG = "msg:" + "ab" * 32
SETTLED = f"settled:04AB373B:1:{ORDER}"


def test_state_survives_a_reopen(open_any: Opener) -> None:
    store = open_any()
    assert not store.initialized
    session = reported(3)
    stats = ChargingStats(power_update_events=3, total_events_processed=3)
    store.commit(
        now=T0,
        sessions=[(ORDER, session.to_json())],
        stats=stats,
        seen=[MSG, SETTLED],
        initialized=True,
    )
    store.close()
    again = open_any()
    sessions, loaded = again.load()
    assert sessions == {ORDER: session} and loaded == stats
    assert again.initialized and again.has_seen(MSG) and again.has_seen(SETTLED)
    assert again.seen_among([MSG, SETTLED, "msg:" + "cd" * 32, "x"]) == {MSG, SETTLED}
    again.commit(now=T0, deleted=[ORDER])
    assert again.load()[0] == {}


def test_settlements_outlive_message_fingerprints(open_any: Opener) -> None:
    """A message fingerprint only has to outlive the broker's redelivery; a settlement key
    must stop a device's resend for days."""
    limits = DedupeLimits(redelivery_window_s=0.0, settlement_window_s=3600.0)
    store = open_any(limits)
    store.commit(now=T0, seen=[MSG, SETTLED])
    assert store.prune_seen(T0 + 10) == 1
    assert store.seen_among([MSG, SETTLED]) == {SETTLED}
    assert store.prune_seen(T0 + 3601) == 1
    assert store.seen_among([MSG, SETTLED]) == set()


def test_message_fingerprints_of_a_previous_run_wait_for_its_redeliveries(
    open_any: Opener,
) -> None:
    """However long the service was away, what it had not acknowledged comes back at once
    after it connects: those fingerprints must still be there."""
    first = open_any(DedupeLimits(redelivery_window_s=60.0))
    first.commit(now=T0, seen=[MSG])
    first.close()
    later = open_any(DedupeLimits(redelivery_window_s=60.0))  # a day later, just started
    assert later.prune_seen(T0 + 86400) == 0 and later.has_seen(MSG)


def test_the_row_cap_drops_what_expires_first(open_any: Opener) -> None:
    store = open_any(DedupeLimits(max_fingerprints=1000, redelivery_window_s=60.0))
    msgs = ["msg:" + hashlib.sha256(b"%d" % i).hexdigest() for i in range(1500)]
    store.commit(now=T0, seen=[SETTLED])
    for i in range(0, 1500, 500):
        store.commit(now=T0 + i, seen=msgs[i : i + 500])
    assert store.prune_seen(T0) == 501
    assert store.has_seen(SETTLED)  # expires last
    known = store.seen_among(msgs)
    assert len(known) == 999 and msgs[0] not in known and msgs[1499] in known


# --- migrations ------------------------------------------------------------------------

# The schema of chargebridge's main before schema versions, verbatim (bridge/charging/store.py).
MAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY CHECK (id = 1), payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def old_rows() -> tuple[str, str, list[tuple[str, float]]]:
    session = reported(5)
    stats = ChargingStats(sessions_created=1, power_update_events=5)
    seen = [(MSG, T0), (SETTLED, T0), ("msg:" + "01" * 32, T0 - 10)]
    return session.to_json(), _json(stats), seen


def _json(stats: ChargingStats) -> str:
    import json

    return json.dumps(dataclasses.asdict(stats))


def check_migrated(store: Any) -> None:
    pg = isinstance(store, PostgresStore)
    assert store.schema_version() == len(PG_MIGRATIONS if pg else SQLITE_MIGRATIONS)
    sessions, stats = store.load()
    assert sessions[ORDER].to_json() == reported(5).to_json()
    assert stats.sessions_created == 1 and stats.power_update_events == 5
    assert store.initialized
    assert store.seen_among([MSG, SETTLED, "msg:" + "01" * 32]) == {
        MSG,
        SETTLED,
        "msg:" + "01" * 32,
    }
    # Old rows got the default windows: a message fingerprint 15 min, a settlement 2 days.
    store.limits = DedupeLimits(redelivery_window_s=0.0)
    store.prune_seen(T0 + 901)
    assert store.seen_among([MSG, SETTLED]) == {SETTLED}


def test_sqlite_from_mains_schema(tmp_path: Path) -> None:
    path = tmp_path / "charging.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MAIN_SCHEMA)
    session, stats, seen = old_rows()
    db.execute("INSERT INTO sessions VALUES (?, ?)", (ORDER, session))
    db.execute("INSERT INTO stats VALUES (1, ?)", (stats,))
    db.executemany("INSERT INTO seen VALUES (?, ?)", seen)
    db.execute("INSERT INTO meta VALUES ('initialized', '1')")
    db.commit()
    db.close()
    store = SqliteStore(path)
    check_migrated(store)
    assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    store.close()
    assert SqliteStore(path).schema_version() == len(SQLITE_MIGRATIONS)  # idempotent


def test_postgres_from_the_previous_schema(pg_url: str) -> None:
    old = PostgresStore(pg_url, target=1)
    assert old.schema_version() == 1
    session, stats, seen = old_rows()
    with old._db.transaction():
        old._db.execute("INSERT INTO sessions VALUES (%s, %s)", (ORDER, session))
        old._db.execute("INSERT INTO stats VALUES (1, %s)", (stats,))
        old._db.cursor().executemany("INSERT INTO seen VALUES (%s, %s)", seen)
        old._db.execute("INSERT INTO meta VALUES ('initialized', '1')")
    old.close()
    store = PostgresStore(pg_url)
    check_migrated(store)
    # Version 3 read each session's device, version, activity and time from its payload.
    assert store.versions([reported(5).device_id]) == {ORDER: reported(5).version}
    assert store.due_devices(T0 + 10**6, 900, 10**9) == [reported(5).device_id]
    assert store.current_stats()[1] == 1  # one active session
    store.close()


def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "charging.sqlite3"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade chargebridge"):
        SqliteStore(path)
    PostgresStore(pg_url).close()
    store = PostgresStore(pg_url)
    store._db.execute("UPDATE schema_version SET version = 99")
    store.close()
    with pytest.raises(StoreError, match="schema version 99"):
        PostgresStore(pg_url)


def test_store_urls(tmp_path: Path, pg_url: str) -> None:
    default = open_store("", tmp_path)
    assert default.path == tmp_path / "charging.sqlite3"
    default.close()
    explicit = open_store(f"sqlite:///{tmp_path}/x/y.db", tmp_path)
    assert explicit.path == tmp_path / "x" / "y.db"
    explicit.close()
    pg = open_store(pg_url, tmp_path)
    assert "***" in str(pg.path) and "test-password" not in str(pg.path)
    pg.close()
    with pytest.raises(StoreError, match=r"use sqlite:///PATH or postgresql://"):
        open_store("mysql://x", tmp_path)
    bad = pg_url.replace("chargebridge-test-password", "wrong")
    with pytest.raises(StoreError, match=r"cannot connect to the store postgresql://.*\*\*\*"):
        open_store(bad, tmp_path)
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"


def test_instances_share_a_postgres_store_exactly_once(pg_url: str) -> None:
    """Two stores on one database (two instances): a fingerprint is claimed by one of them;
    a session written over another instance's change is refused (`Conflict`); counts of
    both add up in the one statistics row."""
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        first.begin()
        assert first.claim(["msg:" + "ab" * 32], 1.0) == {"msg:" + "ab" * 32}
        second.begin()
        row = SessionRow(ORDER, "04AB373B", None, 1, True, 1.0, session_payload(1))
        first.write(
            now=1.0,
            sessions=[row],
            deleted=[],
            counts=ChargingStats(sessions_created=1),
            active=1,
            seen=[],
        )
        assert second.claim(["msg:" + "ab" * 32], 1.0) == set()
        stale = SessionRow(ORDER, "04AB373B", None, 1, True, 1.0, session_payload(1))
        with pytest.raises(Conflict):
            second.write(
                now=1.0, sessions=[stale], deleted=[], counts=ChargingStats(), active=0, seen=[]
            )
        second.rollback()
        second.begin()
        newer = SessionRow(ORDER, "04AB373B", 1, 2, True, 2.0, session_payload(2))
        stats, active = second.write(
            now=2.0,
            sessions=[newer],
            deleted=[],
            counts=ChargingStats(sessions_created=2),
            active=1,
            seen=[],
        )
        assert (stats.sessions_created, active) == (3, 2)
        assert first.versions(["04AB373B"]) == {ORDER: 2}
        assert first.due_devices(10.0, 5.0, 100.0) == ["04AB373B"]  # silent for 8 s > 5
    finally:
        first.close()
        second.close()


def test_device_locks_are_taken_in_order_as_far_as_free(pg_url: str) -> None:
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        assert first.try_lock([2]) == 1
        assert second.try_lock([1, 2, 3]) == 1  # 1 held; 2 busy; 3 given back at once
        assert first.try_lock([3]) == 1
        first.unlock([2, 3])
        assert second.try_lock([2, 3]) == 2
    finally:
        first.close()
        second.close()


def session_payload(version: int) -> str:
    return json.dumps(
        {
            "session_id": ORDER,
            "device_id": "04AB373B",
            "port": 1,
            "order_no": ORDER,
            "status": "charging",
            "start_time": "2026-01-01T00:00:00.000Z",
            "end_time": None,
            "duration_s": 0,
            "energy_kwh": 0.0,
            "max_power_w": 0.0,
            "power_w": 0.0,
            "voltage_v": None,
            "current_a": None,
            "temperature_c": None,
            "stop_reason": None,
            "last_update": "2026-01-01T00:00:00.000Z",
            "version": version,
            "events": [],
        }
    )
