"""The shared store: PostgreSQL through psycopg 3 (`--store postgresql://...`).

Why psycopg 3's synchronous API: bench/pg_driver.py measured it against asyncpg on the
store's own operations (a batch transaction; the `seen_among` lookup) within noise of each
other on this project's sizes (the commit's WAL flush dominates; docs/performance.md), and the
synchronous API keeps the store's interface what SQLite's is: the service calls it where it
calls sqlite3 today, one transaction per batch, with no second (async) store interface.
psycopg is the optional extra `postgres` (`pip install chargebridge[postgres]`); the embedded
default never imports it.

Schema migrations run in one transaction under an advisory lock, so instances starting
together migrate once. A lost connection makes the next commit fail, which stops the service
(its messages are not acknowledged and come back): the process supervisor restarts it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bridge.charging.model import ChargingStats
from bridge.charging.store.base import (
    DedupeLimits,
    SqlStore,
    StoreError,
    fingerprint_bytes,
    stats_json,
)
from bridge.charging.store.migrations.postgres import MIGRATIONS

MIGRATION_LOCK = 0x63686172  # "char": the advisory lock key of schema migrations
SERVICE_LOCK = 0x63686173  # held by the one service instance that uses the store
# The server drops a dead client's connection (and with it SERVICE_LOCK) after about
# idle + interval * count seconds even when no FIN arrives (a machine that lost power).
KEEPALIVES = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; " + (
    "SET tcp_keepalives_count = 3"
)


def redact(url: str) -> str:
    """The URL without its password, for log lines and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore(SqlStore):
    PARAM = "%s"

    def __init__(
        self,
        url: str,
        limits: DedupeLimits | None = None,
        *,
        target: int | None = None,
        lock_wait_s: float = 30.0,
    ) -> None:
        """`target`: migrate only that far (tests of migrations from an older schema).
        `lock_wait_s`: how long to wait for an instance that still holds the store (one
        that was just killed: the server notices its closed connection within moments)."""
        super().__init__()
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "--store postgresql:// needs psycopg: pip install 'chargebridge[postgres]'"
            ) from None
        self._url = url
        self.limits = limits or DedupeLimits()
        self._started: float | None = None  # the clock at our first write: see prune_seen
        self._psycopg: Any = psycopg
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"cannot connect to the store {self.path}: {first}: check the URL, the "
                "password and that PostgreSQL is running"
            ) from None
        for statement in KEEPALIVES.split(";"):
            self._db.execute(statement)
        self._lock(lock_wait_s)
        self._migrate(len(MIGRATIONS) if target is None else target)

    def _lock(self, wait_s: float) -> None:
        """One service per store until several instances are implemented (docs/scaling.md):
        a second one would count events twice. The session-level advisory lock lives as long
        as this connection."""
        deadline = time.monotonic() + wait_s
        while True:
            row = self._db.execute("SELECT pg_try_advisory_lock(%s)", (SERVICE_LOCK,)).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() >= deadline:
                self._db.close()
                raise StoreError(
                    f"another charging service uses the store {self.path}: stop it first "
                    "(several instances on one store are not supported yet, docs/scaling.md)"
                )
            time.sleep(0.5)

    @property
    def path(self) -> str:
        return redact(self._url)

    def _migrate(self, target: int) -> None:
        db = self._db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the store {self.path} has schema version {version}, newer than this "
                    f"chargebridge knows ({len(MIGRATIONS)}): upgrade chargebridge"
                )
            for sql in MIGRATIONS[version:target]:
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                version += 1
            db.execute("UPDATE schema_version SET version = %s", (version,))

    def schema_version(self) -> int:
        return self._int("SELECT version FROM schema_version")

    def _int(self, query: str) -> int:
        row = self._db.execute(query).fetchone()
        assert row is not None  # an aggregate or the one version row
        return int(row[0])

    def seen_among(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` are known, in one query."""
        by_fp = {fingerprint_bytes(k): k for k in keys}
        if not by_fp:
            return set()
        rows = self._db.execute(
            "SELECT key FROM fingerprints WHERE key = ANY(%s)", (list(by_fp),)
        ).fetchall()
        return {by_fp[bytes(fp)] for (fp,) in rows}

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
        expires = self.limits.expires
        self._start(now)
        rows = list(sessions)
        gone = list(deleted)
        keys = [(fingerprint_bytes(k), expires(k, now)) for k in seen]
        with db.transaction(), db.cursor() as cur:
            if rows:
                cur.executemany(
                    "INSERT INTO sessions VALUES (%s, %s) ON CONFLICT (session_id) "
                    "DO UPDATE SET payload = EXCLUDED.payload",
                    rows,
                )
            if gone:
                cur.execute("DELETE FROM sessions WHERE session_id = ANY(%s)", (gone,))
            if stats is not None:
                cur.execute(
                    "INSERT INTO stats VALUES (1, %s) ON CONFLICT (id) "
                    "DO UPDATE SET payload = EXCLUDED.payload",
                    (stats_json(stats),),
                )
            if keys:
                cur.executemany(
                    "INSERT INTO fingerprints VALUES (%s, %s) ON CONFLICT DO NOTHING", keys
                )
            if initialized:
                cur.execute("INSERT INTO meta VALUES ('initialized', '1') ON CONFLICT DO NOTHING")
        for session_id in gone:
            self.forget(session_id)

    def prune_seen(self, now: float) -> int:
        """As SqliteStore.prune_seen; PostgreSQL's autovacuum reuses the space."""
        db = self._db
        running = now - self._start(now)
        with db.transaction():
            if running >= self.limits.redelivery_window_s:
                cur = db.execute("DELETE FROM fingerprints WHERE expires < %s", (now,))
            else:
                cur = db.execute(
                    "DELETE FROM fingerprints WHERE expires < %s AND NOT (key >= %s AND key < %s)",
                    (now, b"m", b"n"),
                )
            pruned = max(cur.rowcount, 0)
            excess = self.fingerprint_count() - self.limits.max_fingerprints
            if excess > 0:
                cur = db.execute(
                    "DELETE FROM fingerprints WHERE key IN "
                    "(SELECT key FROM fingerprints ORDER BY expires LIMIT %s)",
                    (excess,),
                )
                pruned += max(cur.rowcount, 0)
        return int(pruned)

    def _start(self, now: float) -> float:
        if self._started is None:
            self._started = now
        return self._started

    def fingerprint_count(self) -> int:
        return self._int("SELECT count(*) FROM fingerprints")

    def check(self) -> None:
        """Raise StoreError when the database no longer answers."""
        try:
            self._db.execute("SELECT 1")
        except self._psycopg.Error as exc:
            raise StoreError(f"the store {self.path} is unreachable: {exc}") from None
