"""TCP listener for chargers: their communication modules dial in and keep one connection."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter

from bridge.links.base import DeviceStreamProtocol, LinkHandler

log = logging.getLogger(__name__)

BACKLOG = 4096


class _TcpDeviceProtocol(DeviceStreamProtocol):
    def __init__(self, link: TcpLink) -> None:
        super().__init__(link.handler, "tcp", link.max_write_buffer)
        self.link = link
        self.ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Replies are small and latency matters more than packet count.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.link.per_ip[ip] >= self.link.max_connections_per_ip:
            log.warning("too many connections from one address", extra={"ip": ip})
            super().connection_made(transport)
            assert self.conn is not None
            self.handler.connection_dropped(self.conn, "per_ip_limit")
            self.conn.abort()
            return
        self.ip = ip
        self.link.per_ip[ip] += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip is not None:
            self.link.per_ip[self.ip] -= 1
            if self.link.per_ip[self.ip] <= 0:
                del self.link.per_ip[self.ip]
        super().connection_lost(exc)


class TcpLink:
    """One listening socket (`host:port`; port 0 picks a free port, see `addresses`).

    With `reuse_port` the socket sets SO_REUSEPORT, so that several gateway processes
    (`--workers N`, docs/scaling.md) each bind their own socket to the same address and the
    kernel spreads new connections over them (by a hash of the connection's addresses)."""

    def __init__(
        self,
        handler: LinkHandler,
        host: str,
        port: int,
        *,
        max_connections_per_ip: int = 1000,
        max_write_buffer: int = 65536,
        reuse_port: bool = False,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_connections_per_ip = max_connections_per_ip
        self.max_write_buffer = max_write_buffer
        self.reuse_port = reuse_port
        self.per_ip: Counter[str] = Counter()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _TcpDeviceProtocol(self),
            self.host or None,
            self.port,
            backlog=BACKLOG,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        log.info("listening for devices", extra={"addresses": self.addresses})

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs; the real port when 0 was asked for."""
        if self.server is None:
            return []
        return [tuple(s.getsockname()[:2]) for s in self.server.sockets]

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
