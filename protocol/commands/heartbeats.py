"""Heartbeats, registration and time: 0x01, 0x20, 0x21, 0x22 (and 0x12, same layout)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Self

from protocol import units
from protocol.commands._model import (
    DEVICE,
    LIST,
    U8,
    U16,
    U32,
    Payload,
    Tail,
    Temperature,
    Voltage,
    Wire,
    model,
    pack,
    pack_optional,
    too_short,
    u8,
    unpack_optional,
)
from protocol.enums import device_type_name, port_status_name
from protocol.errors import PayloadError
from protocol.units import POWER

PortStatuses = Annotated[tuple[int, ...], Wire("B", LIST, enum=port_status_name)]
Powers = Annotated[tuple[int, ...], Wire("H", LIST, unit=POWER)]
DeviceType = Annotated[int, u8(device_type_name)]

_U8 = struct.Struct("<B")
_HEARTBEAT_HEAD = struct.Struct("<HB")
_LEGACY_HEAD = struct.Struct("<HHB")


def _port_count(owner: Payload, *arrays: tuple[int, ...]) -> int:
    count = len(arrays[0])
    if count > 255 or any(len(array) != count for array in arrays):
        raise PayloadError(f"{type(owner).__name__}: port arrays must share one length <= 255")
    return count


@model
@dataclass(frozen=True, slots=True)
class Heartbeat(Payload):
    """0x21 device heartbeat (every 3 min; the server must answer with ResultReply).

    Tolerant decoding (reference 0x21): requires 3 + n bytes (voltage, n, statuses); signal
    and temperature are taken only when present; later bytes are kept in `extra`.
    """

    COMMAND = 0x21
    SENDER = DEVICE

    voltage: Voltage
    port_statuses: PortStatuses
    signal: U8 | None = None
    temperature: Temperature | None = None
    extra: Tail = b""

    _TAIL = (("signal", _U8), ("temperature", _U8))

    @property
    def voltage_v(self) -> float:
        return units.volts(self.voltage)

    @property
    def temperature_c(self) -> float | None:
        return units.optional(units.celsius, self.temperature)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        size = len(data)
        if size < 3 or size < 3 + data[2]:
            raise too_short(cls, 3 if size < 3 else 3 + data[2], size)
        end = 3 + data[2]
        build: Callable[..., Self] = cls._new  # hot path: every 3 min per device
        voltage, statuses = data[0] | data[1] << 8, tuple(data[3:end])
        if size >= end + 2:
            return build(voltage, statuses, data[end], data[end + 1], data[end + 2 :])
        signal = data[end] if size > end else None
        return build(voltage, statuses, signal, None, b"")

    @classmethod
    def _line_fields(cls, data: bytes) -> tuple[Any, ...] | None:
        # `decode`'s usual case without the object: half of what the decode CLI meets. The
        # statuses stay bytes (their JSON is that of the tuple of ints `decode` makes).
        size = len(data)
        if size < 3:
            return None
        end = 3 + data[2]
        if size < end + 2:
            return None
        return data[0] | data[1] << 8, data[3:end], data[end], data[end + 1], data[end + 2 :]

    def encode(self) -> bytes:
        count = _port_count(self, self.port_statuses)
        return (
            pack(self, _HEARTBEAT_HEAD, self.voltage, count)
            + pack(self, struct.Struct(f"<{count}B"), *self.port_statuses)
            + pack_optional(self, self._TAIL)
            + self.extra
        )


@model
@dataclass(frozen=True, slots=True)
class LegacyHeartbeat(Payload):
    """0x01 legacy heartbeat. Current power comes BEFORE peak power (the field table rules).

    Tolerant decoding (reference 0x01, ambiguity 2): requires the prefix through the peak-power
    array (5 + 5n bytes), then takes virtual ID, signal, device type, temperature and work mode
    one by one while bytes remain.
    """

    COMMAND = 0x01
    SENDER = DEVICE

    firmware: U16
    voltage: Voltage
    port_statuses: PortStatuses
    powers: Powers
    peak_powers: Powers
    virtual_id: U8 | None = None
    signal: U8 | None = None
    device_type: DeviceType | None = None
    temperature: Temperature | None = None
    work_mode: U8 | None = None
    extra: Tail = b""

    _TAIL = (
        ("virtual_id", _U8),
        ("signal", _U8),
        ("device_type", _U8),
        ("temperature", _U8),
        ("work_mode", _U8),
    )

    @property
    def voltage_v(self) -> float:
        return units.volts(self.voltage)

    @property
    def powers_w(self) -> tuple[float, ...]:
        return tuple(units.watts(p) for p in self.powers)

    @property
    def peak_powers_w(self) -> tuple[float, ...]:
        return tuple(units.watts(p) for p in self.peak_powers)

    @property
    def temperature_c(self) -> float | None:
        return units.optional(units.celsius, self.temperature)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        size = len(data)
        if size < 5 or size < 5 + 5 * data[4]:
            raise too_short(cls, 5 if size < 5 else 5 + 5 * data[4], size)
        firmware, voltage, count = _LEGACY_HEAD.unpack_from(data)
        powers = struct.Struct(f"<{count}H")
        current = powers.unpack_from(data, 5 + count)
        peak = powers.unpack_from(data, 5 + 3 * count)
        tail, end = unpack_optional(data, 5 + 5 * count, (_U8,) * 5)
        virtual_id, signal, device_type, temperature, work_mode = tail
        statuses = tuple(data[5 : 5 + count])
        return cls(
            firmware,
            voltage,
            statuses,
            current,
            peak,
            virtual_id,
            signal,
            device_type,
            temperature,
            work_mode,
            data[end:],
        )

    def encode(self) -> bytes:
        count = _port_count(self, self.port_statuses, self.powers, self.peak_powers)
        return (
            pack(self, _LEGACY_HEAD, self.firmware, self.voltage, count)
            + pack(
                self,
                struct.Struct(f"<{count}B{2 * count}H"),
                *self.port_statuses,
                *self.powers,
                *self.peak_powers,
            )
            + pack_optional(self, self._TAIL)
            + self.extra
        )


@model
@dataclass(frozen=True, slots=True)
class Registration(Payload):
    """0x20 device registration (sent after power-on; the server must answer ResultReply).

    Tolerant decoding: the vendor example carries 10 bytes against 8 documented; bytes after
    the power-board version are kept in `extra` (reference 0x20, ambiguity 5).
    """

    COMMAND = 0x20
    SENDER = DEVICE

    firmware: U16  # x100: 126 = V1.26
    port_count: U8
    virtual_id: U8
    device_type: DeviceType
    work_mode: U8 | None = None  # bit field, enums.work_mode_flags
    power_board_version: U16 | None = None
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class TimeRequest(Payload):
    """0x22 device / 0x12 host time request: no data; the server answers TimeReply."""

    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class TimeReply(Payload):
    """0x22 / 0x12 server reply: the current Unix time in seconds."""

    unix_time: U32
    extra: Tail = b""
