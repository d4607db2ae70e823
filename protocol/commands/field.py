"""Frames seen in the field whose replies the reference (5.2) requires: 0x15 and 0x3B.

The upstream 0x05, 0x17, 0x35, 0x41, 0x42, 0x43 and 0x44 already have models (upgrade, host,
cabinet, charging); this module adds the 0x15 pair and the builders of the two answers a server
owes: a 0x15 answer byte, and a 0x3A command answering a 0x3B.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.commands._model import DEVICE, SERVER, U8, Payload, Tail, model
from protocol.commands.host import FskParams, FskParamsRequest

HOST_UPGRADE_REQUEST = 0x15
FSK_PARAMS_REQUEST = 0x3B
FSK_PARAMS = 0x3A


@model
@dataclass(frozen=True, slots=True)
class HostUpgradeRequest(Payload):
    """0x15 from an old 485 host (host type 0x01) after a failed upgrade and a reboot: no data.
    The server must answer (HostUpgradeAnswer) and then restart the 0xF9 transfer at packet 1."""

    COMMAND = HOST_UPGRADE_REQUEST
    SENDER = DEVICE

    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class HostUpgradeAnswer(Payload):
    """0x15 server answer: one byte whose values the vendor does not document; send 0."""

    COMMAND = HOST_UPGRADE_REQUEST
    SENDER = SERVER

    answer: U8
    extra: Tail = b""


def answer_host_upgrade_request(request: HostUpgradeRequest) -> HostUpgradeAnswer:
    """The reply a server sends to 0x15 (same physical ID, command and message ID)."""
    return HostUpgradeAnswer(0)


def answer_fsk_params_request(
    request: FskParamsRequest, extension_ids: tuple[int, ...], frequency: int | None = None
) -> FskParams:
    """The 0x3A command answering a 0x3B (reference 0x3B: sent as a command, not a plain reply;
    advice: reuse the 0x3B's message ID). `frequency` in MHz defaults to the host's current one;
    `extension_ids` are the physical IDs of all extensions of that host."""
    chosen = request.frequency if frequency is None else frequency
    return FskParams(chosen, bytes(3), tuple(extension_ids))
