"""Vendor placeholders 0xFD and 0xFE (meaning not documented; decoded for completeness)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.commands._model import DEVICE, SERVER, U8, U32, Payload, Tail, model


@model
@dataclass(frozen=True, slots=True)
class ReservedFd(Payload):
    """0xFD request: function (1 or 2) and four u32 values R1-R4."""

    COMMAND = 0xFD
    SENDER = SERVER

    function: U8
    r1: U32
    r2: U32
    r3: U32
    r4: U32
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class ReservedFdReply(Payload):
    """0xFD device reply: function and result."""

    COMMAND = 0xFD
    SENDER = DEVICE

    function: U8
    result: U8
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class ReservedFe(Payload):
    """0xFE request: three u32 values R1-R3 (default 0); no reply documented."""

    COMMAND = 0xFE
    SENDER = SERVER

    r1: U32
    r2: U32
    r3: U32
    extra: Tail = b""
