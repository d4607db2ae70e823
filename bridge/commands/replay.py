"""`chargebridge replay FILE --connect HOST:PORT`: play a capture back as the charger(s).

Sends the capture's device->server frames (the `CaptureFrame` lines of `chargebridge capture`)
to a gateway, one TCP connection per device id, keeping the recorded relative timing divided
by `--speed`. The gateway's answers are read (and counted) so its write buffer never fills.
Frames are replayed byte for byte, message ids included: a replay against the gateway that
recorded them within 10 minutes is answered as a protocol resend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.simulator.fleet import TcpTarget
from protocol import Frame, StreamDecoder

HELP = "play a capture file back to a gateway as the recorded charger(s)"
LINGER_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="capture file (JSON lines), - for stdin")
    parser.add_argument(
        "--connect", required=True, metavar="HOST:PORT", type=_target, help="gateway listener"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="time factor: 10 plays ten times faster"
    )
    parser.add_argument("--device", metavar="ID", help="replay only this device id")
    parser.add_argument(
        "--linger",
        type=float,
        default=LINGER_S,
        help="seconds to keep the connections open after the last frame (for replies)",
    )


@dataclass(frozen=True, slots=True)
class ReplayFrame:
    t: float
    device_id: str
    raw: bytes


class CaptureFormatError(ValueError):
    pass


def read_capture(lines: list[str], device: str | None = None) -> list[ReplayFrame]:
    """The device->server frames of a capture, in time order; raises CaptureFormatError."""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if record.get("type", "frame") != "frame":
                continue
            if record["direction"] != "device_to_server":
                continue
            if device is not None and record["device_id"] != device.upper():
                continue
            out.append(
                ReplayFrame(float(record["t"]), record["device_id"], bytes.fromhex(record["hex"]))
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CaptureFormatError(f"line {number}: not a capture record ({exc})") from None
    out.sort(key=lambda f: f.t)
    return out


@dataclass
class _Device:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: int = 0
    replies: list[Frame] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def read_replies(self) -> None:
        decoder = StreamDecoder()
        with contextlib.suppress(ConnectionError):
            while chunk := await self.reader.read(4096):
                self.replies.extend(i for i in decoder.feed(chunk) if isinstance(i, Frame))


async def replay(
    frames: list[ReplayFrame], target: TcpTarget, speed: float, linger: float
) -> dict[str, Any]:
    """Play `frames`; returns a summary per device."""
    devices: dict[str, _Device] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0 = frames[0].t if frames else 0.0
    try:
        for frame in frames:
            delay = start + (frame.t - t0) / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the recorded pacing, not synchronisation
            dev = devices.get(frame.device_id)
            if dev is None:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(target.host, target.port)
                dev = devices[frame.device_id] = _Device(reader, writer)
                dev.task = asyncio.create_task(dev.read_replies())
            dev.writer.write(frame.raw)
            await dev.writer.drain()
            dev.sent += 1
        await asyncio.sleep(linger)  # let the last replies arrive
    finally:
        for dev in devices.values():
            dev.writer.close()
            if dev.task is not None:
                dev.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dev.task
    return {
        "devices": {
            device_id: {"frames_sent": dev.sent, "replies": len(dev.replies)}
            for device_id, dev in devices.items()
        },
        "frames_sent": sum(dev.sent for dev in devices.values()),
        "replies": sum(len(dev.replies) for dev in devices.values()),
        "seconds": round(loop.time() - start, 3),
    }


def main(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        print("chargebridge replay: --speed must be > 0", file=sys.stderr)
        return 2
    try:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
        frames = read_capture(text.splitlines(), args.device)
    except OSError as exc:
        print(f"chargebridge replay: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except CaptureFormatError as exc:
        print(f"chargebridge replay: {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(replay(frames, args.connect, args.speed, args.linger))
    except (OSError, TimeoutError) as exc:
        print(
            f"chargebridge replay: cannot reach {args.connect.host}:{args.connect.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def _target(text: str) -> TcpTarget:
    try:
        return TcpTarget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
