"""Reference of `bench/memory.py`: the smallest asyncio server holding the same connections
(same event loop as the gateway, uvloop when installed), so the per-connection floor of
sockets and transports is measured in the same run. Answers every read with one byte and
keeps nothing but its transports. Not a benchmark itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
from typing import Any


class Floor(asyncio.Protocol):
    transports: set[Any] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        Floor.transports.add(transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"\x00")

    def connection_lost(self, exc: Exception | None) -> None:
        Floor.transports.discard(self.transport)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await loop.create_server(Floor, "127.0.0.1", port, backlog=4096, reuse_address=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main(args.port))
    sys.exit(0)
