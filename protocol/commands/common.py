"""Payloads shared by many commands: no data, a one-byte result, and unmodelled raw data."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.commands._model import U8, Payload, Tail, model


@model
@dataclass(frozen=True, slots=True)
class Empty(Payload):
    """A command without data (queries 0x81/0x90-0x93, reboots, 0xE4, the 0xFA trigger...)."""

    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class ResultReply(Payload):
    """A reply whose data is one result byte (0 = success unless the command says otherwise);
    any further bytes (e.g. 0x98 function parameters) are kept in `extra`."""

    result: U8
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class RawPayload(Payload):
    """Data of a command without a model (0x18-0x1F, 0xA1-0xA6, 0x94, unknown codes)."""

    data: Tail = b""
