"""The service's durable state: SQLite (WAL) under `--state-dir`.

Sessions, statistics and the fingerprints of processed messages are written in ONE
transaction per batch of processed messages, before those messages are acknowledged to the
broker, so a crash either loses them (the broker redelivers them) or keeps all of their
effects (a redelivery is recognised by its fingerprint and skipped). `synchronous=FULL`: a
commit survives a power cut too (docs/charging.md and docs/performance.md give the cost).

The store also owns the serialised form of the sessions it writes (`session_json`): each
history entry is serialised once, when it is new, and spliced into every later state of
its session, so a 50-entry history does not cost 50 serialisations per update.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from bridge.charging.events import Event
from bridge.charging.model import ChargingSession, ChargingStats

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY CHECK (id = 1), payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ChargingStore:
    FILENAME = "charging.sqlite3"

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / self.FILENAME
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        # session_id -> (the history last serialised, its entries' JSON texts).
        self._texts: dict[str, tuple[tuple[Event, ...], list[str]]] = {}

    def close(self) -> None:
        self._db.close()

    @property
    def initialized(self) -> bool:
        """False for a new state dir: the service then adopts what the broker retains."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'initialized'").fetchone()
        return row is not None

    def load(self) -> tuple[dict[str, ChargingSession], ChargingStats]:
        sessions = {
            sid: ChargingSession.from_payload(json.loads(payload))
            for sid, payload in self._db.execute("SELECT session_id, payload FROM sessions")
        }
        row = self._db.execute("SELECT payload FROM stats WHERE id = 1").fetchone()
        stats = ChargingStats(**json.loads(row[0])) if row else ChargingStats()
        return sessions, stats

    def session_json(self, session: ChargingSession) -> str:
        """The session's retained payload as compact JSON, reusing the texts of the history
        entries it shares with the state last serialised (its history is that state's with
        entries dropped from the front and new ones appended)."""
        events = session.events
        cached = self._texts.get(session.session_id)
        texts: list[str] | None = None
        if cached is not None and events:
            old_events, old_texts = cached
            try:
                k = old_events.index(events[0])
            except ValueError:
                k = len(old_events)
            shared = len(old_events) - k
            if len(events) >= shared and all(map(operator.is_, events, old_events[k:])):
                texts = [*old_texts[k:], *(e.to_json() for e in events[shared:])]
        if texts is None:
            texts = [e.to_json() for e in events]
        self._texts[session.session_id] = (events, texts)
        return session.to_json(texts)

    def forget(self, session_id: str) -> None:
        """Drop the cached texts of a session that is gone."""
        self._texts.pop(session_id, None)

    def has_seen(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM seen WHERE key = ?", (key,)).fetchone() is not None

    def seen_among(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` are known: one query per 500 instead of one per key."""
        wanted = list(keys)
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key FROM seen WHERE key IN ({marks})", chunk)
            found.update(key for (key,) in rows)
        return found

    def commit(
        self,
        *,
        now: float,
        sessions: Iterable[tuple[str, str]] = (),
        deleted: Iterable[str] = (),
        stats: ChargingStats | None = None,
        seen: Iterable[str] = (),
        initialized: bool = False,
    ) -> None:
        """Write all of one state change atomically; `sessions` are (session_id, JSON)."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?)",
                list(sessions),
            )
            gone = list(deleted)
            db.executemany("DELETE FROM sessions WHERE session_id = ?", [(d,) for d in gone])
            if stats is not None:
                db.execute(
                    "INSERT OR REPLACE INTO stats VALUES (1, ?)",
                    (json.dumps(dataclasses.asdict(stats)),),
                )
            db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", [(k, now) for k in seen])
            if initialized:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('initialized', '1')")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        for session_id in gone:
            self.forget(session_id)

    def prune_seen(self, before: float) -> int:
        """Forget fingerprints older than `before` (Unix s); returns how many."""
        return self._db.execute("DELETE FROM seen WHERE at < ?", (before,)).rowcount
