"""Device parameters: 0x83-0x86 set (0x90-0x93 replies share their layouts), 0x8D, 0x8E, 0x8F,
0x95-0x98, EEPROM 0x8B/0x8C and voice 0x89."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated, Self

from protocol import units
from protocol.commands._model import (
    DEVICE,
    SERVER,
    U8,
    U16,
    VARBYTES,
    Payload,
    Port,
    Power,
    Tail,
    Voltage,
    Wire,
    ascii_text,
    model,
    pack,
    raw,
    too_short,
    u8,
)
from protocol.enums import tc_card_mode_name, work_mode_name
from protocol.errors import PayloadError


@model
@dataclass(frozen=True, slots=True)
class RunningParams1(Payload):
    """0x83 set running parameters 1.1, also the 0x90 reply (11 bytes). Times in s; the
    unplug power has no stated unit and is passed through raw (ambiguity 29)."""

    COMMAND = 0x83
    SENDER = SERVER

    unplug_power: U16
    unplug_detection_time: U16
    float_percentage: U8
    float_detection_time: U16
    float_time: U16
    heartbeat_interval: U16
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class RunningParams2(Payload):
    """0x84 set running parameters 1.2, also the 0x91 reply (23 bytes). Times in s; powers raw
    (unit not stated); alarm temperatures in plain degC (no +65 offset)."""

    COMMAND = 0x84
    SENDER = SERVER

    dynamic_overload_power: U16
    dynamic_overload_time: U16
    dynamic_overload_start: U16
    unplug_interference_power: U8
    unplug_interference_time: U16
    float_stage2_time_point: U16
    float_stage2_detection_time: U16
    min_power: U16
    min_power_time_point: U16
    second_max_power_window: U16
    ambient_alarm_temperature: U8
    port_alarm_temperature: U8
    unplug_detection: U8  # 0 enabled, other disabled
    qr_backlight: U8  # 0 on, 1 off (persistent)
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class ChargeLimits(Payload):
    """0x85 set max charge time (s) and overload power (0.1 W), optionally over/under-voltage
    (0.1 V, added 2024); also the 0x92 reply (4 or 8 bytes)."""

    COMMAND = 0x85
    SENDER = SERVER

    max_charge_time: U16
    overload_power: Power
    over_voltage: Voltage | None = None
    under_voltage: Voltage | None = None
    extra: Tail = b""

    @property
    def overload_power_w(self) -> float:
        return units.watts(self.overload_power)

    @property
    def over_voltage_v(self) -> float | None:
        return units.optional(units.volts, self.over_voltage)

    @property
    def under_voltage_v(self) -> float | None:
        return units.optional(units.volts, self.under_voltage)


@model
@dataclass(frozen=True, slots=True)
class CardParams(Payload):
    """0x86 set user-card parameters, also the 0x93 reply (13 bytes). Keys are raw bytes in
    reading order (default user key 15 91 85 19 18 80), not little-endian."""

    COMMAND = 0x86
    SENDER = SERVER

    sector: U8
    user_key: Annotated[bytes, raw(6)]
    new_card_key: Annotated[bytes, raw(6)]
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class WorkModeSet(Payload):
    """0x8D set work mode: 0 networked, 1 card. Byte-identical to its reply: the caller must
    say who sent it."""

    COMMAND = 0x8D
    SENDER = SERVER

    mode: Annotated[int, u8(work_mode_name)]
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class QrCodeSetup(Payload):
    """0x8E set the QR-code content (at most 71 characters, NUL-padded) and the main screen."""

    COMMAND = 0x8E
    SENDER = SERVER

    main_screen: U8  # 0 port status, 1 QR code
    reserved: Annotated[bytes, raw(3)]
    qr_data: Annotated[str, ascii_text(72)]
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class CardModeSet(Payload):
    """0x8F set TC card mode (A.20)."""

    COMMAND = 0x8F
    SENDER = SERVER

    mode: Annotated[int, u8(tc_card_mode_name)]
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class TemporaryQrCode(Payload):
    """0x95 temporary QR code for screen devices: 200 bytes of text, NUL-padded."""

    COMMAND = 0x95
    SENDER = SERVER

    content: Annotated[str, ascii_text(200)]
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class Locate(Payload):
    """0x96 locate device: sound and light for `seconds`."""

    COMMAND = 0x96
    SENDER = SERVER

    seconds: U8
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class RunningParams3(Payload):
    """0x97 set running parameters 1.3: mute (0 normal, 1 muted). More fields may follow."""

    COMMAND = 0x97
    SENDER = SERVER

    mute: U8
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class MultiFunction(Payload):
    """0x98 multi-function command: function 0 = forced opening of a cabinet door on `port`."""

    COMMAND = 0x98
    SENDER = SERVER

    function: U8
    port: Port
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class EepromRead(Payload):
    """0x8B read `length` (<= 32) EEPROM bytes at `address`."""

    COMMAND = 0x8B
    SENDER = SERVER

    address: U16
    length: U8
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class EepromReadReply(Payload):
    """0x8B device reply: status (0 success) and the bytes read."""

    COMMAND = 0x8B
    SENDER = DEVICE

    status: U8
    data: Tail = b""


_EEPROM_WRITE = struct.Struct("<HB")


@model
@dataclass(frozen=True, slots=True)
class EepromWrite(Payload):
    """0x8C write EEPROM: u16 address, u8 length k, k bytes. The length byte is derived from
    `data` when encoding; bytes beyond k are kept in `extra`."""

    COMMAND = 0x8C
    SENDER = SERVER

    address: U16
    data: Annotated[bytes, Wire("", VARBYTES)]
    extra: Tail = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        size = len(data)
        if size < 3 or size < 3 + data[2]:
            raise too_short(cls, 3 if size < 3 else 3 + data[2], size)
        end = 3 + data[2]
        return cls(data[0] | data[1] << 8, data[3:end], data[end:])

    def encode(self) -> bytes:
        if len(self.data) > 255:
            raise PayloadError("EepromWrite.data is longer than 255 bytes")
        return pack(self, _EEPROM_WRITE, self.address, len(self.data)) + self.data + self.extra


@model
@dataclass(frozen=True, slots=True)
class PlayVoice(Payload):
    """0x89 play voice (reserved by the vendor, not usable): the segment encoding is not
    documented, so the segments are kept as raw bytes."""

    COMMAND = 0x89
    SENDER = SERVER

    interrupt: U8  # 0 wait for the current prompt, 1 interrupt it
    segment_count: U8
    segments: Tail = b""
