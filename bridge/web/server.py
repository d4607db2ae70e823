"""HTTP server of the dashboard and its MQTT-over-WebSocket relay.

The page is an MQTT client: it opens a WebSocket (subprotocol `mqtt`) to `/mqtt` on this
server, which opens a plain TCP (or TLS, for `mqtts://`) connection to the configured broker
and copies bytes both ways without reading them. The browser logs in with its own user and
password, never the bridge's, so the broker's users and ACL decide what the page may see and
do, and neither the embedded broker nor Mosquitto needs a WebSocket listener.

Built on `websockets` (already installed for amqtt, the embedded broker): its
`process_request` hook serves the few static files, so one small, well-kept library does both
jobs. The relay is bounded: at most `max_connections` relayed connections, WebSocket messages
of at most `max_message` bytes, back-pressure both ways (a slow side stops the other from
reading), and either side closing closes the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from bridge.config import CommonSettings

log = logging.getLogger(__name__)

MQTT_PATH = "/mqtt"
MAX_CONNECTIONS = 64
MAX_MESSAGE = 1 << 20  # 1 MiB: far above any chargebridge payload
BROKER_CONNECT_TIMEOUT_S = 10.0
READ_CHUNK = 65536

# path -> (file under static/, content type); nothing else is served.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/mqtt.js": ("mqtt.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
]


def parse_web_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 hosts in brackets) -> (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the relay connects: host, port and TLS of the bridge's own broker URL."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str, ca_file: str = "") -> BrokerAddress:
        parts = urlsplit(url)
        secure = parts.scheme == "mqtts"
        context = ssl.create_default_context(cafile=ca_file or None) if secure else None
        return cls(parts.hostname or "127.0.0.1", parts.port or (8883 if secure else 1883), context)


def _static(name: str) -> bytes:
    return (resources.files("bridge.web") / "static" / name).read_bytes()


class DashboardServer:
    """Serves the static page and relays `/mqtt` WebSockets to the broker."""

    def __init__(
        self,
        host: str,
        port: int,
        broker: BrokerAddress,
        *,
        base_topic: str = "chargebridge",
        max_connections: int = MAX_CONNECTIONS,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.host = host
        self.port = port
        self.broker = broker
        self.max_connections = max_connections
        self.max_message = max_message
        self.active = 0
        self.relayed = 0  # connections relayed since start (tests, logs)
        self._files = {path: (_static(name), ctype) for path, (name, ctype) in STATIC_FILES.items()}
        # What the page cannot know by itself: the base topic of this bridge.
        config = json.dumps({"base_topic": base_topic, "mqtt_path": MQTT_PATH}).encode()
        self._files["/config.json"] = (config, "application/json")
        self._server: Server | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Bound (host, port) pairs, valid after `start`."""
        assert self._server is not None
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    @property
    def url(self) -> str:
        host, port = self.addresses[0]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"

    async def start(self) -> None:
        """Bind the port; OSError (address in use) propagates."""
        self._server = await serve(
            self._relay,
            self.host,
            self.port,
            process_request=self._process_request,
            select_subprotocol=_mqtt_subprotocol,
            max_size=self.max_message,
            server_header="chargebridge",
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == MQTT_PATH:
            if not _same_origin(request):
                return _text(http.HTTPStatus.FORBIDDEN, "cross-origin WebSocket refused\n")
            if self.active >= self.max_connections:
                return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            return None  # go on with the WebSocket handshake
        found = self._files.get(path)
        if found is None:
            return _text(http.HTTPStatus.NOT_FOUND, "not found\n")
        body, ctype = found
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body)))])
        for key, value in SECURITY_HEADERS:
            headers[key] = value
        return Response(200, "OK", headers, body)

    # ----------------------------------------------------------------- relay

    async def _relay(self, ws: ServerConnection) -> None:
        if self.active >= self.max_connections:  # several handshakes raced the check above
            await ws.close(1013, "too many connections")
            return
        self.active += 1
        self.relayed += 1
        try:
            await self._pipe(ws)
        finally:
            self.active -= 1

    async def _pipe(self, ws: ServerConnection) -> None:
        broker = self.broker
        try:
            async with asyncio.timeout(BROKER_CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    broker.host, broker.port, ssl=broker.tls, limit=READ_CHUNK
                )
        except (OSError, TimeoutError) as exc:
            log.warning("dashboard: broker unreachable", extra={"error": str(exc)})
            await ws.close(1011, "broker unreachable")
            return

        async def up() -> None:  # browser -> broker
            async for message in ws:
                if isinstance(message, str):
                    await ws.close(1003, "MQTT needs binary messages")
                    return
                writer.write(message)
                await writer.drain()

        async def down() -> None:  # broker -> browser
            while data := await reader.read(READ_CHUNK):
                await ws.send(data)

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, OSError):
                    await task
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            await ws.close()


def _mqtt_subprotocol(conn: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """`mqtt` when the client offers it (browsers do); clients offering none are let in too."""
    return Subprotocol("mqtt") if "mqtt" in offered else None


def _same_origin(request: Request) -> bool:
    """A browser's WebSocket must come from this dashboard's own page: without the check any
    web site the user visits could drive the broker through the relay (with the embedded
    broker's anonymous access, even command chargers). Clients without Origin are not
    browsers and must log in to the broker like any MQTT client."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == (request.headers.get("Host") or "").lower()


def _text(status: http.HTTPStatus, text: str) -> Response:
    body = text.encode()
    headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return Response(status.value, status.phrase, headers, body)


class WebUnit:
    """The dashboard as a unit of a role: built from settings, started and closed with it."""

    def __init__(self, settings: CommonSettings, *, fallback_port: bool = False) -> None:
        host, port = parse_web_address(settings.web)
        self.server = DashboardServer(
            host,
            port,
            BrokerAddress.from_url(settings.mqtt, settings.mqtt_ca_file),
            base_topic=settings.base_topic,
        )
        self.fallback_port = fallback_port

    async def start(self) -> None:
        try:
            await self.server.start()
        except OSError:
            if not self.fallback_port:
                raise
            self.server.port = 0  # the demo's default port is taken: any free one will do
            await self.server.start()


@asynccontextmanager
async def dashboard(
    settings: CommonSettings, *, announce: bool = False, fallback_port: bool = False
) -> AsyncIterator[WebUnit | None]:
    """Serve the dashboard for the duration of the block when `--web` is set."""
    if not settings.web:
        yield None
        return
    unit = WebUnit(settings, fallback_port=fallback_port)
    await unit.start()
    log.info("dashboard serving", extra={"url": unit.server.url})
    if announce:
        print(f"dashboard: {unit.server.url}", file=sys.stderr, flush=True)
    try:
        yield unit
    finally:
        await unit.server.close()


S = TypeVar("S", bound=CommonSettings)


def with_dashboard(
    serve_role: Callable[[S], Coroutine[Any, Any, None]],
) -> Callable[[S], Coroutine[Any, Any, None]]:
    """`serve_role` with the dashboard beside it (for `gateway` and `service`)."""

    async def serve_both(settings: S) -> None:
        async with dashboard(settings, announce=True):
            await serve_role(settings)

    return serve_both
