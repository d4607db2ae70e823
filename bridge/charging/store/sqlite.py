"""The embedded store: SQLite (WAL) in one file, by default `{state_dir}/charging.sqlite3`.

`synchronous=FULL`: a commit survives a power cut too (docs/charging.md and
docs/performance.md give the cost). At open, `PRAGMA quick_check` refuses a damaged file
with one line naming it and the fix, instead of serving from it until the damage is hit. While
running, `check()` (on a timer) notices the file deleted or replaced under us: SQLite would
go on writing to the unlinked inode and every later commit would be lost at the next start.
Space of expired fingerprints is given back to the file system (incremental auto_vacuum).

The WAL is checkpointed every `WAL_CHECKPOINT_PAGES` pages (SQLite's default is 1,000): a
page rewritten by many commits in between (the statistics row, a session's last pages, the
tails of the indexes) is copied into the database once per checkpoint, not once per 1,000
pages, which measured ~8% less CPU per commit (docs/performance.md, "p-store"). The WAL file
is truncated back to `WAL_LIMIT_BYTES` after a checkpoint, so it stays bounded on disk.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from bridge.charging.model import ChargingStats
from bridge.charging.store.base import (
    DedupeLimits,
    SqlStore,
    StoreError,
    fingerprint_bytes,
    stats_json,
)
from bridge.charging.store.migrations.sqlite import MIGRATIONS

# Free pages that make a prune give space back (4 KiB pages: 4 MiB).
VACUUM_FREE_PAGES = 1024
MESSAGE_KEYS = (b"m", b"n")  # the key range of message fingerprints
WAL_CHECKPOINT_PAGES = 10_000  # 4 KiB pages: a checkpoint per ~40 MiB of WAL
WAL_LIMIT_BYTES = 48 << 20  # the WAL's size on disk after a checkpoint, at most


class SqliteStore(SqlStore):
    FILENAME = "charging.sqlite3"

    def __init__(self, path: Path, limits: DedupeLimits | None = None) -> None:
        super().__init__()
        self._path = Path(path).absolute()
        self.limits = limits or DedupeLimits()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._started: float | None = None  # the clock at our first write: see prune_seen
        fix = (
            "restore it from a backup, or move it away to start empty "
            "(the service then adopts the sessions the broker retains)"
        )
        try:
            # Opened in a worker thread (bridge.app), then used by the event loop's only.
            self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self._path}: {exc}") from None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            detail = " ".join(str(exc).split())
            raise StoreError(f"the store {self._path} is damaged ({detail}): {fix}") from None
        stat = os.stat(self._path)
        self._identity = (stat.st_dev, stat.st_ino)

    @classmethod
    def in_dir(cls, state_dir: Path, limits: DedupeLimits | None = None) -> SqliteStore:
        return cls(state_dir / cls.FILENAME, limits)

    @property
    def path(self) -> Path:
        return self._path

    def _open(self) -> None:
        db = self._db
        new = not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
        if new:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # before the first table
        else:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                lines = [line.strip() for p in problems for line in p.splitlines()]
                detail = "; ".join(line for line in lines if line)
                raise sqlite3.DatabaseError(f"quick_check: {detail[:160]}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        db.create_function("fp", 1, fingerprint_bytes, deterministic=True)
        db.create_function("fp_expires", 2, lambda key, at: DedupeLimits().expires(key, at))
        self._migrate()

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is not None:
                version = int(row[0])
            else:
                legacy = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sessions'"
                ).fetchone()
                version = 1 if legacy else 0
                db.execute("INSERT INTO schema_version VALUES (?)", (version,))
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the store {self._path} has schema version {version}, newer than this "
                    f"chargebridge knows ({len(MIGRATIONS)}): upgrade chargebridge"
                )
            start = version
            for sql in MIGRATIONS[version:]:
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                version += 1
            db.execute("UPDATE schema_version SET version = ?", (version,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if 0 < start < 2 and db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            # A file from before version 2: switch it to incremental auto_vacuum (and give
            # back the space of the old fingerprint table) once.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("VACUUM")

    def schema_version(self) -> int:
        return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def seen_among(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` are known: one query per 500 instead of one per key."""
        by_fp = {fingerprint_bytes(k): k for k in keys}
        wanted = list(by_fp)
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key FROM fingerprints WHERE key IN ({marks})", chunk)
            found.update(by_fp[fp] for (fp,) in rows)
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
        expires = self.limits.expires
        self._start(now)
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?)", list(sessions))
            gone = list(deleted)
            db.executemany("DELETE FROM sessions WHERE session_id = ?", [(d,) for d in gone])
            if stats is not None:
                db.execute("INSERT OR REPLACE INTO stats VALUES (1, ?)", (stats_json(stats),))
            db.executemany(
                "INSERT OR IGNORE INTO fingerprints VALUES (?, ?)",
                [(fingerprint_bytes(k), expires(k, now)) for k in seen],
            )
            if initialized:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('initialized', '1')")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        for session_id in gone:
            self.forget(session_id)

    def prune_seen(self, now: float) -> int:
        """Forget expired fingerprints, then the soonest to expire beyond the row cap, and
        give the space back. Message fingerprints are pruned only once a redelivery window has
        passed since our first write: the broker redelivers what we had not acknowledged
        right after we connect, however long we were away."""
        db = self._db
        running = now - self._start(now)
        if running >= self.limits.redelivery_window_s:
            pruned = db.execute("DELETE FROM fingerprints WHERE expires < ?", (now,)).rowcount
        else:
            pruned = db.execute(
                "DELETE FROM fingerprints WHERE expires < ? AND NOT (key >= ? AND key < ?)",
                (now, *MESSAGE_KEYS),
            ).rowcount
        (count,) = db.execute("SELECT count(*) FROM fingerprints").fetchone()
        excess = count - self.limits.max_fingerprints
        if excess > 0:
            pruned += db.execute(
                "DELETE FROM fingerprints WHERE key IN "
                "(SELECT key FROM fingerprints ORDER BY expires LIMIT ?)",
                (excess,),
            ).rowcount
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        if free >= VACUUM_FREE_PAGES:
            # executescript steps the pragma to its end (one page per step); execute would
            # free one page only.
            db.executescript("PRAGMA incremental_vacuum;")
        return int(pruned)

    def _start(self, now: float) -> float:
        if self._started is None:
            self._started = now
        return self._started

    def fingerprint_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM fingerprints").fetchone()[0])

    def check(self) -> None:
        """Raise StoreError when our file was deleted or replaced (another inode)."""
        fix = "stop the service, restore the file (or move the state dir away) and start again"
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            raise StoreError(f"the store {self._path} was deleted while in use: {fix}") from None
        if (stat.st_dev, stat.st_ino) != self._identity:
            raise StoreError(f"the store {self._path} was replaced while in use: {fix}")
