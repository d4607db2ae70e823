"""Trust on the device port: which connection may speak for a physical id, and how fast.

DNY has no authentication (docs/reliability.md, "The device port"): any TCP peer can send
frames under any physical id. The guards here run on every frame, so each is a dict lookup
or a little arithmetic, and nothing touches the disk unless a pin changes:

- `device_policy`: `pinned` (the ICCID first seen with each physical id, kept in a
  `PinStore`), `allowlist` (`device_allowlist`) or `open`. A frame that fails it is not acted
  on at all: no reply, no event, no binding.
- a token bucket per device (`frame_rate_limit` after a burst of `frame_rate_burst`); a TCP
  connection that has more than a burst of frames dropped within one
  `security_event_interval_s` is closed.
- `security` device events for both, at most one per device and reason per interval, so a
  flood cannot flood MQTT; the refused frames are counted in the gateway stats.

Serial lines carry no ICCID: pins do not apply there (the allowlist's ids do).

With `--workers N` the worker processes share one pin file (`SqlitePinStore(shared=True)`):
a worker reads the file only when its memory cannot settle a frame (an id it has no pin for,
or an ICCID that differs from the pin it remembers), so a pin or `unpin` made by one worker
holds in every other at once, and the common case stays a dict lookup. A counter beside the
file (`PinGeneration`), bumped after every pin write, says when what a worker read is still
current, so even a charger that never sent an ICCID costs a dict lookup per frame, not a read.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.config import GatewaySettings
from bridge.gateway.clock import Clock
from bridge.gateway.publishing import Publishing
from bridge.gateway.registry import MAX_DEVICES, ConnState, Device
from bridge.gateway.stats import GatewayStats
from bridge.mqtt.payloads import CommandResponse, SecurityEvent, iso_utc, response
from protocol import Frame
from protocol.ids import device_id

log = logging.getLogger(__name__)

PINS_FILENAME = "gateway-pins.sqlite3"  # one gateway per state dir, like the outbox
SHARED_BUSY_TIMEOUT_S = 2.0  # wait for another worker's write to the shared pin file
MAX_NOTICES = 10_000  # (device, reason) pairs remembered for rate-limiting security events


class PinStoreError(OSError):
    """The pin file cannot be used; the message names it and the way out."""


class PinStore:
    """Pinned ICCIDs by physical id, in memory (unit tests, gateways built without a state
    dir); `SqlitePinStore` persists them. Bounded by `max_pins`: when full, a new physical id
    is not pinned (its frames are still served), so junk ids cannot evict the fleet's pins."""

    shared = False  # another process may change the pins (see `fresh`)

    def __init__(self, max_pins: int = MAX_DEVICES) -> None:
        self.max_pins = max_pins
        self.pins: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.pins)

    def pin(self, physical_id: int, iccid: str) -> bool:
        """Pin `iccid` to `physical_id`; False when the store is full."""
        if len(self.pins) >= self.max_pins:
            return False
        self.pins[physical_id] = iccid
        self._stored(physical_id, iccid)
        return True

    def unpin(self, physical_id: int) -> str | None:
        """Forget the pin; returns the ICCID that was pinned, if any."""
        iccid = self.pins.pop(physical_id, None)
        if iccid is not None:
            self._removed(physical_id)
        return iccid

    def fresh(self, physical_id: int) -> str | None:
        """The pin as it is now, also if another process sharing the store changed it."""
        return self.pins.get(physical_id)

    def _stored(self, physical_id: int, iccid: str) -> None:
        """Persist one new pin (nothing to do in memory)."""

    def _removed(self, physical_id: int) -> None:
        """Persist one removal (nothing to do in memory)."""

    def close(self) -> None:
        """Release the file (nothing to do in memory)."""


class PinGeneration:
    """An 8-byte counter in a file beside the shared pin store, bumped after every pin write
    (under a file lock, so no bump is lost). A worker that read a pin, or its absence, at
    generation G may answer from memory while the counter still says G: reading it is a
    memory load through mmap (~2 µs on our CI VM), where the SELECT costs 60-90 µs per frame.
    Bumping after the commit, never before, means a reader can only see a newer number with
    data at least as new."""

    SIZE = 8

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.ftruncate(fd, self.SIZE)  # zero-filled; two creators at once agree
            self._map = mmap.mmap(fd, self.SIZE)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def read(self) -> int:
        return int.from_bytes(self._map[: self.SIZE], "little")

    def bump(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._map[: self.SIZE] = (self.read() + 1).to_bytes(self.SIZE, "little")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class SqlitePinStore(PinStore):
    """Pins in SQLite under `--state-dir`, read once at start and written through, one small
    transaction per change: pins change when a charger is first seen or unpinned, never per
    frame.

    `shared`: several gateway processes use the file at once (`--workers`). WAL lets them read
    while one writes, the busy timeout waits out another's (tiny) write, a new pin never
    replaces one another process made meanwhile, and `fresh` reads the file."""

    def __init__(self, path: Path, max_pins: int = MAX_DEVICES, *, shared: bool = False) -> None:
        super().__init__(max_pins)
        self.path = path
        self.shared = shared
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            timeout = SHARED_BUSY_TIMEOUT_S if shared else 0.5
            self._db = sqlite3.connect(path, isolation_level=None, timeout=timeout)
        except (OSError, sqlite3.Error) as exc:
            raise PinStoreError(f"cannot open the pin store {path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pins (physical_id INTEGER PRIMARY KEY,"
                " iccid TEXT NOT NULL, pinned_at REAL NOT NULL)"
            )
            rows = self._db.execute(
                "SELECT physical_id, iccid FROM pins ORDER BY pinned_at LIMIT ?", (max_pins,)
            ).fetchall()
        except sqlite3.Error as exc:
            self._db.close()
            raise PinStoreError(
                f"the pin store {path} is unusable ({exc}); move it away to start with no pins"
            ) from None
        self.pins = {int(pid): str(iccid) for pid, iccid in rows}
        # Shared: the ids whose pin (or none) `pins` holds as of generation `_seen`.
        self._generation: PinGeneration | None = None
        self._seen = -1
        self._current: set[int] = set()
        if shared:
            try:
                self._generation = PinGeneration(path.with_name(path.name + "-generation"))
            except OSError as exc:
                self._db.close()
                raise PinStoreError(f"cannot open the pin store {path}: {exc}") from None

    def fresh(self, physical_id: int) -> str | None:
        generation = self._generation
        if generation is None:
            return self.pins.get(physical_id)
        seen = generation.read()  # before the SELECT: what we read is at least this new
        if seen != self._seen:
            self._seen = seen
            self._current.clear()
        elif physical_id in self._current:
            return self.pins.get(physical_id)
        try:
            row = self._db.execute(
                "SELECT iccid FROM pins WHERE physical_id = ?", (physical_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            log.error("pin store read failed", extra={"path": str(self.path), "error": str(exc)})
            return self.pins.get(physical_id)
        if row is None:
            self.pins.pop(physical_id, None)
            iccid = None
        else:
            iccid = str(row[0])
            if physical_id in self.pins or len(self.pins) < self.max_pins:
                self.pins[physical_id] = iccid
        # Only what memory now holds may be answered from it; bounded like the pins.
        if self.pins.get(physical_id) == iccid and len(self._current) < self.max_pins:
            self._current.add(physical_id)
        return iccid

    def unpin(self, physical_id: int) -> str | None:
        self.fresh(physical_id)  # a pin another worker made is forgotten too
        return super().unpin(physical_id)

    def _stored(self, physical_id: int, iccid: str) -> None:
        if not self.shared:
            self._write(
                "INSERT OR REPLACE INTO pins (physical_id, iccid, pinned_at) VALUES (?, ?, ?)",
                (physical_id, iccid, time.time()),
            )
            return
        # Another worker may have pinned this id since we looked: its pin stands.
        self._write(
            "INSERT OR IGNORE INTO pins (physical_id, iccid, pinned_at) VALUES (?, ?, ?)",
            (physical_id, iccid, time.time()),
        )
        self._changed()
        self.fresh(physical_id)

    def _removed(self, physical_id: int) -> None:
        self._write("DELETE FROM pins WHERE physical_id = ?", (physical_id,))
        self._changed()

    def _changed(self) -> None:
        """After a write has committed (autocommit): tell every worker to read again."""
        if self._generation is not None:
            self._generation.bump()

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            # The pin holds in memory for this run; say that it will not survive a restart.
            log.error("pin store write failed", extra={"path": str(self.path), "error": str(exc)})

    def close(self) -> None:
        self._db.close()
        if self._generation is not None:
            self._generation.close()


@dataclass(slots=True)
class _Notice:
    at: float  # monotonic time of the last published security event
    frames: int = 0  # frames refused since, not yet reported


class Trust:
    """The device-port guards for `Connections`; `unpin` serves the request of that name."""

    def __init__(
        self,
        settings: GatewaySettings,
        stats: GatewayStats,
        publishing: Publishing,
        clock: Clock,
        pins: PinStore | None = None,
    ) -> None:
        self.policy = settings.device_policy
        self.allowlist = settings.allowlist
        self.rate = settings.frame_rate_limit
        self.burst = float(settings.frame_rate_burst)
        self.interval = settings.security_event_interval_s
        self.stats = stats
        self.publishing = publishing
        self.clock = clock
        self.pins = pins if pins is not None else PinStore(settings.max_devices)
        self._notices: dict[tuple[int, str], _Notice] = {}
        self._full_warned = False
        stats.pins = len(self.pins)

    # ------------------------------------------------------------------ per frame

    def refusal(self, cs: ConnState, physical_id: int) -> str | None:
        """Why `cs` may not speak for `physical_id` under `device_policy`; None if it may."""
        policy = self.policy
        if policy == "open":
            return None
        tcp = cs.conn.kind == "tcp"
        if policy == "pinned":
            if not tcp:
                return None
            pinned = self.pins.pins.get(physical_id)
            if pinned is not None and pinned == cs.iccid:
                return None
            if self.pins.shared:  # another worker may have pinned or unpinned it meanwhile
                pinned = self.pins.fresh(physical_id)
            if pinned is None or pinned == cs.iccid:
                return None
            return "pin_mismatch"
        if physical_id not in self.allowlist:
            return "not_allowed"
        wanted = self.allowlist[physical_id]
        if wanted is None or not tcp or (cs.iccid is not None and cs.iccid.upper() == wanted):
            return None
        return "pin_mismatch"

    def refuse(self, cs: ConnState, frame: Frame, reason: str, now: float) -> None:
        if reason == "not_allowed":
            self.stats.frames_not_allowed += 1
        else:
            self.stats.frames_pin_mismatch += 1
        self._notice(cs, frame, reason, now, closed=False)

    def frame_allowed(self, dev: Device, cs: ConnState, frame: Frame, now: float) -> bool:
        """One token of the device's bucket; without one the frame is dropped, and a TCP
        connection with more than a burst of drops in one interval is closed."""
        tokens = dev.frame_tokens + (now - dev.frame_tokens_at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        dev.frame_tokens_at = now
        if tokens >= 1.0:
            dev.frame_tokens = tokens - 1.0
            return True
        dev.frame_tokens = tokens
        self.stats.frames_rate_limited += 1
        if now - cs.rate_window_at >= self.interval:
            cs.rate_window_at = now
            cs.rate_drops = 0
        cs.rate_drops += 1
        conn = cs.conn
        closing = cs.rate_drops > self.burst and conn.replaceable and not conn.closed
        if closing:
            cs.close_reason = "rate_limited"
            self.stats.connections_closed_rate_limited += 1
            log.warning(
                "closing a connection that keeps exceeding the frame rate limit",
                extra={"peer": conn.peer, "device_id": dev.device_id},
            )
            conn.close()
        self._notice(cs, frame, "rate_limited", now, closed=closing)
        return False

    def accepted(self, cs: ConnState, physical_id: int) -> None:
        """A frame of `physical_id` was acted on: pin the connection's ICCID if none is."""
        if self.policy != "pinned" or cs.iccid is None or physical_id in self.pins.pins:
            return
        if cs.conn.kind != "tcp":
            return
        if self.pins.pin(physical_id, cs.iccid):
            self.stats.pins = len(self.pins)
            log.info(
                "ICCID pinned",
                extra={"device_id": device_id(physical_id), "iccid": cs.iccid},
            )
        elif not self._full_warned:
            self._full_warned = True
            log.warning(
                "pin store full (max_devices): new physical ids are served unpinned",
                extra={"device_id": device_id(physical_id), "pins": len(self.pins)},
            )

    def _notice(self, cs: ConnState, frame: Frame, reason: str, now: float, closed: bool) -> None:
        """A `security` event, unless one went out for this device and reason within the
        interval (then it is counted and reported with the next one)."""
        key = (frame.physical_id, reason)
        notice = self._notices.get(key)
        if notice is not None and now - notice.at < self.interval:
            notice.frames += 1
            self.stats.security_events_suppressed += 1
            return
        if notice is None:
            if len(self._notices) >= MAX_NOTICES:
                self._forget_notices(now)
                if len(self._notices) >= MAX_NOTICES:
                    self.stats.security_events_suppressed += 1
                    return
            frames = 1
            self._notices[key] = _Notice(now)
        else:
            frames = notice.frames + 1
            notice.at = now
            notice.frames = 0
        dev_id = device_id(frame.physical_id)
        event = SecurityEvent(
            ts=iso_utc(),
            device_id=dev_id,
            gateway_id=self.publishing.gateway_id,
            command=frame.command,
            message_id=frame.message_id,
            reason=reason,
            peer=cs.conn.peer,
            iccid=cs.iccid,
            frames=frames,
            action="closed" if closed else "dropped",
        )
        self.publishing.submit(self.publishing.topics.event(dev_id, "device"), event)
        log.warning(
            "frames refused",
            extra={"device_id": dev_id, "reason": reason, "peer": cs.conn.peer, "frames": frames},
        )

    def _forget_notices(self, now: float) -> None:
        expired = [k for k, n in self._notices.items() if now - n.at >= self.interval]
        for key in expired:
            del self._notices[key]

    # ------------------------------------------------------------------ requests

    def unpin(self, physical_id: int, request_id: str | None) -> CommandResponse:
        """The `unpin` request: forget the pin, so that the next connection pins anew."""
        iccid = self.pins.unpin(physical_id)
        self.stats.pins = len(self.pins)
        if iccid is None:
            return response(request_id, True, "ok", "no ICCID was pinned", iccid=None)
        log.warning("ICCID unpinned", extra={"device_id": device_id(physical_id), "iccid": iccid})
        return response(
            request_id,
            True,
            "ok",
            "pin forgotten; the next connection bringing an ICCID pins anew",
            iccid=iccid,
        )
