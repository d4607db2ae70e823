"""Firmware images cut into upgrade packets, and the 0xE0-family check packet."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import FirmwarePacket, PayloadError, Sender, decode_payload, encode_payload
from protocol.commands.firmware import (
    CHECK_MARKER,
    CheckPacket,
    firmware_packets,
    image_sum,
)

from .strategies import payloads

# The check packet as the reference's table lays it out: marker, u32 sum 0x00012345, device
# type 0x21, firmware 0x00D7, 185 zero bytes.
CHECK_HEX = "A1 A2 A3 A4 A5 A6 A7 A8 45 23 01 00 21 D7 00" + " 00" * 185


def test_check_packet_layout() -> None:
    data = bytes.fromhex(CHECK_HEX)
    check = CheckPacket.decode(data)
    assert check == CheckPacket(CHECK_MARKER, 0x12345, 0x21, 215, bytes(185))
    assert check.encode() == data and len(data) == 200
    assert CheckPacket.is_check_packet(data)
    assert not CheckPacket.is_check_packet(data[:199])
    assert not CheckPacket.is_check_packet(b"\x00" + data[1:])
    assert check.to_json()["device_type_name"] == "new_485_dual_mode"
    with pytest.raises(PayloadError, match="needs at least 200 data bytes, got 199"):
        CheckPacket.decode(data[:199])


def test_reference_packet_counts() -> None:
    # Reference 0xE0: 640 bytes -> 4 packets of 200; 0xF8: 640 bytes -> 3 packets of 256.
    image = bytes(range(256)) * 2 + bytes(128)
    e0 = firmware_packets(0xE0, image)
    assert [len(p.firmware) for p in e0] == [200, 200, 200, 40]
    assert [(p.total_packets, p.packet_number) for p in e0] == [(4, n) for n in range(1, 5)]
    f8 = firmware_packets(0xF8, image)
    assert [len(p.firmware) for p in f8] == [256, 256, 128]
    checked = firmware_packets(0xE0, image, CheckPacket.for_image(image, 0x21, 216))
    assert checked[-1].total_packets == 5
    assert CheckPacket.decode(checked[-1].firmware).firmware_sum == sum(image)
    assert b"".join(p.firmware for p in checked[:-1]) == image


def test_bad_requests_are_payload_errors() -> None:
    with pytest.raises(PayloadError, match="not a firmware upgrade command"):
        firmware_packets(0x82, b"x")
    with pytest.raises(PayloadError, match="empty"):
        firmware_packets(0xE0, b"")
    with pytest.raises(PayloadError, match="no check packet"):
        firmware_packets(0xF8, b"x", CheckPacket.for_image(b"x", 6, 227))
    with pytest.raises(PayloadError, match="at most 65535"):
        firmware_packets(0xE0, bytes(200 * 0xFFFF + 1))


@settings(max_examples=40, deadline=None)
@given(image=st.binary(min_size=1, max_size=2000), command=st.sampled_from([0xE0, 0xF8, 0xFA]))
def test_packets_round_trip_and_rebuild_the_image(image: bytes, command: int) -> None:
    packets = firmware_packets(command, image)
    rebuilt = b""
    for packet in packets:
        decoded = decode_payload(command, encode_payload(packet), Sender.SERVER)
        assert isinstance(decoded, FirmwarePacket) and decoded == packet
        rebuilt += decoded.firmware
    assert rebuilt == image
    assert image_sum(rebuilt) == sum(image) & 0xFFFFFFFF


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_check_packet_round_trip(data: st.DataObject) -> None:
    check = data.draw(payloads(CheckPacket))
    assert CheckPacket.decode(check.encode()) == check
