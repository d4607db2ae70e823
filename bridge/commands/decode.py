"""`chargebridge decode`: DNY frames (hex) -> one JSON object per line (API.md section 8)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import cast

from protocol import Sender, StreamDecoder
from protocol.describe import (
    describe_frame,
    describe_frame_line,
    describe_item_line,
    good_frame_line,
    to_json_line,
)

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


def _blocks(args: argparse.Namespace) -> Iterator[list[str]]:
    """The input lines, one block at a time: every complete line one read of stdin returned.

    Reading blocks instead of lines lets the output go out in one write per block (no latency
    added for a live pipe: a block is what has arrived). Bytes that are not UTF-8 become
    replacement characters, hence `invalid hex` errors, not a crash."""
    if args.hex:
        yield list(args.hex)
        return
    source = getattr(sys.stdin, "buffer", None)
    if source is None:  # a text stream with no bytes underneath
        yield sys.stdin.read().splitlines()
        return
    pending = b""
    while chunk := source.read1(1 << 14):
        pending += chunk
        end = pending.rfind(b"\n") + 1
        if end:
            yield pending[:end].decode("utf-8", "replace").splitlines()
            pending = pending[end:]
    if pending:
        yield pending.decode("utf-8", "replace").splitlines()


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
    out = sys.stdout
    quick = None if args.capture or decoder is not None else good_frame_line(sender)
    fromhex = bytes.fromhex
    for block in _blocks(args):
        made: list[str | None] | None = None
        if quick is not None:
            # The usual block is plain hex lines of good frames, each made by one call (no
            # branches per line here); anything else (blank lines, comments, `0x`, captures,
            # bad hex, bad frames, payloads that do not decode) leaves a None or raises
            # ValueError, and the block goes the line-by-line way below for those lines.
            try:
                made = [quick(fromhex(text)) for text in block]
            except ValueError:
                made = None
        if made is not None and None not in made:
            lines = cast("list[str]", made)
        else:
            lines, good = _block_lines(block, made, sender, decoder, args.capture)
            ok = ok and good
        if lines:
            lines.append("")
            out.write("\n".join(lines))
            out.flush()
    if decoder is not None and decoder.buffered:
        left = decoder.buffered.hex().upper()
        out.write(to_json_line({"error": "incomplete frame at end of input", "data_hex": left}))
        out.write("\n")
        ok = False
    return 0 if ok else 1


def _block_lines(
    block: list[str],
    made: list[str | None] | None,
    sender: Sender,
    decoder: StreamDecoder | None,
    capture: bool,
) -> tuple[list[str], bool]:
    """A block's output lines, one input line at a time, taking the lines `made` holds
    already; the flag is False when any line was an error."""
    ok = True
    lines: list[str] = []
    add = lines.append
    fromhex, describe = bytes.fromhex, describe_frame_line
    for index, text in enumerate(block):
        if made is not None and (line := made[index]) is not None:
            add(line)
            continue
        # The usual line is plain hex: bytes.fromhex takes it as it is (and skips spaces
        # between bytes); anything else (comments, `0x`, captures, errors) goes the long way.
        try:
            raw: bytes | None = None if capture else fromhex(text)
        except ValueError:
            raw = None
        if not raw:
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            if capture or text.lstrip().startswith("{"):
                line, good = _capture_line(text)
                if line:
                    add(line)
                ok = ok and good
                continue
            raw = _unhex(text)
            if raw is None:
                add(to_json_line({"error": "invalid hex", "data_hex": "".join(text.split())}))
                ok = False
                continue
        if decoder is None:
            line, good = describe(raw, sender)
            add(line)
            ok = ok and good
            continue
        for item in decoder.feed(raw):
            line, good = describe_item_line(item, sender)
            add(line)
            ok = ok and good
    return lines, ok
