"""Card swipe 0x02 and its server reply."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated, Self

from protocol.commands._model import (
    DEVICE,
    SERVER,
    U16,
    U32,
    VARBYTES,
    CardId,
    Payload,
    Port,
    Tail,
    Wire,
    model,
    pack,
    too_short,
    u8,
)
from protocol.enums import account_status_name, card_type_name, rate_mode_name
from protocol.errors import PayloadError

_PREFIX = struct.Struct("<4sBBH")
_U32 = struct.Struct("<I")


@model
@dataclass(frozen=True, slots=True)
class CardSwipe(Payload):
    """0x02 card swipe (device -> server; answer with CardSwipeReply). Port 0xFF = balance query.

    `card_id` is the 4-byte card UID as carried (the printed decimal number is it read
    big-endian). Tolerant decoding (ambiguity 9): the timestamp is decoded when 12 bytes are
    present, card number 2 only when its length byte and all N bytes are present; otherwise the
    leftover bytes stay in `extra`. An empty card number 2 (length byte 0) decodes as b"".
    """

    COMMAND = 0x02
    SENDER = DEVICE

    card_id: CardId
    card_type: Annotated[int, u8(card_type_name)]
    port: Port
    balance: U16  # fen, stored on (deprecated) balance cards
    timestamp: U32 | None = None  # device clock, debugging only
    card_number_2: Annotated[bytes, Wire("", VARBYTES)] | None = None
    extra: Tail = b""

    @property
    def card_number(self) -> int:
        """The decimal number printed on vendor cards: the 4 UID bytes read big-endian."""
        return int.from_bytes(self.card_id, "big")

    @classmethod
    def decode(cls, data: bytes) -> Self:
        size = len(data)
        if size < 8:
            raise too_short(cls, 8, size)
        card_id, card_type, port, balance = _PREFIX.unpack_from(data)
        if size < 12:
            return cls(card_id, card_type, port, balance, None, None, data[8:])
        timestamp = _U32.unpack_from(data, 8)[0]
        if size < 13 or size < 13 + data[12]:
            return cls(card_id, card_type, port, balance, timestamp, None, data[12:])
        end = 13 + data[12]
        return cls(card_id, card_type, port, balance, timestamp, data[13:end], data[end:])

    def encode(self) -> bytes:
        if len(self.card_id) != 4:
            raise PayloadError("CardSwipe.card_id must be 4 bytes")
        out = pack(self, _PREFIX, self.card_id, self.card_type, self.port, self.balance)
        if self.card_number_2 is not None:
            if self.timestamp is None:
                raise PayloadError("CardSwipe.timestamp is None but card_number_2 is set")
            if len(self.card_number_2) > 255:
                raise PayloadError("CardSwipe.card_number_2 is longer than 255 bytes")
        if self.timestamp is not None:
            out += pack(self, _U32, self.timestamp)
        if self.card_number_2 is not None:
            out += bytes((len(self.card_number_2),)) + self.card_number_2
        return out + self.extra


@model
@dataclass(frozen=True, slots=True)
class CardSwipeReply(Payload):
    """0x02 server reply: account data for the swiped card. The reply alone starts nothing."""

    COMMAND = 0x02
    SENDER = SERVER

    card_id: CardId  # echo of the request
    account_status: Annotated[int, u8(account_status_name)]
    rate_mode: Annotated[int, u8(rate_mode_name)]
    balance: U32  # fen; for rate mode 1 (monthly pass) the expiry as Unix time
    port: Port  # must echo the request's port byte
    extra: Tail = b""
