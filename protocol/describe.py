"""JSON-ready descriptions of frames and stream items (the `chargebridge decode` output).

Kept in the codec so that the CLI, the bench and the gateway's debug logs share one code path.
Payload keys use wire semantics (`port` is the 0-based wire index, bytes are upper-case hex,
optional fields the device did not send are null), with SI values beside the raw ones
(`voltage` and `voltage_v`) and enumeration names beside codes (`stop_reason_name`). The
payload's model class is given under `model`.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.commands._model import DEVICE, Sender
from protocol.commands.registry import _FROM_DEVICE, _FROM_SERVER, command_name, decode_payload
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


def describe_frame_line(raw: bytes, sender: Sender) -> tuple[str, bool]:
    """`describe_frame` as one JSON line (what `chargebridge decode` prints).

    A well-formed frame goes straight from the bytes to the text, without a Frame object;
    anything else (and a payload that does not decode) takes `describe_frame`'s way."""
    size = len(raw)
    if size >= 5 + MIN_LENGTH:
        header, length, physical_id, message_id, command = _HEAD.unpack_from(raw)
        if (
            header == HEADER
            and size == 5 + length
            and sum(raw[:-2]) & 0xFFFF == raw[-2] | raw[-1] << 8
        ):
            # `_line` and `decode_payload` inlined (two calls less per frame, ~4%): a command
            # not met yet, one without a model and a payload that does not decode all take
            # `describe_frame`'s way, which fills the decoder table and words the errors.
            is_device = sender is DEVICE
            decoder = (_FROM_DEVICE if is_device else _FROM_SERVER).get(command)
            if decoder is not None:
                try:
                    payload = decoder(raw[12:-2])
                except PayloadError:
                    payload = None
                if payload is not None:
                    cls = type(payload)
                    tail = _MODEL_TAILS.get(cls)
                    if tail is None:
                        tail = _MODEL_TAILS[cls] = f'"model": "{cls.__name__}"'
                    head = (_DEVICE_HEADS if is_device else _SERVER_HEADS).get(command) or _head(
                        command, sender
                    )
                    text = payload.to_json_text(tail)
                    return head % (physical_id, physical_id, message_id, length, text), True
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
