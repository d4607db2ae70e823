"""Links and devices: the `LinkHandler` half of the gateway.

Binds each received frame to its device (online/offline, reconnects, the per-connection and
registry limits), writes frames out, counts bytes and frames, and shows every frame exchanged
to the taps. What a frame means is not decided here: upstream frames go to `on_upstream`
(protocol duties), replies to our commands to `on_reply` (device commands).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import protocol as p
from bridge.gateway import events
from bridge.gateway.clock import Clock
from bridge.gateway.publishing import Publishing
from bridge.gateway.readgate import ReadGate
from bridge.gateway.registry import MAX_DEVICES_PER_CONNECTION, ConnState, Device, Registry
from bridge.gateway.stats import GatewayStats
from bridge.gateway.trust import Trust
from bridge.links.base import Connection
from protocol import BadFrame, ChecksumError, Frame, Garbage, Iccid, Keepalive, Sender, StreamItem

log = logging.getLogger(__name__)

# Observer of every frame exchanged with a device (capture, metrics): who sent it, the device,
# the frame. Called synchronously on the event loop; it must be cheap and must not raise.
FrameTap = Callable[[Sender, Device, Frame], None]
FrameHandler = Callable[[Device, Frame], None]

# Codes from 0x80 up are server commands, so a device frame with one answers us; except the
# host firmware upgrade (0xFA), which a device starts itself.
_FIRST_SERVER_COMMAND = 0x80  # the reference numbers server commands from 0x80
_DEVICE_INITIATED = frozenset({p.command_code("host_firmware_upgrade")})


def is_reply(command: int) -> bool:
    """Whether a device frame answers one of our commands (rather than starting something)."""
    return command >= _FIRST_SERVER_COMMAND and command not in _DEVICE_INITIATED


def _ignore(_: Device, __: Frame) -> None:
    return None


class Connections:
    """Implements `LinkHandler`; `on_upstream`, `on_reply` and `on_offline` are wired by the
    `Gateway` once the units that handle them exist."""

    def __init__(
        self,
        registry: Registry,
        stats: GatewayStats,
        publishing: Publishing,
        clock: Clock,
        trust: Trust,
        debug_devices: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.registry = registry
        self.stats = stats
        self.publishing = publishing
        self.clock = clock
        self.trust = trust
        self.taps: list[FrameTap] = []
        self.on_upstream: FrameHandler = _ignore
        self.on_reply: FrameHandler = _ignore
        # (physical id, why): fail the commands waiting on a device that is gone
        self.on_offline: Callable[[int, str], None] = lambda _pid, _why: None
        self._debug_ids = set(debug_devices)
        self.read_gate = ReadGate(registry, publishing.mqtt, clock)

    # ------------------------------------------------------------------ LinkHandler

    def connection_made(self, conn: Connection) -> None:
        now = self.clock.monotonic()
        self.registry.conns[conn.id] = ConnState(conn, last_rx=now, opened=now)
        if self.read_gate.paused and conn.replaceable:
            conn.pause_reading()
        log.debug("connection open", extra={"peer": conn.peer})

    def connection_dropped(self, conn: Connection, reason: str) -> None:
        self.stats.connections_dropped += 1
        if reason == "per_ip_limit":
            self.stats.connections_refused_per_ip += 1

    def connection_lost(self, conn: Connection) -> None:
        cs = self.registry.conns.pop(conn.id, None)
        if cs is None:
            return
        for pid in cs.devices:
            dev = self.registry.devices.get(pid)
            if dev is not None and dev.conn is conn:
                self.offline(dev, cs.close_reason)
        log.debug("connection closed", extra={"peer": conn.peer})

    def data_received(self, conn: Connection, data: bytes) -> None:
        cs = self.registry.conns.get(conn.id)
        if cs is not None:
            self.items_received(conn, cs.decoder.feed(data), len(data))
            self.read_gate.check()

    def items_received(self, conn: Connection, items: list[StreamItem], nbytes: int) -> None:
        """Decoded stream items of `conn` (from `data_received`; tests feed them directly)."""
        cs = self.registry.conns.get(conn.id)
        if cs is None:
            return
        self.stats.bytes_in += nbytes
        # Only valid input keeps a connection alive: frames acted on, and `link` or the ICCID
        # once a frame was (a trickle of garbage or half a frame does not).
        now = self.clock.monotonic()
        for item in items:
            if isinstance(item, Frame):
                if cs.conn.closed:
                    break  # closed by the rate limit: the rest of this read is not served
                try:
                    self._on_frame(cs, item, now)
                except Exception:
                    # One bad frame must never take the link (or the process) down.
                    log.exception("frame handling failed", extra={"frame": item.encode().hex()})
            elif isinstance(item, Keepalive):
                if cs.framed:
                    cs.last_rx = now
            elif isinstance(item, Iccid):
                cs.iccid = item.value
                if cs.framed:
                    cs.last_rx = now
            elif isinstance(item, Garbage):
                self.stats.garbage_bytes += item.count
            elif isinstance(item, BadFrame):
                self.stats.decode_errors += 1
                if isinstance(item.error, ChecksumError):
                    self.stats.checksum_errors += 1

    # ------------------------------------------------------------------ devices

    def offline(self, dev: Device, reason: str) -> None:
        dev.conn = None
        if not dev.online:
            return
        dev.online = False
        self.on_offline(dev.physical_id, "device is not connected")
        gateway_id = self.publishing.gateway_id
        self.publishing.event(dev, "device", events.offline(dev, gateway_id, reason))
        self.publishing.device_state(dev)
        log.info("device offline", extra={"device_id": dev.device_id, "reason": reason})

    def hand_over(self, dev: Device, gateway_id: str) -> None:
        """Another gateway holds `dev` on a newer connection (docs/scaling.md): let go of it
        without publishing anything, since its state there is the current one. The device is
        forgotten (nothing republishes it), what waits on it answers `offline` saying where
        it went, and the stale TCP connection is closed (the charger left it)."""
        why = f"handed over to gateway {gateway_id}"
        conn = dev.conn
        dev.conn = None
        dev.online = False
        self.registry.devices.pop(dev.physical_id, None)
        self.on_offline(dev.physical_id, why)
        log.info("device handed over", extra={"device_id": dev.device_id, "to": gateway_id})
        if conn is None:
            return
        cs = self.registry.conns.get(conn.id)
        if cs is not None:
            cs.devices.discard(dev.physical_id)
            if conn.replaceable and not conn.closed:
                cs.close_reason = "handed_over"
                conn.close()

    def _on_frame(self, cs: ConnState, frame: Frame, now: float) -> None:
        self.stats.frames_in += 1
        dev = self._bind(cs, frame, now)
        if dev is None:
            return
        cs.last_rx = now
        cs.framed = True
        if dev.device_id in self._debug_ids:
            log.info("frame in", extra={"device_id": dev.device_id, "hex": frame.encode().hex(" ")})
        if self.taps:
            for tap in tuple(self.taps):  # a tap may remove itself (a capture that ends)
                tap(Sender.DEVICE, dev, frame)
        if is_reply(frame.command):
            self.on_reply(dev, frame)
        else:
            self.on_upstream(dev, frame)

    def _bind(self, cs: ConnState, frame: Frame, now: float) -> Device | None:
        """The device `frame` is acted on for, or None when it must not be (limits, trust)."""
        conn = cs.conn
        if frame.physical_id not in cs.devices and len(cs.devices) >= MAX_DEVICES_PER_CONNECTION:
            self.stats.decode_errors += 1
            if not cs.warned:
                cs.warned = True  # once per connection: a flood must not flood the log too
                log.warning(
                    "too many physical ids on one connection, ignoring new ones",
                    extra={"peer": conn.peer, "physical_id": f"{frame.physical_id:08X}"},
                )
            return None
        trust = self.trust
        refusal = trust.refusal(cs, frame.physical_id)
        if refusal is not None:
            trust.refuse(cs, frame, refusal, now)
            return None
        dev = self.registry.device(frame.physical_id)
        if dev is None:
            self.stats.device_limit_frames += 1
            if not cs.warned:
                cs.warned = True
                log.warning(
                    "max_devices reached, ignoring a new physical id",
                    extra={"peer": conn.peer, "physical_id": f"{frame.physical_id:08X}"},
                )
            return None
        if not trust.frame_allowed(dev, cs, frame, now):
            return None
        trust.accepted(cs, frame.physical_id)
        if dev.conn is not conn:
            old = dev.conn
            dev.conn = conn
            dev.connected_at = self.clock.time()
            cs.devices.add(dev.physical_id)
            if old is not None:
                old_cs = self.registry.conns.get(old.id)
                if old_cs is not None:
                    old_cs.devices.discard(dev.physical_id)
                    if old.replaceable and not old_cs.devices:
                        log.info(
                            "device reconnected, closing its old connection",
                            extra={"device_id": dev.device_id, "old": old.peer},
                        )
                        old.close()
        if cs.iccid is not None:
            dev.iccid = cs.iccid
        dev.last_seen = self.clock.time()
        dev.last_rx = now
        if not dev.online:
            dev.online = True
            online = events.online(dev, self.publishing.gateway_id, frame, conn.peer)
            self.publishing.event(dev, "device", online)
            self.publishing.device_state(dev)
            log.info("device online", extra={"device_id": dev.device_id, "peer": conn.peer})
        return dev

    # ------------------------------------------------------------------ writing

    def write(self, dev: Device, frame: Frame, raw: bytes | None = None) -> bool:
        """Write one frame (`raw`: its bytes when already encoded); the taps see `frame`
        itself, never a decode of the bytes."""
        conn = dev.conn
        if conn is None:
            return False
        if raw is None:
            raw = frame.encode()
        if not conn.write(raw):
            return False
        self.stats.frames_out += 1
        self.stats.bytes_out += len(raw)
        if dev.device_id in self._debug_ids:
            log.info("frame out", extra={"device_id": dev.device_id, "hex": raw.hex(" ")})
        if self.taps:
            for tap in tuple(self.taps):
                tap(Sender.SERVER, dev, frame)
        return True

    def send_command(self, dev: Device, frame: Frame, raw: bytes) -> bool:
        return dev.online and self.write(dev, frame, raw)
