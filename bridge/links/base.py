"""What every link hands the gateway: a `Connection` to write to and the bytes it received.

Links move bytes only: the gateway keeps one stream decoder per `Connection` and is called
synchronously from `data_received`, so nothing is buffered between the socket and it. Writes
go to the transport's buffer; when that exceeds `max_write_buffer` (the peer does not read)
the connection is dropped rather than buffered without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Protocol, cast

log = logging.getLogger(__name__)

_ids = itertools.count(1)


class LinkHandler(Protocol):
    def connection_made(self, conn: Connection) -> None: ...

    def data_received(self, conn: Connection, data: bytes) -> None: ...

    def connection_lost(self, conn: Connection) -> None: ...

    def connection_dropped(self, conn: Connection, reason: str) -> None:
        """The link closed `conn` itself (write overflow, limits); counted by the gateway."""


class Connection:
    """One byte stream to one or many devices (a host or an RS-485 line carries many).

    `replaceable`: True for TCP, where a device reconnecting makes the old connection stale;
    False for a serial line, which is never closed on behalf of one device."""

    __slots__ = ("_transport", "closed", "id", "kind", "peer", "replaceable")

    def __init__(self, transport: asyncio.BaseTransport, kind: str, peer: str) -> None:
        self.id = next(_ids)
        self.kind = kind
        self.peer = peer
        self.replaceable = kind == "tcp"
        self.closed = False
        # A cast, not an isinstance check: uvloop's transports are not asyncio subclasses.
        self._transport = cast(asyncio.WriteTransport, transport)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.peer}>"

    def write(self, data: bytes) -> bool:
        if self.closed:
            return False
        self._transport.write(data)
        return True

    def close(self) -> None:
        """Flushes what was written, then closes."""
        if not self.closed:
            self.closed = True
            self._transport.close()

    def abort(self) -> None:
        self.closed = True
        self._transport.abort()

    def pause_reading(self) -> None:
        """Leave what the peer sends in the kernel's buffers (TCP flow control) for now."""
        if not self.closed:
            cast(asyncio.ReadTransport, self._transport).pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            cast(asyncio.ReadTransport, self._transport).resume_reading()


class DeviceStreamProtocol(asyncio.Protocol):
    """asyncio.Protocol (not streams): a few hundred bytes of state per connection."""

    def __init__(self, handler: LinkHandler, kind: str, max_write_buffer: int) -> None:
        self.handler = handler
        self.kind = kind
        self.max_write_buffer = max_write_buffer
        self.conn: Connection | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def peer_name(self, transport: asyncio.BaseTransport) -> str:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            return f"{self.kind}:{peer[0]}:{peer[1]}"
        return f"{self.kind}:{peer}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.WriteTransport, transport).set_write_buffer_limits(high=self.max_write_buffer)
        self.conn = Connection(transport, self.kind, self.peer_name(transport))
        self.handler.connection_made(self.conn)

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        if self.conn.closed:
            return
        self.handler.data_received(self.conn, data)

    def pause_writing(self) -> None:
        # The peer does not read what we send: drop it instead of buffering more.
        assert self.conn is not None
        log.warning("write buffer overflow, dropping peer", extra={"peer": self.conn.peer})
        self.handler.connection_dropped(self.conn, "write_overflow")
        self.conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.closed = True
            self.handler.connection_lost(self.conn)
        if not self.lost.done():
            self.lost.set_result(None)
