"""Firmware images cut into upgrade packets (0xE0-0xE2, 0xF8/0xF9, 0xFA) and the 0xE0 check
packet, shared by whoever serves an upgrade and whoever receives one (the simulator).

Packet sizes (reference A.2/A.3): 200 firmware bytes for 0xE0/E1/E2 and 0xFA, 256 for
0xF8/0xF9. The optional 0xE0-family check packet is appended after the firmware (the text's
reading, ambiguity 35) and counted in the total. The last slice is sent as it is, without
padding, so the byte sum over the received slices equals the sum over the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol.commands._model import U16, U32, Payload, model, raw, u8
from protocol.commands.upgrade import FirmwarePacket
from protocol.enums import device_type_name
from protocol.errors import PayloadError

CHECK_MARKER = bytes.fromhex("A1A2A3A4A5A6A7A8")
CHECKED_COMMANDS = frozenset({0xE0, 0xE1, 0xE2})
"""Commands whose transfers may carry a check packet."""

PACKET_SIZES: dict[int, int] = {0xE0: 200, 0xE1: 200, 0xE2: 200, 0xFA: 200, 0xF8: 256, 0xF9: 256}
"""Firmware bytes per packet, by upgrade command."""

MAX_PACKETS = 0xFFFF


@model
@dataclass(frozen=True, slots=True)
class CheckPacket(Payload):
    """The 200-byte 0xE0-family check packet: marker A1..A8, the u32 byte sum of the image,
    the device type it is for (A.2) and the firmware version it installs (x100)."""

    marker: Annotated[bytes, raw(8)]
    firmware_sum: U32
    device_type: Annotated[int, u8(device_type_name)]
    firmware: U16
    padding: Annotated[bytes, raw(185)]

    @classmethod
    def for_image(cls, image: bytes, device_type: int, firmware: int) -> CheckPacket:
        return cls(CHECK_MARKER, image_sum(image), device_type, firmware, bytes(185))

    @staticmethod
    def is_check_packet(data: bytes) -> bool:
        return len(data) == 200 and data[:8] == CHECK_MARKER


def image_sum(image: bytes) -> int:
    """u32 little-endian byte sum of a firmware image, as the check packet carries it."""
    return sum(image) & 0xFFFFFFFF


def firmware_packets(
    command: int, image: bytes, check: CheckPacket | None = None
) -> list[FirmwarePacket]:
    """Every packet of an upgrade by `command`, numbered from 1; `check` (0xE0-0xE2 only) is
    appended as the last packet. Raises PayloadError for an empty or oversized image."""
    size = PACKET_SIZES.get(command)
    if size is None:
        raise PayloadError(f"0x{command:02X} is not a firmware upgrade command")
    if check is not None and command not in CHECKED_COMMANDS:
        raise PayloadError(f"0x{command:02X} transfers carry no check packet")
    if not image:
        raise PayloadError("firmware image is empty")
    slices = [image[i : i + size] for i in range(0, len(image), size)]
    if check is not None:
        slices.append(check.encode())
    if len(slices) > MAX_PACKETS:
        raise PayloadError(f"firmware image needs {len(slices)} packets, at most {MAX_PACKETS}")
    total = len(slices)
    return [FirmwarePacket(total, number, part) for number, part in enumerate(slices, 1)]
