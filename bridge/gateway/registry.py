"""Devices by physical id and the connections they are reachable on.

A connection is bound to a device by the first frame carrying its physical id; a host or an
RS-485 line binds many. A device seen on a second connection moves there (it reconnected); the
old TCP connection is closed once no device is left on it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.links.base import Connection
from bridge.mqtt.payloads import DeviceState, PortState, iso_utc
from bridge.mqtt.payloads.fast import FastJson
from protocol import StreamDecoder
from protocol.enums import device_type_name, host_type_name
from protocol.ids import device_id, device_kind, device_number


@dataclass(slots=True, eq=False)
class ConnState:
    """`last_rx` moves only with valid input (a frame acted on; `link` and the ICCID once the
    connection has had one), so a peer trickling garbage or half a frame is still idle.
    `framed`: a frame was acted on; without one the connection lives `first_frame_timeout_s`."""

    conn: Connection
    decoder: StreamDecoder = field(default_factory=StreamDecoder)  # this byte stream's framing
    iccid: str | None = None
    devices: set[int] = field(default_factory=set)
    last_rx: float = field(default_factory=time.monotonic)
    close_reason: str = "closed"
    warned: bool = False
    opened: float = field(default_factory=time.monotonic)
    framed: bool = False
    rate_window_at: float = 0.0  # monotonic start of the window counting `rate_drops`
    rate_drops: int = 0  # frames dropped over the rate limit in that window


class PortRecord(NamedTuple):
    """A port's last published state as kept per device: the `PortState` fields in a tuple
    (about 150 bytes instead of the model's ~1.2 KB with its `__dict__` and fields-set)."""

    port: int
    status: str
    status_code: int
    power_w: float | None
    order_no: str | None
    updated_at: str
    energy_kwh: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None
    port_temperature_c: float | None = None
    measured_at: str | None = None

    @classmethod
    def of(cls, state: PortState) -> PortRecord:
        return cls(*[getattr(state, name) for name in cls._fields])

    def model(self) -> PortState:
        """The payload again (its values were validated when it was first built)."""
        return PortState.model_construct(**self._asdict())

    def same_as(self, other: PortRecord) -> bool:
        """Equal but for `updated_at` (a heartbeat repeating the state publishes nothing)."""
        at = _UPDATED_AT  # compared in two slices: no new records on the per-frame path
        return self[:at] == other[:at] and self[at + 1 :] == other[at + 1 :]


_UPDATED_AT = PortRecord._fields.index("updated_at")
DEVICE_STATE = FastJson(DeviceState)


@dataclass(slots=True, eq=False)
class Device:
    physical_id: int
    device_id: str
    conn: Connection | None = None
    online: bool = False
    iccid: str | None = None
    firmware: str | None = None
    port_count: int | None = None
    voltage_v: float | None = None
    signal: int | None = None
    temperature_c: float | None = None
    last_seen: float | None = None  # unix time
    connected_at: float | None = None  # unix time the current connection bound it
    last_rx: float = 0.0  # monotonic
    seen_0x21: bool = False
    device_type: int | None = None  # from 0x20 (A.2)
    host_type: int | None = None  # from 0x11 (A.3)
    ports: dict[int, PortRecord] = field(default_factory=dict)  # 1-based
    # command channel: one command in flight, spacing between commands; the lock and the
    # window are made on first use (most devices never get a command: ~700 bytes saved each)
    _lock: asyncio.Lock | None = field(default=None, repr=False)
    next_send_at: float = 0.0
    last_message_id: int = 0
    queued: int = 0
    command_times: deque[float] | None = None  # monotonic, last minute
    # frame-rate token bucket (`bridge.gateway.trust`): full (inf, capped to the burst) at first
    frame_tokens: float = math.inf
    frame_tokens_at: float = 0.0

    @property
    def lock(self) -> asyncio.Lock:
        """One command in flight per device."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def command_allowed(self, now: float, per_minute: int) -> bool:
        """A sliding one-minute window of accepted commands (at most `per_minute` kept)."""
        times = self.command_times
        if times is None:
            times = self.command_times = deque()
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= per_minute:
            return False
        times.append(now)
        return True

    def next_message_id(self) -> int:
        """Each new command carries a new message id (1..65535, wrapping)."""
        self.last_message_id = self.last_message_id % 0xFFFF + 1
        return self.last_message_id

    def state_json(self, gateway_id: str) -> bytes:
        """The retained device state's text (published with every heartbeat)."""
        return DEVICE_STATE.dump(
            device_id=self.device_id,
            device_number=device_number(self.physical_id),
            device_kind=device_kind(self.physical_id),
            online=self.online,
            iccid=self.iccid,
            firmware=self.firmware,
            port_count=self.port_count,
            voltage_v=self.voltage_v,
            signal=self.signal,
            temperature_c=self.temperature_c,
            last_seen=iso_utc(self.last_seen) if self.last_seen is not None else None,
            gateway_id=gateway_id,
            connected_at=iso_utc(self.connected_at) if self.connected_at is not None else None,
            device_type=_name(device_type_name, self.device_type),
            device_type_code=self.device_type,
            host_type=_name(host_type_name, self.host_type),
            host_type_code=self.host_type,
        )


def _name(namer: Callable[[int], str], code: int | None) -> str | None:
    return None if code is None else namer(code)


MAX_DEVICES = 100_000
MAX_DEVICES_PER_CONNECTION = 256  # a host carries at most 50 extensions (reference 2.5)


class Registry:
    """Known devices, bounded by `max_devices` (a peer inventing physical ids must not grow
    memory without bound): when full, the longest-silent offline ones are forgotten; when all
    are online, a new physical id is refused (`device` returns None)."""

    def __init__(self, max_devices: int = MAX_DEVICES) -> None:
        self.max_devices = max_devices
        self.devices: dict[int, Device] = {}
        self.conns: dict[int, ConnState] = {}

    def device(self, physical_id: int) -> Device | None:
        dev = self.devices.get(physical_id)
        if dev is None:
            if len(self.devices) >= self.max_devices:
                self._forget_offline()
                if len(self.devices) >= self.max_devices:
                    return None
            dev = self.devices[physical_id] = Device(physical_id, device_id(physical_id))
        return dev

    def _forget_offline(self) -> None:
        offline = sorted(
            (d for d in self.devices.values() if not d.online), key=lambda d: d.last_rx
        )
        for dev in offline[: max(1, self.max_devices // 10)]:
            del self.devices[dev.physical_id]

    def online_count(self) -> int:
        return sum(1 for d in self.devices.values() if d.online)
