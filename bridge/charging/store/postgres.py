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

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bridge.charging.model import ChargingStats
from bridge.charging.store.base import (
    Conflict,
    DedupeLimits,
    SessionRow,
    SqlStore,
    StoreError,
    fingerprint_bytes,
    stats_json,
)
from bridge.charging.store.migrations.postgres import MIGRATIONS

MIGRATION_LOCK = 0x63686172  # "char": the advisory lock key of schema migrations
# The server drops a dead client's connection (and with it its device locks) after about
# idle + interval * count seconds even when no FIN arrives (a machine that lost power).
KEEPALIVES = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; " + (
    "SET tcp_keepalives_count = 3"
)


UPSERT = (
    "INSERT INTO sessions (session_id, payload, device_id, version, active, touched) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (session_id) DO UPDATE SET "
    "payload = EXCLUDED.payload, device_id = EXCLUDED.device_id, version = EXCLUDED.version, "
    "active = EXCLUDED.active, touched = EXCLUDED.touched"
)


def full_row(session_id: str, text: str) -> tuple[str, str, str, int, bool, float]:
    """A session row with its columns read from its payload (adoption: rarely)."""
    payload = json.loads(text)
    active = payload.get("status") in ("starting", "charging", "stopping")
    version = int(payload.get("version") or 0)
    return session_id, text, str(payload.get("device_id", "")), version, active, touched(payload)


def columns(rows: Sequence[SessionRow], *names: str) -> tuple[list[Any], ...]:
    """The named fields of `rows`, one list per field (for `unnest`: one statement)."""
    return tuple([getattr(r, name) for r in rows] for name in names)


def add_stats(a: ChargingStats, b: ChargingStats) -> ChargingStats:
    """Counter by counter: what is stored plus what a batch counted."""
    return ChargingStats(
        **{f.name: getattr(a, f.name) + getattr(b, f.name) for f in dataclasses.fields(a)}
    )


def redact(url: str) -> str:
    """The URL without its password, for log lines and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def lock_key(device_id: str) -> int:
    """The advisory lock of a device's sessions: 64 bits of a hash of its id."""
    return int.from_bytes(hashlib.blake2b(device_id.encode(), digest_size=8).digest(), signed=True)


def touched(payload: dict[str, Any]) -> float:
    """When a session last changed or ended (the cleanup pass's clock), from its payload."""
    from bridge.charging.events import parse_iso

    times = [payload.get("last_update"), payload.get("end_time")]
    return max((parse_iso(t) for t in times if isinstance(t, str)), default=0.0)


class PostgresStore(SqlStore):
    """The shared store: any number of service instances on one database (docs/scaling.md).

    Besides what SQLite does, it offers what instances need to share it: advisory locks per
    device (`try_lock`, held across a batch and the publishing of its sessions), message
    fingerprints claimed in the batch's transaction (`claim`: INSERT ... ON CONFLICT DO
    NOTHING, so exactly one instance applies a message), and `write`, which refuses a
    session changed by another instance since it was read (its `version`) and adds the
    batch's counts to the one statistics row instead of overwriting it."""

    PARAM = "%s"
    shared = True

    def __init__(
        self,
        url: str,
        limits: DedupeLimits | None = None,
        *,
        target: int | None = None,
    ) -> None:
        """`target`: migrate only that far (tests of migrations from an older schema)."""
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
        self._migrate(len(MIGRATIONS) if target is None else target)

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
        rows = [full_row(sid, text) for sid, text in sessions]
        gone = list(deleted)
        keys = [(fingerprint_bytes(k), expires(k, now)) for k in seen]
        with db.transaction(), db.cursor() as cur:
            if initialized:
                # Instances starting together on an empty store: the first one adopts.
                cur.execute("INSERT INTO meta VALUES ('initialized', '1') ON CONFLICT DO NOTHING")
                if cur.rowcount != 1:
                    return
            if rows:
                cur.executemany(UPSERT, rows)
            if gone:
                cur.execute("DELETE FROM sessions WHERE session_id = ANY(%s)", (gone,))
            if stats is not None:
                cur.execute(
                    "INSERT INTO stats (id, payload, active) VALUES (1, %s, "
                    "(SELECT count(*) FROM sessions WHERE active)) ON CONFLICT (id) "
                    "DO UPDATE SET payload = EXCLUDED.payload, active = EXCLUDED.active",
                    (stats_json(stats),),
                )
            if keys:
                cur.executemany(
                    "INSERT INTO fingerprints VALUES (%s, %s) ON CONFLICT DO NOTHING", keys
                )
        for session_id in gone:
            self.forget(session_id)

    # --- several instances (docs/scaling.md) -----------------------------------------------
    def try_lock(self, keys: Sequence[int]) -> int:
        """Take the advisory locks `keys` (sorted) in order as far as they are free; returns
        how many are now held. Locks after the first busy one are given back at once, so
        that an instance only ever waits while holding a prefix of a sorted list (no cycle,
        no deadlock). A lock is held until `unlock` or until this connection ends."""
        if not keys:
            return 0
        got = [
            bool(ok)
            for (ok,) in self._db.execute(
                "SELECT pg_try_advisory_lock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY "
                "AS t(k, i) ORDER BY i",
                (list(keys),),
            )
        ]
        held = got.index(False) if False in got else len(got)
        surplus = [k for k, ok in zip(keys[held:], got[held:], strict=True) if ok]
        self.unlock(surplus)
        return held

    def unlock(self, keys: Sequence[int]) -> None:
        if keys:
            self._db.execute(
                "SELECT pg_advisory_unlock(k) FROM unnest(%s::bigint[]) AS k", (list(keys),)
            )

    def failed(self) -> bool:
        """Whether the open transaction failed (every later statement of it would)."""
        status = self._db.info.transaction_status
        return bool(status == self._psycopg.pq.TransactionStatus.INERROR)

    def begin(self) -> None:
        self._db.execute("BEGIN")

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")

    def versions(
        self, device_ids: Iterable[str], session_ids: Iterable[str] = ()
    ) -> dict[str, int]:
        """The stored version of every session of `device_ids`, and of `session_ids`."""
        rows = self._db.execute(
            "SELECT session_id, version FROM sessions "
            "WHERE device_id = ANY(%s) OR session_id = ANY(%s)",
            (list(device_ids), list(session_ids)),
        )
        return {sid: int(v) for sid, v in rows}

    def payloads(self, session_ids: Iterable[str]) -> list[tuple[str, str]]:
        return [
            (sid, payload)
            for sid, payload in self._db.execute(
                "SELECT session_id, payload FROM sessions WHERE session_id = ANY(%s)",
                (list(session_ids),),
            )
        ]

    def devices(self) -> list[str]:
        """Every device with a stored session (republishing after a reconnection)."""
        return [d for (d,) in self._db.execute("SELECT DISTINCT device_id FROM sessions")]

    def due_devices(self, now: float, timeout_s: float, retention_s: float) -> list[str]:
        """Devices with a session the cleanup pass would change: silent active ones past
        the timeout, finished ones past the retention."""
        rows = self._db.execute(
            "SELECT DISTINCT device_id FROM sessions WHERE (active AND touched <= %s) "
            "OR (NOT active AND touched <= %s)",
            (now - timeout_s, now - retention_s),
        )
        return [device for (device,) in rows]

    def claim(self, keys: Iterable[str], now: float) -> set[str]:
        """Record `keys` as seen in the open transaction; returns those that were new (the
        others some instance already applied, or is applying: the insert waits for it)."""
        by_fp = {fingerprint_bytes(k): k for k in keys}
        if not by_fp:
            return set()
        fps = sorted(by_fp)  # one order for everyone: concurrent claims cannot deadlock
        expires = [self.limits.expires(by_fp[fp], now) for fp in fps]
        rows = self._db.execute(
            "INSERT INTO fingerprints SELECT * FROM unnest(%b::bytea[], %b::float8[]) "
            "ON CONFLICT DO NOTHING RETURNING key",
            (fps, expires),
        )
        return {by_fp[bytes(fp)] for (fp,) in rows}

    def write(
        self,
        *,
        now: float,
        sessions: Sequence[SessionRow],
        deleted: Sequence[tuple[str, int]],
        counts: ChargingStats,
        active: int,
        seen: Iterable[str],
    ) -> tuple[ChargingStats, int]:
        """Finish the open transaction: the sessions (each only if still at its `base`
        version, else `Conflict`), the deletions (likewise), `counts` and `active` added to
        the statistics, the fingerprints; COMMIT. Returns the statistics and active count
        as stored now (all instances' counts)."""
        self._start(now)
        db = self._db
        with db.cursor() as cur:
            new = [r for r in sessions if r.base is None]
            old = [r for r in sessions if r.base is not None]
            written: set[str] = set()
            # Arrays go in binary (%b): the text format escapes every quote of the JSON.
            if new:
                cur.execute(
                    "INSERT INTO sessions (session_id, payload, device_id, version, active, "
                    "touched) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], "
                    "%b::bigint[], %b::bool[], %b::float8[]) ON CONFLICT DO NOTHING "
                    "RETURNING session_id",
                    columns(
                        new, "session_id", "payload", "device_id", "version", "active", "touched"
                    ),
                )
                written.update(sid for (sid,) in cur.fetchall())
            if old:
                cur.execute(
                    "UPDATE sessions AS s SET payload = v.payload, version = v.version, "
                    "active = v.active, touched = v.touched FROM unnest(%b::text[], "
                    "%b::text[], %b::bigint[], %b::bool[], %b::float8[], %b::bigint[]) "
                    "AS v(session_id, payload, version, active, touched, base) "
                    "WHERE s.session_id = v.session_id AND s.version = v.base "
                    "RETURNING s.session_id",
                    columns(old, "session_id", "payload", "version", "active", "touched", "base"),
                )
                written.update(sid for (sid,) in cur.fetchall())
            if deleted:
                cur.execute(
                    "DELETE FROM sessions AS s USING unnest(%b::text[], %b::bigint[]) "
                    "AS v(session_id, base) WHERE s.session_id = v.session_id "
                    "AND s.version = v.base RETURNING s.session_id",
                    ([sid for sid, _ in deleted], [base for _, base in deleted]),
                )
                written.update(sid for (sid,) in cur.fetchall())
            wanted = {r.session_id for r in sessions} | {sid for sid, _ in deleted}
            if stale := wanted - written:
                raise Conflict(stale)
            keys = [(fingerprint_bytes(k), self.limits.expires(k, now)) for k in seen]
            if keys:
                cur.executemany(
                    "INSERT INTO fingerprints VALUES (%s, %s) ON CONFLICT DO NOTHING", keys
                )
            row = cur.execute(
                "SELECT payload, active FROM stats WHERE id = 1 FOR UPDATE"
            ).fetchone()
            stored = ChargingStats(**json.loads(row[0])) if row else ChargingStats()
            merged = add_stats(stored, counts)
            total = (int(row[1]) if row else 0) + active
            cur.execute(
                "INSERT INTO stats (id, payload, active) VALUES (1, %s, %s) ON CONFLICT (id) "
                "DO UPDATE SET payload = EXCLUDED.payload, active = EXCLUDED.active",
                (stats_json(merged), total),
            )
        db.execute("COMMIT")
        for session_id, _ in deleted:
            self.forget(session_id)
        return merged, total

    def current_stats(self) -> tuple[ChargingStats, int]:
        row = self._db.execute("SELECT payload, active FROM stats WHERE id = 1").fetchone()
        if row is None:
            return ChargingStats(), 0
        return ChargingStats(**json.loads(row[0])), int(row[1])

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
