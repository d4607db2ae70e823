"""The SQLite store alone: sessions, statistics and fingerprints survive a reopen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bridge.charging.model import (
    MAX_EVENTS,
    ChargingSession,
    ChargingStats,
    PowerReported,
    transition,
)
from bridge.charging.store import SqliteStore
from bridge.charging.store.sqlite import WAL_CHECKPOINT_PAGES, WAL_LIMIT_BYTES

ORDER = "0123456789ABCDEF0123456789ABCDEF"
T0 = 1_790_000_000.0


def reported(n: int, session: ChargingSession | None = None) -> ChargingSession:
    """`session` after n more power reports (a new session if None)."""
    start = 0 if session is None else session.duration_s
    for i in range(start + 1, start + n + 1):
        event = PowerReported(
            ts=T0 + i,
            order_no=ORDER,
            device_id="04AB373B",
            port=1,
            power_w=200.0,
            energy_kwh=i / 1000,
            duration_s=i,
        )
        session, _ = transition(session, event)
    assert session is not None
    return session


def test_sessions_and_stats_survive_a_reopen(tmp_path: Path) -> None:
    store = SqliteStore.in_dir(tmp_path)
    session = reported(3)
    stats = ChargingStats(power_update_events=3, total_events_processed=3)
    store.commit(
        now=T0,
        sessions=[(ORDER, session.to_json())],
        stats=stats,
        seen=["msg:1"],
        initialized=True,
    )
    store.close()
    again = SqliteStore.in_dir(tmp_path)
    sessions, loaded_stats = again.load()
    assert sessions == {ORDER: session}
    assert sessions[ORDER].to_json() == session.to_json()
    assert loaded_stats == stats
    assert again.initialized and again.has_seen("msg:1")
    assert again.seen_among(["msg:1", "msg:2"]) == {"msg:1"}


def test_the_latest_state_and_deletions_are_what_a_reopen_finds(tmp_path: Path) -> None:
    store = SqliteStore.in_dir(tmp_path)
    session = reported(1)
    for _ in range(MAX_EVENTS + 5):
        session = reported(1, session)
        store.commit(now=T0, sessions=[(ORDER, session.to_json())])
    other = dataclasses.replace(reported(2), session_id="B" * 32)
    store.commit(now=T0, sessions=[(other.session_id, other.to_json())])
    store.commit(now=T0, deleted=[other.session_id])
    store.close()
    loaded = SqliteStore.in_dir(tmp_path).load()[0]
    assert loaded == {ORDER: session} and len(session.events) == MAX_EVENTS


def test_the_cached_json_equals_a_fresh_serialisation(tmp_path: Path) -> None:
    """`session_json` reuses the texts of shared history entries; it must never differ from
    serialising the whole session again, also when the history is cut or replaced."""
    store = SqliteStore.in_dir(tmp_path)
    session = reported(1)
    for i in range(MAX_EVENTS + 5):
        session = reported(1, session)
        assert store.session_json(session) == session.to_json()
        if i % 7 == 0:
            session = dataclasses.replace(session, events=session.events[3:])
            assert store.session_json(session) == session.to_json()
    other = dataclasses.replace(session, events=tuple(reversed(session.events)))
    assert store.session_json(other) == other.to_json()
    assert (
        store.session_json(dataclasses.replace(session, events=()))
        == dataclasses.replace(session, events=()).to_json()
    )
    store.close()


def test_the_wal_is_checkpointed_late_and_kept_bounded(tmp_path: Path) -> None:
    """Fewer checkpoints (a hot page is copied once per checkpoint), and the WAL truncated
    back to its limit after one, on every connection the store opens."""
    for _ in range(2):  # a new file, then an existing one
        store = SqliteStore.in_dir(tmp_path)
        db = store._db
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_CHECKPOINT_PAGES
        assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == WAL_LIMIT_BYTES
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        page = db.execute("PRAGMA page_size").fetchone()[0]
        assert WAL_CHECKPOINT_PAGES * page < WAL_LIMIT_BYTES  # the limit holds a full WAL
        store.commit(now=T0, sessions=[(ORDER, reported(2).to_json())], seen=["msg:1"])
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert (tmp_path / "charging.sqlite3-wal").stat().st_size == 0
        store.close()
