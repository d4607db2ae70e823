"""Group commit: state changes collect in a `Batch`, written in ONE transaction, then published.

`Sessions` owns the service's state (the sessions and the statistics). Every change goes
model -> batch -> store -> MQTT, in that order: `apply` runs one transition into the batch
it is given, `flush` commits a batch and publishes each changed session once (its newest
state: the retained message is what matters). A caller outside a batch of incoming messages
(a command's result, a cleanup tick) makes its own batch and flushes it (`apply_now`).

Power window (`power_update_window_s`, the seed's PowerUpdateWindow): a session whose only
change in a batch is power (live power, the estimate, a heartbeat's keep-alive) is published
at most once per window; the change is stored (and counted) at once, and a timer publishes
the session's newest state when its window ends, so the last update is never lost. Any
other change (a status, a settlement) is published at once, with whatever was pending.

Several instances (a shared store, PostgreSQL; docs/scaling.md): the sessions held here are
a cache. Work on sessions runs inside `exclusive(devices)`, which takes the devices' locks in
the store, refreshes the cached sessions of those devices (by version), and gives the locks
back only after the broker acknowledged what was published meanwhile, so that no instance
publishes a session's next version before this one's has landed (a subscriber never sees a
version go back). `flush` then writes with the versions it read (a change by another
instance raises `Conflict`, and the caller runs the batch again after `restore`) and adds
the batch's counts to the store's statistics, which count all instances. The power window
does not apply: a deferred publish would come after the lock is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from typing import cast

from bridge.charging import model as m
from bridge.charging.commands import Publisher
from bridge.charging.energy import DEFAULT_WINDOW_S
from bridge.charging.store import ChargingStore, SessionRow, SharedStore
from bridge.charging.store.postgres import lock_key
from bridge.mqtt.topics import Topics


@dataclasses.dataclass
class Batch:
    """State changes of the messages handled together, written in one transaction."""

    received: float = dataclasses.field(default_factory=time.perf_counter)
    changed: dict[str, m.ChargingSession] = dataclasses.field(default_factory=dict)
    deleted: set[str] = dataclasses.field(default_factory=set)
    seen: dict[str, None] = dataclasses.field(default_factory=dict)  # ordered set
    # Sessions with a change other than power in this batch: published at once.
    urgent: set[str] = dataclasses.field(default_factory=set)
    events: int = 0  # gateway event messages whose processing time is measured
    # Fingerprints of the batch's messages looked up in the store in one query, and those
    # the store already had.
    looked_up: set[str] = dataclasses.field(default_factory=set)
    known: set[str] = dataclasses.field(default_factory=set)
    # What to do once the batch is committed: responses, device commands, security events
    # (a shared store may run a batch twice: its side effects happen once, after the commit).
    after: list[Callable[[], object]] = dataclasses.field(default_factory=list)
    # Shared store: each changed session as it was read (its version is what the write
    # checks; `restore` puts it back), the statistics before the batch, the change of the
    # number of active sessions.
    before: dict[str, m.ChargingSession | None] = dataclasses.field(default_factory=dict)
    stats_before: m.ChargingStats | None = None
    active: int = 0

    def change(self, session: m.ChargingSession) -> None:
        self.deleted.discard(session.session_id)
        self.changed[session.session_id] = session

    def delete(self, session_id: str) -> None:
        self.changed.pop(session_id, None)
        self.deleted.add(session_id)


# The effects of a power-only change (with the status unchanged): subject to the window.
POWER_ONLY: frozenset[m.Effect] = frozenset({m.Effect.CHANGED, m.Effect.POWER_APPLIED})


def power_only(
    old: m.ChargingSession | None, new: m.ChargingSession, effects: frozenset[m.Effect]
) -> bool:
    """Whether a transition changed nothing but live measurements (and `last_update`)."""
    return old is not None and old.status == new.status and effects <= POWER_ONLY


def settlement_key(device_id: str, port: int | None, order_no: str) -> str:
    """Settlements are deduplicated on (device, port, order), as the protocol advises."""
    return f"settled:{device_id}:{port}:{order_no}"


class Sessions:
    """The sessions and statistics, changed only through batches."""

    def __init__(
        self,
        store: ChargingStore,
        topics: Topics,
        publisher: Publisher,
        *,
        clock: Callable[[], float] = time.time,
        energy_window_s: float = DEFAULT_WINDOW_S,
        power_window_s: float = 0.0,
    ) -> None:
        self.store = store
        self.topics = topics
        self.publisher = publisher
        self.clock = clock
        self.energy_window_s = energy_window_s
        self.power_window_s = power_window_s
        self.sessions, self.stats = store.load()
        self.stats_changed = asyncio.Event()
        # A shared store: the statistics as last written (the next write adds what was
        # counted since), the active sessions of all instances, unacknowledged publishes.
        self.shared = cast(SharedStore, store) if store.shared else None
        self._written = self.stats
        self.active_total = self.active_count()
        self._unconfirmed: list[asyncio.Future[None]] = []
        if self.shared is not None:
            self.reload_stats()
        # Power window: when each session was last published (clock time), and the timers
        # of those whose newest state waits for its window to end.
        self._published_at: dict[str, float] = {}
        self._pending: dict[str, asyncio.TimerHandle | None] = {}

    def reload_stats(self) -> None:
        """Shared store: the statistics as stored (all instances'), nothing counted since."""
        assert self.shared is not None
        self.stats, self.active_total = self.shared.current_stats()
        self._written = self.stats

    # --- reading -------------------------------------------------------------------
    def get(self, session_id: str) -> m.ChargingSession | None:
        return self.sessions.get(session_id)

    def active_on(self, device_id: str, port: int) -> m.ChargingSession | None:
        for s in self.sessions.values():
            if s.active and s.device_id == device_id and s.port == port:
                return s
        return None

    def latest_on(self, device_id: str, port: int) -> m.ChargingSession | None:
        on_port = [s for s in self.sessions.values() if s.device_id == device_id and s.port == port]
        return max(on_port, key=lambda s: s.start_time, default=None)

    def on_port(self, device_id: str, port: int) -> m.ChargingSession | None:
        """The session a heartbeat for `port` concerns: the active one, else the port's
        latest if it timed out (the heartbeat shows it is still charging)."""
        active = self.active_on(device_id, port)
        if active is not None:
            return active
        latest = self.latest_on(device_id, port)
        return latest if latest is not None and latest.status == "timeout" else None

    def active_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.active)

    def has_seen(self, batch: Batch, key: str) -> bool:
        """Whether a message (or settlement) with fingerprint `key` was already applied."""
        if key in batch.seen:
            return True
        if key in batch.looked_up:
            return key in batch.known
        return self.store.has_seen(key)

    # --- changing --------------------------------------------------------------------
    def apply(
        self,
        batch: Batch,
        session: m.ChargingSession | None,
        event: m.Event,
        *,
        seen: tuple[str, ...] = (),
        received: bool = False,
    ) -> m.Result:
        """Run one transition into `batch`.

        `received` marks a gateway event message: it is counted as processed (unless it is a
        resent settlement) and its processing time measured.
        """
        new, effects = m.transition(session, event, energy_window=self.energy_window_s)
        if not seen and effects <= m.IGNORED:
            return new, effects
        if self.shared is not None:
            self._note(batch, session, new, effects)
        processed = received and m.Effect.DUPLICATE not in effects
        self.stats = self.stats.tally(effects, new, processed)
        if received:
            batch.events += 1
        if new is not None and m.Effect.CHANGED in effects:
            self.sessions[new.session_id] = new
            batch.change(new)
            if not power_only(session, new, effects):
                batch.urgent.add(new.session_id)
        elif m.Effect.EXPIRED in effects and session is not None:
            self.sessions.pop(session.session_id, None)
            batch.delete(session.session_id)
        if m.Effect.COMPLETED in effects and new is not None:
            seen = (*seen, settlement_key(new.device_id, new.port, new.session_id))
        batch.seen.update(dict.fromkeys(seen))
        self.stats_changed.set()
        return new, effects

    def _note(
        self,
        batch: Batch,
        session: m.ChargingSession | None,
        new: m.ChargingSession | None,
        effects: frozenset[m.Effect],
    ) -> None:
        """Shared store: remember what a change started from (its version, for the write)."""
        if m.Effect.CHANGED in effects and new is not None:
            batch.before.setdefault(new.session_id, session)
            batch.active += new.active - (session is not None and session.active)
        elif m.Effect.EXPIRED in effects and session is not None:
            batch.before.setdefault(session.session_id, session)
            batch.active -= session.active

    def discard(self, batch: Batch, session: m.ChargingSession) -> None:
        """Drop a session (one that never reached a device) in `batch`."""
        if self.shared is not None:
            batch.before.setdefault(session.session_id, session)
            batch.active -= session.active
        self.sessions.pop(session.session_id, None)
        batch.delete(session.session_id)
        self.stats_changed.set()  # active_sessions changed

    def claim(self, batch: Batch, key: str) -> bool:
        """Shared store: record `key` (a request id) as handled in the batch's transaction;
        False if it was already (by any instance). The one instance of an SQLite store
        handles requests as before (a client may reuse an id once it has its answer)."""
        if self.shared is None:
            return True
        return key in self.shared.claim([key], self.clock())

    def restore(self, batch: Batch) -> None:
        """Undo a batch whose write failed (shared store: run again after a refresh)."""
        for session_id, old in batch.before.items():
            if old is None:
                self.sessions.pop(session_id, None)
            else:
                self.sessions[session_id] = old
        if batch.stats_before is not None:
            self.stats = batch.stats_before

    def apply_heartbeat(
        self, batch: Batch, key: str, device_id: str, reports: Sequence[m.PortHeartbeat]
    ) -> None:
        """A device heartbeat (message fingerprint `key`): each report of a charging port
        goes to the session on that port, if there is one; the message counts once."""
        for report in reports:
            session = self.on_port(device_id, report.port)
            if session is not None:
                self.apply(batch, session, report)
        self.count(batch, key, measured=True, total_events_processed=1)

    def apply_now(self, session: m.ChargingSession | None, event: m.Event) -> m.Result:
        """`apply` in a batch of its own, committed and published at once (a shared store:
        within `exclusive` on the session's device)."""
        batch = self.batch()
        try:
            result = self.apply(batch, session, event)
            self.flush(batch)
        except BaseException:
            self.abort(batch)
            raise
        return result

    def batch(self) -> Batch:
        """A new batch; with a shared store, its transaction begins."""
        if self.shared is None:
            return Batch()
        self.shared.begin()
        return Batch(stats_before=self.stats)

    def abort(self, batch: Batch) -> None:
        """A batch that failed before its commit: roll back (shared store) and undo."""
        if self.shared is not None:
            self.shared.rollback()
            self.restore(batch)

    def count(self, batch: Batch, *seen: str, measured: bool = False, **counts: int) -> None:
        """Counts (and fingerprints) of a message that changes no session."""
        self.stats = self.stats.add(**counts)
        batch.seen.update(dict.fromkeys(seen))
        batch.events += measured
        self.stats_changed.set()

    def count_now(self, **counts: int | float) -> None:
        """Counters that need no commit of their own (written with the next one)."""
        self.stats = self.stats.add(**counts)
        self.stats_changed.set()

    def flush(self, batch: Batch) -> None:
        """Commit a batch's changes, then publish each changed session once."""
        if self.shared is not None:
            self._flush_shared(self.shared, batch)
            return
        rows = [(s.session_id, self.store.session_json(s)) for s in batch.changed.values()]
        self.store.commit(
            now=self.clock(),
            sessions=rows,
            deleted=batch.deleted,
            stats=self.stats,
            seen=batch.seen,
        )
        published = [
            self.publish_session(sid, text)
            for sid, text in rows
            if sid in batch.urgent or not self._defer(sid)
        ]
        published += [self.clear_session(sid) for sid in batch.deleted]
        if batch.events:
            self._measure(published, batch.received, batch.events)
        for action in batch.after:
            action()

    def _flush_shared(self, store: SharedStore, batch: Batch) -> None:
        """`flush` on a shared store: version-checked write, counts added, then publish."""
        rows = []
        for s in batch.changed.values():
            old = batch.before.get(s.session_id)
            touched = max(s.last_update, s.end_time or 0.0)
            text = self.store.session_json(s)
            base = None if old is None else old.version
            rows.append(
                SessionRow(s.session_id, s.device_id, base, s.version, s.active, touched, text)
            )
        deleted = [
            (sid, old.version)
            for sid in batch.deleted
            if (old := batch.before.get(sid)) is not None
        ]
        counts = subtract(self.stats, self._written)
        seen = [key for key in batch.seen if key not in batch.looked_up]  # claimed already
        self.stats, self.active_total = store.write(
            now=self.clock(),
            sessions=rows,
            deleted=deleted,
            counts=counts,
            active=batch.active,
            seen=seen,
        )
        self._written = self.stats
        published = [self.publish_session(r.session_id, r.payload) for r in rows]
        published += [self.clear_session(sid) for sid in batch.deleted]
        self._unconfirmed += published
        if batch.events:
            self._measure(published, batch.received, batch.events)
        for action in batch.after:
            action()

    # --- several instances: a shared store ------------------------------------------------
    @contextlib.asynccontextmanager
    async def exclusive(
        self, device_ids: Collection[str], session_ids: Collection[str] = ()
    ) -> AsyncIterator[None]:
        """Hold the devices' locks (a shared store; else nothing to do): the sessions of
        those devices are refreshed from the store on entry, and the locks are given back
        only once the broker acknowledged what was published meanwhile."""
        store = self.shared
        if store is None:
            yield
            return
        keys = sorted({lock_key(d) for d in device_ids})
        held = 0
        try:
            pause = 0.001
            while (held := held + store.try_lock(keys[held:])) < len(keys):
                await asyncio.sleep(pause * (1 + random.random()))
                pause = min(pause * 2, 0.05)
            self.refresh(device_ids, session_ids)
            yield
            await asyncio.gather(*self._unconfirmed, return_exceptions=True)
            self._unconfirmed = [f for f in self._unconfirmed if not f.done()]
        finally:
            store.unlock(keys[:held])

    def republish(self, session: m.ChargingSession) -> None:
        """Publish a session as it is (within `exclusive`, which waits for the broker)."""
        text = self.store.session_json(session)
        self._unconfirmed.append(self.publish_session(session.session_id, text))

    def refresh(self, device_ids: Iterable[str], session_ids: Iterable[str] = ()) -> None:
        """Bring the cached sessions of `device_ids` (and `session_ids`) up to the store:
        those another instance changed are read again, those it deleted dropped."""
        assert self.shared is not None
        devices, wanted = set(device_ids), set(session_ids)
        stored = self.shared.versions(devices, wanted)
        stale = [
            sid
            for sid, version in stored.items()
            if (s := self.sessions.get(sid)) is None or s.version != version
        ]
        for sid, text in self.shared.payloads(stale):
            self.sessions[sid] = m.ChargingSession.from_payload(json.loads(text))
        gone = [
            sid
            for sid, s in self.sessions.items()
            if (s.device_id in devices or sid in wanted) and sid not in stored
        ]
        for sid in gone:
            del self.sessions[sid]
            self.store.forget(sid)

    def device_of(self, session_id: str) -> str | None:
        """The device of a session (cached, else read: a session never changes device)."""
        session = self.sessions.get(session_id)
        if session is None and self.shared is not None:
            for sid, text in self.shared.payloads([session_id]):
                session = self.sessions[sid] = m.ChargingSession.from_payload(json.loads(text))
        return None if session is None else session.device_id

    def _measure(self, published: list[asyncio.Future[None]], received: float, count: int) -> None:
        """Processing time: message receipt until the broker acknowledged its new state."""

        def done(_: object) -> None:
            elapsed_ms = (time.perf_counter() - received) * 1000.0
            self.count_now(total_processing_time_ms=elapsed_ms * count, processing_samples=count)

        if not published:
            done(None)
            return
        # One callback per publish counting down (once per batch: `gather` costs an outer
        # future and a wrapper per child besides).
        left = len(published)

        def one_done(future: asyncio.Future[None]) -> None:
            nonlocal left
            if not future.cancelled():
                future.exception()  # retrieved, as gather(return_exceptions=True) did
            left -= 1
            if left == 0:
                done(None)

        for future in published:
            future.add_done_callback(one_done)

    # --- publishing ------------------------------------------------------------------
    def publish_session(self, session_id: str, payload: str) -> asyncio.Future[None]:
        self._settle_window(session_id)
        self._published_at[session_id] = self.clock()
        return self.publisher.submit(self.topics.session(session_id), payload, retain=True)

    def clear_session(self, session_id: str) -> asyncio.Future[None]:
        self._settle_window(session_id)
        self._published_at.pop(session_id, None)
        return self.publisher.submit(self.topics.session(session_id), b"", retain=True)

    # --- the power window ----------------------------------------------------------------
    @property
    def pending(self) -> set[str]:
        """Sessions whose newest (power-only) state waits for its window to be published."""
        return set(self._pending)

    def _defer(self, session_id: str) -> bool:
        """Whether a power-only change of the session waits for its window (a timer then
        publishes the newest state); False: publish it now."""
        window = self.power_window_s
        last = self._published_at.get(session_id)
        if window <= 0 or last is None or self.shared is not None:
            return False
        wait = last + window - self.clock()
        if wait <= 0:
            return False
        if session_id not in self._pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): publish_due does it
                self._pending[session_id] = None
            else:
                timer = loop.call_later(wait, self._publish_pending, session_id)
                self._pending[session_id] = timer
        return True

    def _settle_window(self, session_id: str) -> None:
        """The session is being published (or cleared): nothing is pending any more."""
        timer = self._pending.pop(session_id, None)
        if timer is not None:
            timer.cancel()

    def _publish_pending(self, session_id: str) -> None:
        self._pending.pop(session_id, None)
        session = self.sessions.get(session_id)
        if session is not None:
            self.publish_session(session_id, self.store.session_json(session))

    def publish_due(self) -> int:
        """Publish the pending sessions whose window has ended by the clock (the cleanup
        pass calls it: the timers' safety net); returns how many."""
        now = self.clock()
        due = [
            sid
            for sid in self._pending
            if now - self._published_at.get(sid, -math.inf) >= self.power_window_s
        ]
        for sid in due:
            self._settle_window(sid)
            self._publish_pending(sid)
        return len(due)

    def publish_all(self) -> list[asyncio.Future[None]]:
        """Every session and the statistics (after a (re)connection)."""
        sessions = list(self.sessions.values())
        out = [self.publish_session(s.session_id, self.store.session_json(s)) for s in sessions]
        out.append(self.publish_stats())
        return out

    def publish_stats(self) -> asyncio.Future[None]:
        active = self.active_total if self.shared is not None else self.active_count()
        payload = self.stats.to_payload(active, self.clock())
        return self.publisher.submit(
            self.topics.charging_stats, json.dumps(payload, separators=(",", ":")), retain=True
        )


def subtract(a: m.ChargingStats, b: m.ChargingStats) -> m.ChargingStats:
    """Counter by counter: what was counted since `b` was written."""
    return m.ChargingStats(
        **{f.name: getattr(a, f.name) - getattr(b, f.name) for f in dataclasses.fields(a)}
    )
