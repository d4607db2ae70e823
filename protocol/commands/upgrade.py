"""Firmware upgrade: 0x05, 0xE0-0xE2, 0xE4 (no data), 0xF8, 0xF9, 0xFA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol.commands._model import DEVICE, U16, U32, Payload, Tail, model, u8
from protocol.enums import device_type_name, upgrade_result_name


@model
@dataclass(frozen=True, slots=True)
class UpgradeRequest(Payload):
    """0x05 device requests an upgrade, 2024 layout. Tolerant decoding (reference 0x05): only an
    exactly 7-byte 0x05 uses this layout; any other length is a LegacyUpgradeRequest."""

    COMMAND = 0x05
    SENDER = DEVICE

    device_type: Annotated[int, u8(device_type_name)]
    firmware: U16
    package_type: U32


@model
@dataclass(frozen=True, slots=True)
class LegacyUpgradeRequest(Payload):
    """0x05 from an F8-family device (undocumented data): restart the F8 transfer at packet 1."""

    COMMAND = 0x05
    SENDER = DEVICE

    data: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class FirmwarePacket(Payload):
    """One upgrade packet (0xE0/E1/E2 and 0xFA: 200 firmware bytes; 0xF8/F9: 256). Packets are
    numbered from 1; the firmware slice is kept as sent (the last slice's padding is not
    stated)."""

    total_packets: U16
    packet_number: U16
    firmware: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class UpgradeReply(Payload):
    """Device answer to an upgrade packet (result A.15, packet received) — also the 0xFA host
    request: a 0xFA with packet_number 0 asks the server to restart at packet 1."""

    result: Annotated[int, u8(upgrade_result_name)]
    packet_number: U16
    extra: Tail = b""

    @property
    def is_request(self) -> bool:
        """For 0xFA: True when this is the host's "send me the firmware" request."""
        return self.packet_number == 0
