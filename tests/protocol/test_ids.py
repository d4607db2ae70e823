"""Identifiers (reference section 4)."""

from __future__ import annotations

import pytest

from protocol.ids import (
    device_id,
    device_kind,
    device_number,
    order_no_hex,
    parse_device_id,
    parse_order_no,
)


def test_device_id_round_trip_and_kinds() -> None:
    assert parse_device_id("04ab373b") == 0x04AB373B
    assert device_id(parse_device_id("04AB373B")) == "04AB373B"
    assert device_id(0x1) == "00000001"
    assert [device_kind(k << 24) for k in (3, 4, 5, 6, 7, 9, 10, 0x0B)] == [
        "single_socket",
        "dual_socket",
        "ten_port",
        "sixteen_port",
        "twelve_port",
        "host",
        "leakage_host",
        "unknown_0B",
    ]
    # Default IDs of broken EEPROMs (reference 4.4) are plain device numbers.
    assert device_number(0x0498C179) == 10011001


@pytest.mark.parametrize("text", ["", "04AB373", "04AB373BB", "04AB 373", "0x04AB37", "GGGGGGGG"])
def test_parse_device_id_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="8 hex digits"):
        parse_device_id(text)


def test_order_numbers_are_opaque_bytes() -> None:
    raw = bytes(range(16))
    assert order_no_hex(raw) == "000102030405060708090A0B0C0D0E0F"
    assert parse_order_no("000102030405060708090a0b0c0d0e0f") == raw
    for bad in ("00", "00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F", "Z" * 32, "0" * 34):
        with pytest.raises(ValueError, match="32 hex digits"):
            parse_order_no(bad)
