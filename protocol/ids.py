"""Identifiers: physical IDs (section 4.1), device kinds (4.2) and order numbers (4.8).

The physical ID travels little-endian; as a big-endian u32 `0xKKNNNNNN` its top byte is the
device kind and its low 3 bytes, read as decimal, are the number printed under the QR code.
`device_id` is the API's 8 upper-case hex digits of that big-endian value.
"""

from __future__ import annotations

import re

from protocol.enums import device_kind_name

_DEVICE_ID = re.compile(r"[0-9A-Fa-f]{8}")
_ORDER_NO = re.compile(r"[0-9A-Fa-f]{32}")
ORDER_NO_SIZE = 16


def device_id(physical_id: int) -> str:
    """Physical ID -> `04AB373B` (wire bytes `3B 37 AB 04`)."""
    return f"{physical_id:08X}"


def parse_device_id(text: str) -> int:
    """`04AB373B` -> 0x04AB373B; raises ValueError unless exactly 8 hex digits."""
    if not _DEVICE_ID.fullmatch(text):
        raise ValueError(f"device id must be 8 hex digits, got {text!r}")
    return int(text, 16)


def device_number(physical_id: int) -> int:
    """The decimal number printed under the QR code: the low 3 bytes (0x04AB373B -> 11220795)."""
    return physical_id & 0xFFFFFF


def device_kind(physical_id: int) -> str:
    """`dual_socket`, `host`, ... or `unknown_XX` from the top byte of the physical ID."""
    return device_kind_name(physical_id >> 24)


def order_no_hex(order_no: bytes) -> str:
    """16 raw order-number bytes -> 32 upper-case hex digits (opaque: never reversed)."""
    return order_no.hex().upper()


def parse_order_no(text: str) -> bytes:
    """32 hex digits -> the 16 raw order-number bytes; raises ValueError otherwise."""
    if not _ORDER_NO.fullmatch(text):
        raise ValueError(f"order number must be 32 hex digits, got {text!r}")
    return bytes.fromhex(text)
