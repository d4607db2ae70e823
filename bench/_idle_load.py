"""Load process of `bench/memory.py`: N raw-TCP chargers connect, and once all are connected
each sends its ICCID and a 0x20 registration at once, then a 2-port 0x21 heartbeat when the
registration was answered, and then stays connected and silent. Not a benchmark itself.

Prints `{"event": "ready", "t": ..., "connected": N}` once every charger had both answers; a
reply is any bytes back (the reference server answers every read with one byte). Connections
are spread over source addresses 127.0.0.2.. (`--sources`) and kept until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from protocol import Heartbeat, Registration, encode_frame, encode_payload

KIND = 0x04  # dual socket
REGISTRATION = encode_payload(Registration(126, 2, 0, 0x21, 0, 0))
HEARTBEAT = encode_payload(Heartbeat(voltage=2200, port_statuses=(0, 0), signal=25, temperature=93))


class Charger(asyncio.Protocol):
    """Sends the next frame when the previous one was answered; idle after the heartbeat."""

    def __init__(self, index: int, done: asyncio.Future[None]) -> None:
        self.pid = KIND << 24 | (0x100000 + index)
        self.iccid = f"8986{index:016d}".encode()
        self.done = done
        self.transport: Any = None
        self.step = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def start(self) -> None:
        self.transport.write(self.iccid)
        self.transport.write(encode_frame(self.pid, 1, 0x20, REGISTRATION))

    def data_received(self, data: bytes) -> None:
        self.step += 1
        if self.step == 1:
            self.transport.write(encode_frame(self.pid, 2, 0x21, HEARTBEAT))
        elif self.step == 2 and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"charger {self.pid:08X} lost: {exc}"))


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    sources = [f"127.0.0.{i}" for i in range(args.first_source, args.first_source + args.sources)]
    gate = asyncio.Semaphore(args.max_connecting)
    chargers: list[Charger] = []

    async def one(i: int) -> None:
        charger = Charger(args.first_index + i, loop.create_future())
        async with gate:
            await loop.create_connection(
                lambda: charger, "127.0.0.1", args.port, local_addr=(sources[i % len(sources)], 0)
            )
        chargers.append(charger)

    await asyncio.gather(*(one(i) for i in range(args.devices)))
    print(json.dumps({"event": "connected", "t": time.monotonic()}), flush=True)
    for charger in chargers:
        charger.start()
    await asyncio.gather(*(c.done for c in chargers))
    print(
        json.dumps({"event": "ready", "t": time.monotonic(), "connected": len(chargers)}),
        flush=True,
    )
    await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument("--sources", type=int, default=8, help="127.0.0.2.. source addresses")
    parser.add_argument("--first-source", type=int, default=2)
    parser.add_argument("--max-connecting", type=int, default=256)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main(parser.parse_args()))
    sys.exit(0)
