"""Serial links (RS-485 lines, USB adapters, `socket://` bridges) via pyserial-asyncio-fast.

One line may carry many devices; the gateway routes by physical id. When the port disappears
(USB adapter unplugged) the link reopens it with exponential back-off, 1 s doubling to 30 s.
"""

from __future__ import annotations

import asyncio
import logging

import serial_asyncio_fast

from bridge.links.base import DeviceStreamProtocol, LinkHandler

log = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0


class _SerialDeviceProtocol(DeviceStreamProtocol):
    def __init__(self, link: SerialLink) -> None:
        super().__init__(link.handler, "serial", link.max_write_buffer)
        self.url = link.url

    def peer_name(self, transport: asyncio.BaseTransport) -> str:
        return f"serial:{self.url}"


class SerialLink:
    def __init__(
        self,
        handler: LinkHandler,
        url: str,
        *,
        baudrate: int = 9600,
        max_write_buffer: int = 65536,
        backoff_start_s: float = BACKOFF_START_S,
    ) -> None:
        self.handler = handler
        self.url = url
        self.baudrate = baudrate
        self.max_write_buffer = max_write_buffer
        self.backoff_start_s = backoff_start_s
        self.connected = asyncio.Event()
        self._protocol: _SerialDeviceProtocol | None = None

    def close(self) -> None:
        """Close the port; `run` must be cancelled first or it reopens it."""
        protocol = self._protocol
        if protocol is not None and protocol.conn is not None:
            protocol.conn.close()

    async def run(self) -> None:
        """Keep the port open until cancelled (then `close()` it: the owner publishes its
        devices offline first)."""
        loop = asyncio.get_running_loop()
        delay = self.backoff_start_s
        while True:
            try:
                _, protocol = await serial_asyncio_fast.create_serial_connection(
                    loop, lambda: _SerialDeviceProtocol(self), self.url, baudrate=self.baudrate
                )
            except Exception as exc:
                # SerialException (an OSError) for a missing port; URL handlers raise assorted
                # types. Never let one serial link take the gateway down: log and retry.
                log.warning("serial port unavailable", extra={"url": self.url, "error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            assert isinstance(protocol, _SerialDeviceProtocol)
            self._protocol = protocol
            log.info("serial link open", extra={"url": self.url})
            self.connected.set()
            delay = self.backoff_start_s
            try:
                await protocol.lost
            finally:
                self.connected.clear()
            log.warning("serial link lost", extra={"url": self.url})
            await asyncio.sleep(delay)
