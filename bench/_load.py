"""Load process of `bench/throughput.py`: D chargers on raw TCP sending paced 0x06 power
reports; not a benchmark itself.

Each charger sends its ICCID on connecting, as every DNY module does (so the gateway's
default `pinned` policy pins it and then settles each frame with a dict lookup), registers
(0x20, waits for the reply), then on `go RATE COUNT` (a stdin line)
the fleet sends COUNT 0x06 frames round-robin at RATE frames/s in total (0 = as fast as the
socket takes them). Charger i has one order (order number = i as 16 bytes) on port 0; the
report's `duration` counts up per charger, so (order number, duration) names one frame, and
the charging service's session update carries both. After each phase one JSON line lists
every frame's send time: {"event": "sent", "frames": [[charger, duration, t], ...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from protocol import PortPowerReport, Registration, encode_frame, encode_payload

KIND = 0x04  # dual socket


def physical_id(index: int) -> int:
    return KIND << 24 | (0x100000 + index)


def order_no(index: int) -> bytes:
    return (0xB0 << 120 | index).to_bytes(16, "big")


class Charger(asyncio.Protocol):
    def __init__(self, index: int, registered: asyncio.Future[None]) -> None:
        self.index = index
        self.pid = physical_id(index)
        self.registered = registered
        self.transport: Any = None
        self.duration = 0
        self.message_id = 0
        self.iccid = f"8986{index:016d}".encode()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        reg = encode_payload(Registration(126, 2, 0, 0x21, 0, 0))
        transport.write(self.iccid + encode_frame(self.pid, self.next_id(), 0x20, reg))

    def data_received(self, data: bytes) -> None:
        if not self.registered.done():
            self.registered.set_result(None)

    def next_id(self) -> int:
        self.message_id = self.message_id % 0xFFFF + 1
        return self.message_id

    def report(self) -> tuple[int, bytes]:
        """The next 0x06 report: its duration (which names it) and the frame."""
        self.duration += 1
        r = PortPowerReport(
            0, 1, self.duration, self.duration // 10, 1, 2300, 2500, 2100, 2300,
            order_no(self.index), 12, 2600, 2212, 1050, 90, 95, 1_700_000_000, 0,
        )  # fmt: skip
        return self.duration, encode_frame(self.pid, self.next_id(), 0x06, encode_payload(r))


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    chargers: list[Charger] = []
    for i in range(args.devices):
        fut: asyncio.Future[None] = loop.create_future()
        charger = Charger(i, fut)
        await loop.create_connection(lambda c=charger: c, "127.0.0.1", args.port)  # type: ignore[misc]
        chargers.append(charger)
    await asyncio.gather(*(c.registered for c in chargers))
    print(json.dumps({"event": "ready"}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        _, rate, count = line.split()
        frames = await phase(chargers, float(rate), int(count))
        print(json.dumps({"event": "sent", "frames": frames}), flush=True)


async def phase(chargers: list[Charger], rate: float, count: int) -> list[list[float]]:
    """Send `count` reports round-robin, paced at `rate`/s (checked every millisecond).

    The frames are encoded before the clock starts: real chargers cost the gateway's box
    nothing, and encoding them while sending (~60 µs each on a slow VM) took CPU from the
    processes measured on the same cores, most of all at `max`."""
    n = len(chargers)
    planned = [(c, *c.report()) for c in (chargers[i % n] for i in range(count))]
    frames: list[list[float]] = []
    t0 = time.monotonic()
    sent = 0
    while sent < count:
        now = time.monotonic()
        due = count if rate <= 0 else min(count, int((now - t0) * rate) + 1)
        while sent < due:
            c, duration, frame = planned[sent]
            c.transport.write(frame)
            frames.append([c.index, duration, time.monotonic()])
            sent += 1
            if rate <= 0 and sent % 200 == 0:
                break  # let the socket drain: unpaced means as fast as the gateway reads
        await asyncio.sleep(0.001 if rate > 0 else 0)
    return frames


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, default=1000)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(main(parser.parse_args()))
