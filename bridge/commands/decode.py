"""`chargebridge decode`: DNY frames (hex) -> one JSON object per line (API.md section 8)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from protocol import Sender, StreamDecoder
from protocol.describe import describe_frame, describe_frame_line, describe_item_line, to_json_line

HELP = "decode DNY frames given as hex to JSON, one object per line"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "hex",
        nargs="*",
        metavar="HEX",
        help="one frame per argument (spaces allowed inside); read lines of hex from stdin if none",
    )
    parser.add_argument(
        "--from",
        dest="sender",
        choices=[sender.value for sender in Sender],
        default=Sender.DEVICE.value,
        help="who sent the bytes (some frames are byte-identical in both directions)",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="input is a capture file (JSON lines of `chargebridge capture`); detected "
        "automatically for lines starting with `{`",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="treat all input as one byte stream (frames, ICCID, `link`, garbage)",
    )


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(to_json_line(obj) + "\n")


def _inputs(args: argparse.Namespace) -> Iterable[str]:
    if args.hex:
        return list(args.hex)
    return (line for line in sys.stdin if line.strip() and not line.lstrip().startswith("#"))


def _unhex(text: str) -> bytes | None:
    cleaned = "".join(text.split())
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        return None


CAPTURE_SENDERS = {"device_to_server": Sender.DEVICE, "server_to_device": Sender.SERVER}


def _capture_line(text: str) -> tuple[str, bool]:
    """One capture record -> the decode object with the record's `ts`, `t` in front."""
    try:
        record = json.loads(text)
        if record.get("type", "frame") == "end":
            return "", True
        sender = CAPTURE_SENDERS[record["direction"]]
        raw = bytes.fromhex(record["hex"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return to_json_line({"error": f"not a capture record: {exc}", "data": text.strip()}), False
    obj, good = describe_frame(raw, sender)
    return to_json_line({"ts": record.get("ts"), "t": record.get("t"), **obj}), good


def main(args: argparse.Namespace) -> int:
    sender = Sender(args.sender)
    ok = True
    decoder = StreamDecoder() if args.stream else None
    for text in _inputs(args):
        if args.capture or text.lstrip().startswith("{"):
            line, good = _capture_line(text)
            if line:
                sys.stdout.write(line + "\n")
            ok = ok and good
            continue
        raw = _unhex(text)
        if raw is None:
            _emit({"error": "invalid hex", "data_hex": "".join(text.split())})
            ok = False
            continue
        if decoder is None:
            line, good = describe_frame_line(raw, sender)
            sys.stdout.write(line + "\n")
            ok = ok and good
            continue
        for item in decoder.feed(raw):
            line, good = describe_item_line(item, sender)
            sys.stdout.write(line + "\n")
            ok = ok and good
    if decoder is not None and decoder.buffered:
        left = decoder.buffered.hex().upper()
        _emit({"error": "incomplete frame at end of input", "data_hex": left})
        ok = False
    return 0 if ok else 1
