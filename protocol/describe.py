"""JSON-ready descriptions of frames and stream items (the `chargebridge decode` output).

Kept in the codec so that the CLI, the bench and the gateway's debug logs share one code path.
Payload keys use wire semantics (`port` is the 0-based wire index, bytes are upper-case hex,
optional fields the device did not send are null), with SI values beside the raw ones
(`voltage` and `voltage_v`) and enumeration names beside codes (`stop_reason_name`). The
payload's model class is given under `model`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from protocol.commands._model import DEVICE, LineFunction, Payload, Sender, line_function
from protocol.commands.registry import (
    _FROM_DEVICE,
    _FROM_SERVER,
    _resolve,
    command_name,
    decode_payload,
)
from protocol.errors import FrameError, PayloadError
from protocol.frame import (
    _HEAD,
    HEADER,
    MIN_LENGTH,
    BadFrame,
    Frame,
    Garbage,
    Iccid,
    Keepalive,
    StreamItem,
    decode_frame_unchecked,
)

# The objects built here never contain cycles: skipping the check saves ~10 % per frame.
to_json_line = json.JSONEncoder(check_circular=False, ensure_ascii=False).encode


def frame_json(frame: Frame, sender: Sender, *, checksum_ok: bool = True) -> dict[str, Any]:
    """The decode-CLI object for one frame; a payload that does not fit its command's layout
    gives `payload: null` plus `error` and the data block as `data_hex`."""
    command = frame.command
    out: dict[str, Any] = {
        "command": command,
        "command_name": command_name(command),
        "physical_id": frame.physical_id,
        "device_id": f"{frame.physical_id:08X}",
        "message_id": frame.message_id,
        "direction": "device_to_server" if sender is DEVICE else "server_to_device",
        "length": len(frame.data) + MIN_LENGTH,
        "checksum_ok": checksum_ok,
    }
    try:
        payload = decode_payload(command, frame.data, sender)
    except PayloadError as exc:
        out["payload"] = None
        out["error"] = str(exc)
        out["data_hex"] = frame.data.hex().upper()
        return out
    body = payload.to_json()
    body["model"] = type(payload).__name__
    out["payload"] = body
    return out


def describe_frame(raw: bytes, sender: Sender) -> tuple[dict[str, Any], bool]:
    """Describe bytes that should be exactly one frame; the flag is False for any error
    (malformed frame, bad checksum — still decoded, with `checksum_ok: false` — or payload)."""
    try:
        frame, checksum_ok = decode_frame_unchecked(raw)
    except FrameError as exc:
        return {"error": str(exc), "data_hex": raw.hex().upper()}, False
    out = frame_json(frame, sender, checksum_ok=checksum_ok)
    if not checksum_ok and "error" not in out:
        out["error"] = "checksum mismatch"
    return out, checksum_ok and "error" not in out


# Per sender, per command: the JSON text up to the payload, with the command's constants in
# place (at most 256 entries each; every frame's header then costs one %-format).
# Two dicts chosen by `is` against the module constant DEVICE: Enum.__hash__ is Python code,
# and `Sender.DEVICE` a class-attribute lookup of ~0.2 µs on Python 3.11, both too slow here.
_DEVICE_HEADS: dict[int, str] = {}
_SERVER_HEADS: dict[int, str] = {}
_MODEL_TAILS: dict[type, str] = {}


def _head(command: int, sender: Sender) -> str:
    direction = "device_to_server" if sender is DEVICE else "server_to_device"
    head = (
        f'{{"command": {command}, "command_name": "{command_name(command)}", "physical_id": %d, '
        f'"device_id": "%08X", "message_id": %d, "direction": "{direction}", "length": %d, '
        '"checksum_ok": true, "payload": %s}'
    )
    (_DEVICE_HEADS if sender is DEVICE else _SERVER_HEADS)[command] = head
    return head


def _line(
    command: int, physical_id: int, message_id: int, data: bytes, sender: Sender
) -> str | None:
    """The decode line of a frame whose checksum is right, built as text (about twice as fast
    as encoding `frame_json`'s dict); None when the payload does not decode."""
    try:
        payload = decode_payload(command, data, sender)
    except PayloadError:
        return None
    cls = type(payload)
    tail = _MODEL_TAILS.get(cls)
    if tail is None:
        tail = _MODEL_TAILS[cls] = f'"model": "{cls.__name__}"'
    heads = _DEVICE_HEADS if sender is DEVICE else _SERVER_HEADS
    head = heads.get(command) or _head(command, sender)
    length = len(data) + MIN_LENGTH
    return head % (physical_id, physical_id, message_id, length, payload.to_json_text(tail))


def frame_json_line(frame: Frame, sender: Sender) -> tuple[str, bool]:
    """`to_json_line(frame_json(frame, sender))` for a checked frame."""
    line = _line(frame.command, frame.physical_id, frame.message_id, frame.data, sender)
    if line is None:
        return to_json_line(frame_json(frame, sender)), False
    return line, True


def _no_line(raw: bytes, physical_id: int, message_id: int, length: int) -> None:
    """The line function of a command without a model (or one with nothing to gain)."""
    return None


def _line_of(command: int, sender: Sender) -> LineFunction:
    """Generate (once per sender and command) the function writing the whole line."""
    table = _FROM_DEVICE if sender is DEVICE else _FROM_SERVER
    decoder = table.get(command) or _resolve(command, sender)
    owner = getattr(decoder, "__self__", None)
    function: LineFunction | None = None
    if isinstance(owner, type) and issubclass(owner, Payload):
        direction = "device_to_server" if sender is DEVICE else "server_to_device"
        before = (
            f'{{"command": {command}, "command_name": "{command_name(command)}", '
            '"physical_id": %d, "device_id": "%08X", "message_id": %d, '
            f'"direction": "{direction}", "length": %d, "checksum_ok": true, "payload": '
        )
        after = f', "model": "{owner.__name__}"}}}}'
        function = line_function(owner, before, after, 12, 2)
    function = function or _no_line
    (_DEVICE_LINES if sender is DEVICE else _SERVER_LINES)[command] = function
    return function


# Per sender, per command (at most 256 entries each): the generated line function.
_DEVICE_LINES: dict[int, LineFunction] = {}
_SERVER_LINES: dict[int, LineFunction] = {}


def _line_maker(sender: Sender) -> Callable[[bytes], str | None]:
    lines = _DEVICE_LINES if sender is DEVICE else _SERVER_LINES
    unpack_head = _HEAD.unpack_from

    def frame_line(raw: bytes) -> str | None:
        size = len(raw)
        if size >= 5 + MIN_LENGTH:
            header, length, physical_id, message_id, command = unpack_head(raw)
            if (
                header == HEADER
                and size == 5 + length
                and sum(raw[:-2]) & 0xFFFF == raw[-2] | raw[-1] << 8
            ):
                line = lines.get(command) or _line_of(command, sender)
                return line(raw, physical_id, message_id, length)
        return None

    return frame_line


_DEVICE_LINE = _line_maker(DEVICE)
_SERVER_LINE = _line_maker(Sender.SERVER)


def good_frame_line(sender: Sender) -> Callable[[bytes], str | None]:
    """The fast half of `describe_frame_line`: bytes -> the line of a well-formed frame whose
    checksum is right and whose payload decodes (the usual case), None for anything else.

    Generated text straight from the bytes, without a Frame object and, for fixed layouts,
    without a payload object; a caller handles None with `describe_frame_line`."""
    return _DEVICE_LINE if sender is DEVICE else _SERVER_LINE


def describe_frame_line(raw: bytes, sender: Sender) -> tuple[str, bool]:
    """`describe_frame` as one JSON line (what `chargebridge decode` prints).

    A good frame goes straight from the bytes to the text (`good_frame_line`); anything else
    takes `describe_frame`'s way, which fills the decoder table and words the errors."""
    line = (_DEVICE_LINE if sender is DEVICE else _SERVER_LINE)(raw)
    if line is not None:
        return line, True
    out, ok = describe_frame(raw, sender)
    return to_json_line(out), ok


def describe_item_line(item: StreamItem, sender: Sender) -> tuple[str, bool]:
    """`describe_item` as one JSON line."""
    if isinstance(item, Frame):
        return frame_json_line(item, sender)
    out, ok = describe_item(item, sender)
    return to_json_line(out), ok


def describe_item(item: StreamItem, sender: Sender) -> tuple[dict[str, Any], bool]:
    """Describe one StreamDecoder item: frames as in `frame_json`, `{"iccid": ...}`,
    `{"keepalive": true}`, and errors for garbage (`count` skipped bytes) and bad frames."""
    if isinstance(item, Frame):
        out = frame_json(item, sender)
        return out, "error" not in out
    if isinstance(item, Iccid):
        return {"iccid": item.value}, True
    if isinstance(item, Keepalive):
        return {"keepalive": True}, True
    if isinstance(item, Garbage):
        return {"error": "garbage", "count": item.count, "data_hex": item.data.hex().upper()}, False
    if isinstance(item, BadFrame):
        return {"error": f"bad frame: {item.error}", "data_hex": item.data.hex().upper()}, False
    raise TypeError(f"not a stream item: {item!r}")
