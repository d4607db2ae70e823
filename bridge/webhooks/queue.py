"""The durable webhook queue: SQLite (WAL) under `--state-dir`.

One row per (event, URL). What a batch of MQTT messages means (new rows, and per session the
last status seen) is written in ONE transaction, before the messages are acknowledged to the
broker, so a crash loses nothing and a redelivery enqueues nothing twice (`UNIQUE(key, url)`
and the remembered status). The body is stored as the exact bytes to send, so every retry
carries the same body, signature and Idempotency-Key. Rows of one stream (a session, or a
device) and one URL go out in order: only the oldest is ever due. Bounded: beyond
`max_queued` rows the oldest are dead-lettered (`dropped`); the dead-letter table keeps the
newest `max_dead` rows; session marks are forgotten after `MARK_RETENTION_S`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bridge.webhooks.events import WebhookEvent

MARK_RETENTION_S = 7 * 86400.0  # sessions stay retained for 24 h by default
COUNTERS = ("delivered", "failures", "dead_lettered", "dropped")

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, url TEXT NOT NULL,
    stream TEXT NOT NULL, type TEXT NOT NULL, body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, created REAL NOT NULL,
    last_error TEXT, UNIQUE (key, url));
CREATE INDEX IF NOT EXISTS deliveries_stream ON deliveries (stream, url, seq);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY, key TEXT NOT NULL, url TEXT NOT NULL, stream TEXT NOT NULL,
    type TEXT NOT NULL, body BLOB NOT NULL, attempts INTEGER NOT NULL, created REAL NOT NULL,
    dead_at REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS session_marks (
    session_id TEXT PRIMARY KEY, status TEXT NOT NULL, version INTEGER, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS session_marks_at ON session_marks (at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    seq: int
    key: str
    url: str
    stream: str
    type: str
    body: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class SessionMark:
    status: str
    version: int | None


class WebhookQueue:
    FILENAME = "webhooks.sqlite3"

    def __init__(
        self,
        state_dir: Path,
        urls: Iterable[str],
        *,
        max_attempts: int = 20,
        max_queued: int = 100_000,
        max_dead: int = 10_000,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / self.FILENAME
        self.urls = list(dict.fromkeys(urls))
        self.max_attempts = max_attempts
        self.max_queued = max_queued
        self.max_dead = max_dead
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        now = time.time()
        self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)", (repr(now),)
        )
        row = self._db.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
        self.created_at = float(row[0])
        with self._tx():
            # Deliveries to a URL no longer configured would wait forever.
            marks = ",".join("?" * len(self.urls))
            gone = self._bury(f"url NOT IN ({marks})", self.urls, now, "url_removed")
            self._count("dead_lettered", gone)
            self._db.execute("DELETE FROM session_marks WHERE at < ?", (now - MARK_RETENTION_S,))

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction: BEGIN ... COMMIT, ROLLBACK on error."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ enqueue

    def marks(self, session_ids: Iterable[str]) -> dict[str, SessionMark]:
        ids = list(set(session_ids))
        out: dict[str, SessionMark] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self._db.execute(
                "SELECT session_id, status, version FROM session_marks WHERE session_id IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            )
            out.update({sid: SessionMark(status, version) for sid, status, version in rows})
        return out

    def commit(
        self,
        events: list[WebhookEvent],
        bodies: list[bytes],
        marks: dict[str, SessionMark],
        now: float | None = None,
    ) -> int:
        """Queue `events` (with their encoded `bodies`) for every URL and remember `marks`,
        in one transaction. Returns the rows added (a key already queued adds none)."""
        now = time.time() if now is None else now
        added = 0
        with self._tx():
            for event, body in zip(events, bodies, strict=True):
                for url in self.urls:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO deliveries (key, url, stream, type, body, "
                        "next_at, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (event.key, url, event.stream, event.type, body, now, now),
                    )
                    added += cur.rowcount
            self._db.executemany(
                "INSERT INTO session_marks (session_id, status, version, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET status = excluded.status, "
                "version = excluded.version, at = excluded.at",
                [(sid, m.status, m.version, now) for sid, m in marks.items()],
            )
            excess = len(self) - self.max_queued
            if excess > 0:
                buried = self._bury(
                    "seq IN (SELECT seq FROM deliveries ORDER BY seq LIMIT ?)",
                    [excess],
                    now,
                    "queue_full",
                )
                self._count("dropped", buried)
        return added

    def dead_letter(self, event: WebhookEvent, body: bytes, reason: str) -> None:
        """An event that cannot be sent at all (e.g. too large), straight to the dead letters."""
        now = time.time()
        with self._tx():
            for url in self.urls:
                self._db.execute(
                    "INSERT INTO dead (key, url, stream, type, body, attempts, created, dead_at, "
                    "reason) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    (event.key, url, event.stream, event.type, body, now, now, reason),
                )
            self._count("dead_lettered", len(self.urls))
            self._trim_dead()

    # ------------------------------------------------------------------ deliver

    HEADS = (
        "FROM deliveries d JOIN (SELECT MIN(seq) AS seq FROM deliveries GROUP BY stream, url) h "
        "ON d.seq = h.seq"
    )

    def due(self, now: float, limit: int) -> list[Delivery]:
        """The oldest row of each (stream, URL), when its time has come; oldest first."""
        rows = self._db.execute(
            "SELECT d.seq, d.key, d.url, d.stream, d.type, d.body, d.attempts "
            f"{self.HEADS} WHERE d.next_at <= ? ORDER BY d.seq LIMIT ?",
            (now, limit),
        ).fetchall()
        return [Delivery(*row) for row in rows]

    def next_due(self) -> float | None:
        """When the next row becomes due (None: the queue is empty)."""
        row = self._db.execute(f"SELECT MIN(d.next_at) {self.HEADS}").fetchone()
        return None if row[0] is None else float(row[0])

    def delivered(self, seq: int) -> None:
        with self._tx():
            self._db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,))
            self._count("delivered", 1)

    def failed(self, delivery: Delivery, error: str, retry_in: float) -> bool:
        """Count a failed attempt; True if it was the last one (the row is dead-lettered)."""
        now = time.time()
        attempts = delivery.attempts + 1
        with self._tx():
            self._count("failures", 1)
            if attempts >= self.max_attempts:
                self._db.execute(
                    "UPDATE deliveries SET attempts = ?, last_error = ? WHERE seq = ?",
                    (attempts, error, delivery.seq),
                )
                self._count(
                    "dead_lettered", self._bury("seq = ?", [delivery.seq], now, f"failed: {error}")
                )
                return True
            self._db.execute(
                "UPDATE deliveries SET attempts = ?, next_at = ?, last_error = ? WHERE seq = ?",
                (attempts, now + retry_in, error, delivery.seq),
            )
            return False

    # ------------------------------------------------------------------ stats

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])

    def counters(self) -> dict[str, int]:
        values = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {name: int(values.get(name, 0)) for name in COUNTERS}

    def dead_letters(self, limit: int = 100) -> list[dict[str, object]]:
        rows = self._db.execute(
            "SELECT key, url, type, attempts, reason, dead_at FROM dead ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        names = ("key", "url", "type", "attempts", "reason", "dead_at")
        return [dict(zip(names, row, strict=True)) for row in rows]

    # ------------------------------------------------------------------ internals

    def _bury(self, where: str, params: Sequence[object], now: float, reason: str) -> int:
        """Move the matching deliveries to the dead letters; returns how many."""
        self._db.execute(
            "INSERT INTO dead (key, url, stream, type, body, attempts, created, dead_at, reason) "
            f"SELECT key, url, stream, type, body, attempts, created, ?, ? FROM deliveries "
            f"WHERE {where}",
            [now, reason, *params],
        )
        cur = self._db.execute(f"DELETE FROM deliveries WHERE {where}", params)
        self._trim_dead()
        return cur.rowcount

    def _trim_dead(self) -> None:
        self._db.execute(
            "DELETE FROM dead WHERE seq <= (SELECT MAX(seq) FROM dead) - ?", (self.max_dead,)
        )

    def _count(self, name: str, n: int) -> None:
        if n:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )
