"""What the charging service needs of its durable state, whatever the database.

Sessions, statistics and the fingerprints of processed messages are written in ONE
transaction per batch of processed messages, before those messages are acknowledged to the
broker, so a crash either loses them (the broker redelivers them) or keeps all of their
effects (a redelivery is recognised by its fingerprint and skipped).

Dedupe state is bounded (docs/charging.md, "Dedupe"): a message fingerprint (`msg:...`) only
has to outlive the broker's redelivery horizon (a message delivered but not acknowledged is
redelivered at the next connection), so it expires after `redelivery_window_s`; a settlement
key (`settled:device:port:order`) must stop a device's resend for as long as the device may
resend, so it expires after `dedup_window_s`. Both are pruned by time and by a row cap.

`SessionTexts` owns the serialised form of the sessions a store writes (`session_json`): each
history entry is serialised once, when it is new, and spliced into every later state of its
session, so a 50-entry history does not cost 50 serialisations per update.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from bridge.charging.events import Event
from bridge.charging.model import ChargingSession, ChargingStats

SETTLED_PREFIX = "settled:"
MESSAGE_PREFIX = "msg:"


class Conflict(Exception):
    """Another service instance changed a session this transaction read (a shared store):
    the transaction is rolled back and the batch run again on the sessions as they are now."""

    def __init__(self, session_ids: Iterable[str] = ()) -> None:
        self.session_ids = set(session_ids)
        super().__init__(f"changed meanwhile by another instance: {sorted(self.session_ids)}")


@dataclasses.dataclass(frozen=True, slots=True)
class SessionRow:
    """One session as a shared store writes it: `base` is the version the batch read (None:
    the batch created it), so that a write over another instance's change is refused."""

    session_id: str
    device_id: str
    base: int | None
    version: int
    active: bool
    touched: float  # when the cleanup pass looks at it next: its last change (or end)
    payload: str


class StoreError(OSError):
    """The store cannot be used (corrupt, replaced, unreachable, too new): one line that names
    it and the fix. An OSError, so that a role's start-up prints it as one line and exits 1."""


@dataclasses.dataclass(frozen=True)
class DedupeLimits:
    """How long and how many fingerprints are kept (ChargingSettings gives the values)."""

    redelivery_window_s: float = 900.0
    settlement_window_s: float = 2 * 86400.0
    max_fingerprints: int = 2_000_000

    def expires(self, key: str, now: float) -> float:
        ttl = (
            self.settlement_window_s if key.startswith(SETTLED_PREFIX) else self.redelivery_window_s
        )
        return now + ttl


def fingerprint_bytes(key: str) -> bytes:
    """A compact, fixed-size form of a key: `m` + 16 bytes of a message's SHA-256, `s` + 16
    bytes of a hash of anything else (settlement keys). 17 bytes instead of 68 characters
    per row; 128 bits leave collisions out of reach."""
    digest = key[len(MESSAGE_PREFIX) : len(MESSAGE_PREFIX) + 32]
    if key.startswith(MESSAGE_PREFIX) and len(digest) == 32:
        try:
            return b"m" + bytes.fromhex(digest)
        except ValueError:
            pass
    tag = b"s" if key.startswith(SETTLED_PREFIX) else b"k"
    return tag + hashlib.sha256(key.encode()).digest()[:16]


class ChargingStore(Protocol):
    """The service's store: `SqliteStore` (embedded default) or `PostgresStore`."""

    # Several service instances may use it at once (a `SharedStore`: PostgreSQL).
    shared: bool

    @property
    def path(self) -> object:
        """Where it is (a file, or a redacted URL), for log lines."""
        ...

    @property
    def initialized(self) -> bool:
        """False for a new store: the service then adopts what the broker retains."""
        ...

    def load(self) -> tuple[dict[str, ChargingSession], ChargingStats]: ...

    def session_json(self, session: ChargingSession) -> str: ...

    def forget(self, session_id: str) -> None: ...

    def has_seen(self, key: str) -> bool: ...

    def seen_among(self, keys: Iterable[str]) -> set[str]: ...

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
        ...

    def prune_seen(self, now: float) -> int:
        """Forget expired fingerprints and the oldest beyond the row cap; returns how many."""
        ...

    def check(self) -> None:
        """Raise StoreError when the store under us is gone (called on a timer)."""
        ...

    def close(self) -> None: ...


class SharedStore(ChargingStore, Protocol):
    """What several service instances on one store need of it (PostgresStore, which says
    how): device locks, claimed fingerprints, version-checked writes of sessions."""

    def try_lock(self, keys: Sequence[int]) -> int: ...

    def unlock(self, keys: Sequence[int]) -> None: ...

    def begin(self) -> None: ...

    def failed(self) -> bool: ...

    def rollback(self) -> None: ...

    def versions(
        self, device_ids: Iterable[str], session_ids: Iterable[str] = ()
    ) -> dict[str, int]: ...

    def payloads(self, session_ids: Iterable[str]) -> list[tuple[str, str]]: ...

    def devices(self) -> list[str]: ...

    def due_devices(self, now: float, timeout_s: float, retention_s: float) -> list[str]: ...

    def claim(self, keys: Iterable[str], now: float) -> set[str]: ...

    def write(
        self,
        *,
        now: float,
        sessions: Sequence[SessionRow],
        deleted: Sequence[tuple[str, int]],
        counts: ChargingStats,
        active: int,
        seen: Iterable[str],
    ) -> tuple[ChargingStats, int]: ...

    def current_stats(self) -> tuple[ChargingStats, int]: ...


class SessionTexts:
    """The cache behind `session_json` (shared by both stores)."""

    def __init__(self) -> None:
        # session_id -> (the history last serialised, its entries' JSON texts).
        self._texts: dict[str, tuple[tuple[Event, ...], list[str]]] = {}

    def session_json(self, session: ChargingSession) -> str:
        """The session's retained payload as compact JSON, reusing the texts of the history
        entries it shares with the state last serialised (its history is that state's with
        entries dropped from the front and new ones appended)."""
        events = session.events
        cached = self._texts.get(session.session_id)
        texts: list[str] | None = None
        if cached is not None and events:
            old_events, old_texts = cached
            k = _start_in(old_events, events[0])
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


def _start_in(old_events: tuple[Event, ...], first: Event) -> int:
    """Where a history's first entry is in the one last serialised: by identity at 0 (an
    entry appended) or 1 (one dropped too, a full history) without `index`, whose equality
    test of each entry before it is a Python `__eq__`; its length if it is not there."""
    if old_events:
        if old_events[0] is first:
            return 0
        if len(old_events) > 1 and old_events[1] is first:
            return 1
    try:
        return old_events.index(first)
    except ValueError:
        return len(old_events)


class SqlStore(SessionTexts):
    """What both SQL stores read alike (the same tables, the same queries); `_db` is a DB-API
    connection and `PARAM` its placeholder (`?` for sqlite3, `%s` for psycopg). `shared`:
    several service instances may use it at once (PostgreSQL; docs/scaling.md)."""

    PARAM = "?"
    shared = False
    _db: Any

    def close(self) -> None:
        self._db.close()

    @property
    def initialized(self) -> bool:
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
        row = self._db.execute(
            f"SELECT 1 FROM fingerprints WHERE key = {self.PARAM}", (fingerprint_bytes(key),)
        ).fetchone()
        return row is not None


def stats_json(stats: ChargingStats) -> str:
    """The stored statistics row (once per batch: `as_dict`, not `dataclasses.asdict`, which
    deep-copies every value)."""
    return json.dumps(stats.as_dict())
