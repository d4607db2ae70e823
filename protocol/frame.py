"""The DNY frame layer (reference section 3) and the stream scanner (section 2.4).

Layout: `DNY` | u16 L | u32 physical ID | u16 message ID | u8 command | data | u16 checksum,
all little-endian, L = 9 + len(data), checksum = sum of every preceding byte (header and length
included) & 0xFFFF. Total on the wire: 5 + L = 14 + len(data).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import overload

from protocol._fast import slot_constructor
from protocol.commands._model import Payload
from protocol.errors import ChecksumError, FrameError, LengthError, TruncatedError

HEADER = b"DNY"
KEEPALIVE = b"link"
ICCID_SIZE = 20
MIN_LENGTH = 9  # physical ID + message ID + command + checksum, no data
DEFAULT_MAX_LENGTH = 1024
# 0xF8/0xF9 legacy upgrade packets carry 260 data bytes: L = 269 (reference 3.4).
LEAST_MAX_LENGTH = 269
GARBAGE_SAMPLE = 64  # bytes of skipped garbage copied into a Garbage item; the count is exact

_HEAD = struct.Struct("<3sHIHB")
_U16 = struct.Struct("<H")
_ICCID = re.compile(rb"89[0-9A-Fa-f]{18}")
# A proper prefix of an ICCID: wait for more bytes instead of calling it garbage.
_ICCID_PREFIX = re.compile(rb"8(?:9[0-9A-Fa-f]{0,17})?")
# Bytes that can start a token: 'D' (frame), 'l' (keepalive), '8' (ICCID).
_CANDIDATE = re.compile(rb"[Dl8]")


@dataclass(frozen=True, slots=True)
class Frame:
    """One checked DNY frame. `data` is the command's data block (no header, no checksum)."""

    physical_id: int
    message_id: int
    command: int
    data: bytes = b""

    def encode(self) -> bytes:
        return encode_frame(self.physical_id, self.message_id, self.command, self.data)


@dataclass(frozen=True, slots=True)
class Iccid:
    """The 20-character SIM ICCID a module sends once per connection (section 2.2)."""

    value: str


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The raw ASCII `link` a module sends after 30 s without traffic (section 2.3)."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes skipped while resynchronising: `data` holds at most the first GARBAGE_SAMPLE of
    them, `count` how many there were (equal to len(data) when not given)."""

    data: bytes
    count: int = -1

    def __post_init__(self) -> None:
        if self.count < 0:
            object.__setattr__(self, "count", len(self.data))


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A `DNY` candidate that failed (bad length or checksum). Only its first byte is consumed:
    the scanner rescans from the next byte, so its later bytes may be reported again."""

    data: bytes
    error: FrameError


StreamItem = Frame | Iccid | Keepalive | Garbage | BadFrame

_new_frame = slot_constructor(Frame)


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The DNY checksum of everything before the checksum field."""
    return sum(data) & 0xFFFF


@overload
def encode_frame(physical_id: int, message_id: int, command: int, data: bytes = b"") -> bytes: ...


@overload
def encode_frame(physical_id: int, message_id: int, command: Payload) -> bytes: ...


def encode_frame(
    physical_id: int, message_id: int, command: int | Payload, data: bytes = b""
) -> bytes:
    """Build a complete frame (header, length, address, data, checksum).

    `command` is a code with its `data` block, or a payload model carrying its own code
    (`encode_frame(pid, mid, ChargeControl(...))`); a model shared by several codes has none
    and raises FrameError: give the code and `model.encode()`."""
    if not isinstance(command, int):
        model = command
        code = model.COMMAND
        if code is None:
            raise FrameError(f"{type(model).__name__} has no command code of its own; give one")
        command, data = code, model.encode()
    length = len(data) + MIN_LENGTH
    if length > 0xFFFF:
        raise LengthError(f"data block of {len(data)} bytes does not fit a frame")
    try:
        body = _HEAD.pack(HEADER, length, physical_id, message_id, command) + data
    except struct.error as exc:
        raise FrameError(f"cannot encode frame header: {exc}") from None
    return body + _U16.pack(sum(body) & 0xFFFF)


def _parse(raw: bytes) -> tuple[Frame, bool]:
    size = len(raw)
    if size < 5 + MIN_LENGTH:
        raise TruncatedError(f"frame needs at least 14 bytes, got {size}")
    header, length, physical_id, message_id, command = _HEAD.unpack_from(raw)
    if header != HEADER:
        raise FrameError(f"frame does not start with DNY: {raw[:3].hex(' ').upper()}")
    if length < MIN_LENGTH:
        raise LengthError(f"length field {length} < {MIN_LENGTH}")
    if size != 5 + length:
        error = TruncatedError if size < 5 + length else LengthError
        raise error(f"length field says {5 + length} bytes, got {size}")
    checksum_ok = sum(raw[:-2]) & 0xFFFF == raw[-2] | raw[-1] << 8
    return _new_frame(physical_id, message_id, command, raw[12:-2]), checksum_ok


def decode_frame(raw: bytes) -> Frame:
    """Exactly one frame: raises a FrameError subclass unless `raw` is one valid frame."""
    frame, checksum_ok = _parse(bytes(raw))
    if not checksum_ok:
        found = raw[-2] | raw[-1] << 8
        raise ChecksumError(f"checksum {found:04X}, computed {sum(raw[:-2]) & 0xFFFF:04X}")
    return frame


def decode_frame_unchecked(raw: bytes) -> tuple[Frame, bool]:
    """Like decode_frame but returns (frame, checksum_ok) instead of raising on the checksum."""
    return _parse(bytes(raw))


class StreamDecoder:
    """Sans-I/O scanner: feed it bytes as they arrive, get frames, ICCIDs, keepalives, garbage.

    Implements the reference's recommended scanner (2.4). Frames are emitted only when their
    checksum verifies; a length outside 9..max_length or a bad checksum produces a BadFrame and
    drops ONE byte, because a length whose checksum failed cannot be trusted. Whatever it is fed,
    the decoder keeps at most one maximal frame (5 + max_length bytes) between calls.
    """

    __slots__ = ("_buffer", "_max_length")

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if max_length < LEAST_MAX_LENGTH or max_length > 0xFFFF:
            raise ValueError(f"max_length must be in {LEAST_MAX_LENGTH}..65535, got {max_length}")
        self._max_length = max_length
        self._buffer = b""

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def buffered(self) -> bytes:
        """Bytes held back as the possible start of a token (at most 5 + max_length)."""
        return self._buffer

    def feed(self, data: bytes | bytearray | memoryview) -> list[StreamItem]:
        """Consume `data`; return every item completed by it, in stream order."""
        buf = self._buffer + bytes(data) if self._buffer else bytes(data)
        items: list[StreamItem] = []
        append = items.append
        size = len(buf)
        max_length = self._max_length
        pos = 0
        garbage_from = -1  # start of the current garbage run, -1 when none
        while pos < size:
            byte = buf[pos]
            if byte == 0x44:  # 'D'
                if buf.startswith(HEADER, pos):
                    if size - pos < 5:
                        break
                    length = buf[pos + 3] | buf[pos + 4] << 8
                    if length < MIN_LENGTH or length > max_length:
                        if garbage_from >= 0:
                            append(_garbage(buf, garbage_from, pos))
                            garbage_from = -1
                        append(BadFrame(buf[pos : pos + 5], LengthError(f"length {length}")))
                        pos += 1
                        continue
                    end = pos + 5 + length
                    if end > size:
                        break
                    if sum(buf[pos : end - 2]) & 0xFFFF == buf[end - 2] | buf[end - 1] << 8:
                        if garbage_from >= 0:
                            append(_garbage(buf, garbage_from, pos))
                            garbage_from = -1
                        _, _, physical_id, message_id, command = _HEAD.unpack_from(buf, pos)
                        data = buf[pos + 12 : end - 2]
                        append(_new_frame(physical_id, message_id, command, data))
                        pos = end
                        continue
                    if garbage_from >= 0:
                        append(_garbage(buf, garbage_from, pos))
                        garbage_from = -1
                    append(BadFrame(buf[pos:end], ChecksumError("checksum mismatch")))
                    pos += 1
                    continue
                if size - pos < 3 and HEADER.startswith(buf[pos:]):
                    break
            elif byte == 0x6C:  # 'l'
                if buf.startswith(KEEPALIVE, pos):
                    if garbage_from >= 0:
                        append(_garbage(buf, garbage_from, pos))
                        garbage_from = -1
                    append(Keepalive())
                    pos += 4
                    continue
                if size - pos < 4 and KEEPALIVE.startswith(buf[pos:]):
                    break
            elif byte == 0x38:  # '8'
                if _ICCID.match(buf, pos):
                    if garbage_from >= 0:
                        append(_garbage(buf, garbage_from, pos))
                        garbage_from = -1
                    append(Iccid(buf[pos : pos + ICCID_SIZE].decode("ascii")))
                    pos += ICCID_SIZE
                    continue
                if size - pos < ICCID_SIZE and _ICCID_PREFIX.fullmatch(buf, pos):
                    break
            # Not a token here: skip to the next byte that could start one.
            if garbage_from < 0:
                garbage_from = pos
            found = _CANDIDATE.search(buf, pos + 1)
            pos = found.start() if found is not None else size
        if garbage_from >= 0:
            append(_garbage(buf, garbage_from, pos))
        self._buffer = buf[pos:]
        return items


def _garbage(buf: bytes, start: int, end: int) -> Garbage:
    return Garbage(buf[start : min(end, start + GARBAGE_SAMPLE)], end - start)
