"""Where `MqttClient` keeps outgoing messages until the broker acknowledged them.

`Outbox` keeps them in memory (the charging service and the tools: what they publish is derived
from durable state and published again after a restart); `SqliteOutbox` also writes them to
SQLite under `--state-dir` by group commit, so a gateway crash loses nothing it had stored
(API.md section 7; what is durable when: `SqliteOutbox` and docs/reliability.md).

Both are bounded by `max_messages`: beyond it the oldest non-critical messages that are not in
flight are dropped and counted in `dropped`. Critical messages (the gateway's `settled` events)
are never dropped, so a flood of them could exceed the bound; devices send one per charge.

A retained, non-critical message supersedes a queued (not yet sent) one on the same topic: the
old one is removed and the new one goes to the end, so a retained state is never published before
the events that led to it and a flood of heartbeats costs one queued state per device.

A message may carry a `key` (the gateway's settlement content): while it is queued, `find_key`
returns its sequence number; once acknowledged, the key is remembered for `key_ttl_s` (across
restarts with `SqliteOutbox`), so a device resending a settlement never produces a second event.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("chargebridge.mqtt")

DEFAULT_MAX_MESSAGES = 100_000
KEYS_REMEMBERED = 20_000
KEY_TTL_S = 24 * 3600.0
# SqliteOutbox's group commit: at most this long between a change and its transaction...
COMMIT_WINDOW_S = 0.01
# ...and at most this many queued changes (a burst is written at once, in bounded groups).
MAX_GROUP = 512
RETRY_S = 1.0  # after a failed write (disk full)


@dataclass(slots=True)
class OutboxMessage:
    seq: int  # submission order, also across restarts with SqliteOutbox
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None = None
    critical: bool = False
    key: str | None = None


@dataclass(slots=True)
class Added:
    """What `Outbox.add` did: the new message's seq, the queued message it superseded (same
    retained topic) and the messages dropped to stay within the bound."""

    seq: int
    replaced: int | None
    dropped: list[int]


class Outbox:
    """In-memory outbox; `SqliteOutbox` adds durability through the `_stored`/`_removed` hooks."""

    def __init__(
        self,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        *,
        coalesce_retained: bool = True,
        key_ttl_s: float = KEY_TTL_S,
    ) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.max_messages = max_messages
        self.coalesce_retained = coalesce_retained
        self.key_ttl_s = key_ttl_s
        self.dropped = 0
        self._next_seq = 1
        self._pending: OrderedDict[int, OutboxMessage] = OrderedDict()
        self._droppable: OrderedDict[int, None] = OrderedDict()  # non-critical pending seqs
        self._inflight: dict[int, OutboxMessage] = {}
        self._retained: dict[str, int] = {}  # topic -> seq of a pending retained message
        self._keys: dict[str, int] = {}  # key -> seq of a queued message
        self._published: OrderedDict[str, float] = OrderedDict()  # key -> wall-clock time

    def __len__(self) -> int:
        return len(self._pending) + len(self._inflight)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def seqs(self) -> list[int]:
        """Every queued message's seq (pending and in flight)."""
        return [*self._inflight, *self._pending]

    # ------------------------------------------------------------------ queueing

    def add(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        critical: bool = False,
        key: str | None = None,
    ) -> Added:
        seq = self._next_seq
        self._next_seq += 1
        message = OutboxMessage(seq, topic, payload, qos, retain, properties, critical, key)
        replaced = None
        if retain and not critical and self.coalesce_retained:
            replaced = self._retained.get(topic)
            if replaced is not None:
                self._discard(replaced)
        self._enqueue(message)
        self._stored(message)
        dropped = []
        while len(self) > self.max_messages and self._droppable:
            oldest, _ = self._droppable.popitem(last=False)
            self._discard(oldest)
            dropped.append(oldest)
        self.dropped += len(dropped)
        return Added(seq, replaced, dropped)

    def _enqueue(self, message: OutboxMessage) -> None:
        self._pending[message.seq] = message
        if not message.critical:
            self._droppable[message.seq] = None
        if message.retain and not message.critical:
            self._retained.setdefault(message.topic, message.seq)
        if message.key is not None:
            self._keys[message.key] = message.seq

    def _discard(self, seq: int) -> None:
        """Remove a pending message without publishing it."""
        message = self._pending.pop(seq)
        self._droppable.pop(seq, None)
        self._unindex(message)
        self._removed(seq)

    def _unindex(self, message: OutboxMessage) -> None:
        if self._retained.get(message.topic) == message.seq:
            del self._retained[message.topic]
        if message.key is not None and self._keys.get(message.key) == message.seq:
            del self._keys[message.key]

    # ------------------------------------------------------------------ sending

    def take(self) -> OutboxMessage | None:
        """The oldest pending message, now in flight; None when nothing is pending."""
        if not self._pending:
            return None
        seq, message = self._pending.popitem(last=False)
        self._droppable.pop(seq, None)
        if self._retained.get(message.topic) == seq:
            del self._retained[message.topic]
        self._inflight[seq] = message
        return message

    def acked(self, seq: int) -> None:
        """The broker acknowledged the message: forget it, remember its key."""
        message = self._inflight.pop(seq, None)
        if message is None:
            return
        if message.key is not None:
            self._unindex(message)
            self._remember(message.key, time.time())
        self._removed(seq, published_key=message.key)

    def failed(self, seq: int) -> None:
        """The broker refused the message: forget it (a keyed one may be submitted again)."""
        message = self._inflight.pop(seq, None)
        if message is not None:
            self._unindex(message)
            self._removed(seq)

    def requeue(self) -> None:
        """After a lost connection: in-flight messages go back to the front, in order."""
        for seq in sorted(self._inflight, reverse=True):
            message = self._inflight.pop(seq)
            self._pending[seq] = message
            self._pending.move_to_end(seq, last=False)
            if not message.critical:
                self._droppable[seq] = None
                self._droppable.move_to_end(seq, last=False)

    # ------------------------------------------------------------------ keys

    def find_key(self, key: str) -> int | bool:
        """The seq of the queued message with `key`, True if one was published within
        `key_ttl_s`, else False."""
        seq = self._keys.get(key)
        if seq is not None:
            return seq
        at = self._published.get(key)
        return at is not None and time.time() - at < self.key_ttl_s

    def _remember(self, key: str, at: float) -> None:
        self._published[key] = at
        self._published.move_to_end(key)
        while len(self._published) > KEYS_REMEMBERED:
            self._published.popitem(last=False)

    # ------------------------------------------------------------------ persistence hooks

    def _stored(self, message: OutboxMessage) -> None:
        """A message was queued (SqliteOutbox writes it)."""

    def _removed(self, seq: int, published_key: str | None = None) -> None:
        """A message left the outbox, published or not (SqliteOutbox deletes it)."""

    def flush(self) -> None:
        """Make every change durable (nothing to do in memory)."""

    def close(self) -> None:
        self.flush()


SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, critical INTEGER NOT NULL, key TEXT, properties BLOB);
CREATE TABLE IF NOT EXISTS published (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS published_at ON published (at);
"""


class OutboxLocked(OSError):
    """Another process (a second gateway on the same state dir) holds the outbox."""


class SqliteOutbox(Outbox):
    """The outbox in SQLite (WAL, `synchronous=NORMAL`: a commit survives a crash of the process,
    not necessarily a power cut), written by group commit so that a message costs a fraction of
    a transaction (docs/reliability.md, Durable outbox):

    - changes (new messages, deletions of acknowledged ones, published keys) are collected for
      at most `commit_window_s` after the first one, or `MAX_GROUP` changes, and written in one
      transaction: a message is durable (on disk, or acknowledged by the broker) at the latest
      `commit_window_s` after it was queued; `stored()` waits for it;
    - a non-critical message may be handed out for publishing before it is written; if the
      broker acknowledges it within the window it is never written at all (the broker has it).
      The timer ticks every half window while changes are pending; a tick writes (every
      change) only if a message queued before the previous tick (half a window to a window
      old) is still unacknowledged, so one just queued, whose acknowledgement is a round trip
      away, is not written because the timer happened to end right after it;
    - a critical or keyed message (a settlement) is written at once, with everything queued
      before it, and its key as soon as the broker acknowledged it, before the caller hears
      of the acknowledgement (the device's 0x03 reply): a crash never loses a settlement the
      gateway received, nor publishes one twice after its reply.

    Queued messages are also kept in memory (bounded by `max_messages`). The database is locked
    exclusively while open: a second gateway on the same state dir fails at start. A failing
    write (disk full) is logged and retried with the next change; publishing goes on from memory.
    """

    def __init__(
        self,
        path: Path,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        *,
        coalesce_retained: bool = True,
        key_ttl_s: float = KEY_TTL_S,
        commit_window_s: float = COMMIT_WINDOW_S,
    ) -> None:
        super().__init__(max_messages, coalesce_retained=coalesce_retained, key_ttl_s=key_ttl_s)
        self.commit_window_s = commit_window_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=0.5)
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now, held until close
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise OutboxLocked(f"{path} is in use by another process") from None
            raise
        self._write_failing = False
        self._inserts: dict[int, OutboxMessage] = {}  # queued before the last tick
        self._young: dict[int, OutboxMessage] = {}  # queued since: written at the tick after
        self._deletes: list[int] = []
        self._deletes_waited = False  # deletes alone were pending at the previous tick
        self.rows_written = 0  # messages written so far (for benchmarks and tests)
        self._keys_published: list[tuple[str, float]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._load()

    def _load(self) -> None:
        db = self._db
        db.execute("DELETE FROM published WHERE at < ?", (time.time() - self.key_ttl_s,))
        db.execute(
            "DELETE FROM published WHERE key NOT IN"
            " (SELECT key FROM published ORDER BY at DESC LIMIT ?)",
            (KEYS_REMEMBERED,),
        )
        for key, at in db.execute("SELECT key, at FROM published ORDER BY at"):
            self._remember(key, at)
        rows = db.execute(
            "SELECT seq, topic, payload, qos, retain, critical, key, properties"
            " FROM outbox ORDER BY seq"
        ).fetchall()
        for seq, topic, payload, qos, retain, critical, key, props in rows:
            properties = None
            if props is not None:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.unpack(props)  # type: ignore[no-untyped-call]
            message = OutboxMessage(
                seq, topic, bytes(payload), qos, bool(retain), properties, bool(critical), key
            )
            self._enqueue(message)
            self._next_seq = seq + 1

    @property
    def unstored(self) -> int:
        """Changes not yet written (queued messages, deletions, published keys)."""
        return (
            len(self._inserts) + len(self._young) + len(self._deletes) + len(self._keys_published)
        )

    def _stored(self, message: OutboxMessage) -> None:
        if message.critical or message.key is not None:
            self._inserts[message.seq] = message
            self.flush()  # a settlement: on disk at once, with everything queued before it
        else:
            self._young[message.seq] = message
            self._schedule_flush()

    def _removed(self, seq: int, published_key: str | None = None) -> None:
        # never written (young or waiting for its tick): nothing to delete
        if self._young.pop(seq, None) is None and self._inserts.pop(seq, None) is None:
            self._deletes.append(seq)
        if published_key is not None:
            self._keys_published.append((published_key, time.time()))
            self.flush()  # remembered before the caller hears of the acknowledgement
        else:
            self._schedule_flush()

    def _schedule_flush(self, delay: float | None = None) -> None:
        if self._closed:
            return
        if self._flush_handle is not None:
            changes = len(self._inserts) + len(self._young) + len(self._deletes)
            if changes >= MAX_GROUP and not self._write_failing:
                self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tools, tests): flushed by the next critical change and close()
        if delay is not None:  # a retry after a failed write: everything
            self._flush_handle = loop.call_later(delay, self.flush)
        elif self.commit_window_s > 0:
            self._flush_handle = loop.call_later(self.commit_window_s / 2, self._tick)
        else:
            self._flush_handle = loop.call_soon(self.flush)

    def _tick(self) -> None:
        """While a message queued before the previous tick is unacknowledged: write every
        change (a transaction at most every other tick, as often as before the ticks). Else
        what was queued since waits for the next tick (half a window later) and is never
        written if acknowledged by then; deletes alone wait one tick more (for company), and
        are then written without the messages queued since: those, written only to be
        deleted a tick later, made each such write cause the next for as long as messages
        flowed (at 1,000 frames/s a transaction every other tick, from one late PUBACK on)."""
        self._flush_handle = None
        if self._closed:
            return
        if self._inserts or self._keys_published:
            self.flush()
            return
        if self._deletes and self._deletes_waited:
            try:
                self._write(())
            except sqlite3.Error as exc:
                self._write_failed(exc)
                return
            self._deletes.clear()
            self._writable_again()
        self._deletes_waited = bool(self._deletes)
        self._inserts, self._young = self._young, self._inserts
        if self.unstored:
            self._schedule_flush()
        else:
            self._wake_waiters()

    def take(self) -> OutboxMessage | None:
        if self._inserts and self._pending:  # settlements are never young
            first = next(iter(self._pending.values()))
            if (first.critical or first.key is not None) and first.seq in self._inserts:
                self.flush()  # on disk before it is published (only if a write failed)
        return super().take()

    async def stored(self) -> None:
        """Wait until every change so far is written (at most `commit_window_s`)."""
        if not self.unstored:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule_flush()
        await waiter

    def flush(self) -> None:
        """Write every change now, in one transaction."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._closed:
            return
        if not self.unstored:
            self._wake_waiters()
            return
        try:
            self._write([*self._inserts.values(), *self._young.values()])
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return
        self._written()
        self._wake_waiters()

    def _write_failed(self, exc: sqlite3.Error) -> None:
        if not self._write_failing:
            log.error("cannot write the outbox %s: %s; retrying", self.path, exc)
        self._write_failing = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._schedule_flush(RETRY_S)

    def _writable_again(self) -> None:
        if self._write_failing:
            log.info("outbox %s writable again", self.path)
            self._write_failing = False

    def _written(self) -> None:
        self._writable_again()
        self._inserts.clear()
        self._young.clear()
        self._deletes.clear()
        self._deletes_waited = False
        self._keys_published.clear()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _write(self, inserts: Iterable[OutboxMessage]) -> None:
        rows = [
            (
                m.seq,
                m.topic,
                m.payload,
                m.qos,
                int(m.retain),
                int(m.critical),
                m.key,
                m.properties.pack() if m.properties is not None else None,  # type: ignore[no-untyped-call]
            )
            for m in inserts
        ]
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in self._deletes])
            if self._keys_published:
                db.executemany(
                    "INSERT OR REPLACE INTO published VALUES (?, ?)", self._keys_published
                )
                db.execute("DELETE FROM published WHERE at < ?", (time.time() - self.key_ttl_s,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.rows_written += len(rows)

    def stored_count(self) -> int:
        """Rows on disk (for tests and benchmarks)."""
        row = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(row[0])

    def close(self) -> None:
        self.flush()
        if self._flush_handle is not None:  # a write that failed: its retry
            self._flush_handle.cancel()
            self._flush_handle = None
        self._closed = True  # changes after this (late acknowledgements) stay in memory
        self._db.close()
