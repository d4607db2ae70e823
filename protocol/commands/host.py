"""Host housekeeping ([H]): 0x11, 0x17, 0x34 (and 0x0A), 0x35, 0x3A, 0x3B, bus poll 0x00 and the
extension test report 0x09."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated, Self

from protocol import units
from protocol.commands._model import (
    DEVICE,
    LIST,
    RECORDS,
    SERVER,
    U8,
    U16,
    U32,
    Payload,
    Tail,
    Temperature,
    Voltage,
    Wire,
    ascii_text,
    model,
    pack,
    raw,
    too_short,
    u8,
)
from protocol.enums import (
    device_type_name,
    host_type_name,
    module_type_name,
    rtc_module_name,
    server_module_type_name,
)
from protocol.errors import PayloadError
from protocol.units import CENTIAMPS, CURRENT, ENERGY


@model
@dataclass(frozen=True, slots=True)
class HostHeartbeat(Payload):
    """0x11 host heartbeat (every 30 min, not answered). 32 bytes on older hosts, 71 with the
    IMEI and module version. Signal 0-31 (99 error; values > 100: subtract 100)."""

    COMMAND = 0x11
    SENDER = DEVICE

    firmware: U16
    rtc_module: Annotated[int, u8(rtc_module_name)]
    host_time: U32  # Unix time, 0 without RTC
    signal: U8
    module_type: Annotated[int, u8(module_type_name)]
    iccid: Annotated[str, ascii_text(20)]
    host_type: Annotated[int, u8(host_type_name)]
    frequency: U16  # LoRa centre frequency, unit not stated; 0 if none
    imei: Annotated[str, ascii_text(15)] | None = None
    module_version: Annotated[str, ascii_text(24)] | None = None
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class HostStatus(Payload):
    """0x17 host status report (23 bytes, not answered). Currents in 0.01 A, energies in
    0.01 kWh (u32), leakage current in mA. Temperature encoding is not stated: decoded with the
    +65 rule as advised, raw kept."""

    COMMAND = 0x17
    SENDER = DEVICE

    breaker_state: U8
    temperature: Temperature
    voltage: Voltage
    current: Annotated[int, Wire("H", unit=CENTIAMPS)]
    energy: Annotated[int, Wire("I", unit=ENERGY)]
    meter_current: Annotated[int, Wire("H", unit=CENTIAMPS)]
    meter_energy: Annotated[int, Wire("I", unit=ENERGY)]
    smoke_alarm: U8
    alarm_relay: U8
    leakage_current: Annotated[int, u8(unit=CURRENT)]
    live_temperature: Temperature
    neutral_temperature: Temperature
    breaker_lock: U8
    breaker_model: U8
    extra: Tail = b""

    @property
    def voltage_v(self) -> float:
        return units.volts(self.voltage)

    @property
    def current_a(self) -> float:
        return units.centiamps(self.current)

    @property
    def energy_kwh(self) -> float:
        return units.kwh(self.energy)


@model
@dataclass(frozen=True, slots=True)
class ServerAddress(Payload):
    """0x34 change server address (also 0x0A between extension and host): the address is at
    most 45 characters, NUL-terminated and NUL-padded to 46 bytes."""

    COMMAND = 0x34
    SENDER = SERVER

    server_port: U16
    module_type: Annotated[int, u8(server_module_type_name)]
    socket_b: U8
    address: Annotated[str, ascii_text(46)]
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class ExtensionVersion(Payload):
    """One 8-byte record of 0x35: the lowest firmware among a host's extensions of a type."""

    extension_type: Annotated[int, u8(device_type_name)]
    reserved: U8
    lowest_version: U16
    physical_id: U32


_COUNT = struct.Struct("<B")


@model
@dataclass(frozen=True, slots=True)
class ExtensionVersions(Payload):
    """0x35 host reports extension versions: u8 count N, then N 8-byte records."""

    COMMAND = 0x35
    SENDER = DEVICE

    records: Annotated[tuple[ExtensionVersion, ...], Wire("", RECORDS, record=ExtensionVersion)]
    extra: Tail = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        size = len(data)
        if size < 1 or size < 1 + 8 * data[0]:
            raise too_short(cls, 1 if size < 1 else 1 + 8 * data[0], size)
        end = 1 + 8 * data[0]
        records = tuple(ExtensionVersion.decode(data[i : i + 8]) for i in range(1, end, 8))
        return cls(records, data[end:])

    def encode(self) -> bytes:
        if len(self.records) > 255:
            raise PayloadError("ExtensionVersions holds at most 255 records")
        body = b"".join(record.encode() for record in self.records)
        return pack(self, _COUNT, len(self.records)) + body + self.extra


_FSK_HEAD = struct.Struct("<H3sB")


@model
@dataclass(frozen=True, slots=True)
class FskParams(Payload):
    """0x3A set FSK host parameters (also the server's answer to 0x3B; the vendor table's
    command byte 0x98 is a typo). Frequency in MHz; the physical IDs of all extensions."""

    COMMAND = 0x3A
    SENDER = SERVER

    frequency: U16
    reserved: Annotated[bytes, raw(3)]
    extension_ids: Annotated[tuple[int, ...], Wire("I", LIST)]
    extra: Tail = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        size = len(data)
        if size < 6 or size < 6 + 4 * data[5]:
            raise too_short(cls, 6 if size < 6 else 6 + 4 * data[5], size)
        frequency, reserved, count = _FSK_HEAD.unpack_from(data)
        ids = struct.unpack_from(f"<{count}I", data, 6)
        return cls(frequency, reserved, ids, data[6 + 4 * count :])

    def encode(self) -> bytes:
        count = len(self.extension_ids)
        if len(self.reserved) != 3 or count > 255:
            raise PayloadError("FskParams needs 3 reserved bytes and at most 255 extensions")
        return (
            pack(self, _FSK_HEAD, self.frequency, self.reserved, count)
            + pack(self, struct.Struct(f"<{count}I"), *self.extension_ids)
            + self.extra
        )


@model
@dataclass(frozen=True, slots=True)
class FskParamsRequest(Payload):
    """0x3B host requests FSK parameters; the server answers with a 0x3A FskParams command."""

    COMMAND = 0x3B
    SENDER = DEVICE

    frequency: U16
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class BusPoll(Payload):
    """0x00 host -> extension RS-485 poll (never reaches a server; decoded for bus captures)."""

    COMMAND = 0x00
    SENDER = DEVICE

    virtual_id: U8
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class TestModeReport(Payload):
    """0x09 extension test mode (never reaches a server). Power unit not stated: raw."""

    COMMAND = 0x09
    SENDER = DEVICE

    port_status: U16
    voltage: Voltage
    power: U32
    extra: Tail = b""
