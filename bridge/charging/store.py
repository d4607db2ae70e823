"""The service's durable state: SQLite (WAL) under `--state-dir`.

Sessions, statistics and the fingerprints of processed messages are written in ONE
transaction per batch of processed messages, before those messages are acknowledged to the
broker, so a crash either loses them (the broker redelivers them) or keeps all of their
effects (a redelivery is recognised by its fingerprint and skipped). `synchronous=FULL`: a
commit survives a power cut too (docs/charging.md and docs/performance.md give the cost).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

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
            db.executemany("DELETE FROM sessions WHERE session_id = ?", [(d,) for d in deleted])
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

    def prune_seen(self, before: float) -> int:
        """Forget fingerprints older than `before` (Unix s); returns how many."""
        return self._db.execute("DELETE FROM seen WHERE at < ?", (before,)).rowcount
