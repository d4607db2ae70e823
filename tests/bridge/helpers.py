"""Reusable test helpers: a raw-socket fake charger, an MQTT collector and a running gateway.

The charging-service tests reuse these: `FakeDevice` speaks DNY over a real TCP socket with
frames built by `protocol`; `MqttCollector` records every message on its subscriptions and
awaits the ones a test expects, always with a timeout; `running_gateway` runs the real
`GatewayApp` in the test's event loop on an ephemeral port.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import aiomqtt

from bridge.app import GatewayApp
from bridge.config import GatewaySettings, load_settings
from bridge.mqtt.client import MqttClient, MqttSettings
from protocol import Frame, StreamDecoder, encode_frame
from tests.broker import Mosquitto

TIMEOUT = 10.0
PID = 0x04AB373B  # the reference's example dual socket, device id 04AB373B
ICCID = "89860412345678901234"


class FakeDevice:
    """One charger (or host) on a TCP connection; numbers its own message ids."""

    def __init__(self, physical_id: int = PID) -> None:
        self.physical_id = physical_id
        self.message_id = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._decoder = StreamDecoder()
        self._frames: list[Frame] = []

    async def connect(self, port: int, host: str = "127.0.0.1", iccid: str | None = None) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        if iccid:
            await self.send_raw(iccid.encode())

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def send(
        self,
        command: int,
        data: bytes = b"",
        *,
        message_id: int | None = None,
        physical_id: int | None = None,
    ) -> int:
        """Send one frame; returns its message id (a new one unless given)."""
        if message_id is None:
            self.message_id += 1
            message_id = self.message_id
        pid = self.physical_id if physical_id is None else physical_id
        await self.send_raw(encode_frame(pid, message_id, command, data))
        return message_id

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        """The next frame from the gateway."""
        assert self.reader is not None
        async with asyncio.timeout(timeout):
            while not self._frames:
                chunk = await self.reader.read(4096)
                if not chunk:
                    raise ConnectionError("gateway closed the connection")
                self._frames.extend(i for i in self._decoder.feed(chunk) if isinstance(i, Frame))
        return self._frames.pop(0)

    async def expect_silence(self, seconds: float) -> None:
        """Assert that no frame arrives within `seconds` (for "must not answer" rules)."""
        try:
            frame = await self.recv(timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def closed_by_peer(self, timeout: float = TIMEOUT) -> None:
        assert self.reader is not None
        async with asyncio.timeout(timeout):
            while await self.reader.read(4096):
                pass

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with suppress(ConnectionError):
                await self.writer.wait_closed()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttCollector:
    """Records all messages on its subscriptions; `wait` returns the first match not yet
    consumed (earlier or future), so tests never race the broker."""

    def __init__(self, client: aiomqtt.Client | MqttClient) -> None:
        self.client = client
        self.messages: list[Received] = []
        self._consumed: set[int] = set()
        self._new = asyncio.Condition()

    async def _pump(self) -> None:
        with suppress(aiomqtt.MqttError):  # the broker went away (fault tests): stop quietly
            async for m in self.client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                async with self._new:
                    self.messages.append(Received(str(m.topic), payload, m.retain, m.properties))
                    self._new.notify_all()

    async def wait(
        self,
        topic: str,
        where: Callable[[Any], bool] | None = None,
        timeout: float = TIMEOUT,
    ) -> Any:
        """The JSON of the next unconsumed message on `topic` (exact) matching `where`."""
        return (await self.wait_message(topic, where, timeout)).json()

    async def wait_message(
        self, topic: str, where: Callable[[Any], bool] | None = None, timeout: float = TIMEOUT
    ) -> Received:
        def find() -> Received | None:
            for i, m in enumerate(self.messages):
                if i in self._consumed or m.topic != topic:
                    continue
                if where is not None and (not m.payload or not where(m.json())):
                    continue
                self._consumed.add(i)
                return m
            return None

        async with asyncio.timeout(timeout), self._new:
            while (found := find()) is None:
                await self._new.wait()
            return found

    async def latest(
        self, topic: str, where: Callable[[Any], bool], timeout: float = TIMEOUT
    ) -> Any:
        """The JSON of the newest message on `topic` matching `where`, consumed or not (for
        retained state such as statistics, which is republished only when it changes)."""

        def find() -> Any:
            for m in reversed(self.messages):
                if m.topic == topic and m.payload and where(m.json()):
                    return m.json()
            return None

        async with asyncio.timeout(timeout), self._new:
            while (found := find()) is None:
                await self._new.wait()
            return found

    def all(self, topic: str) -> list[Any]:
        return [m.json() for m in self.messages if m.topic == topic and m.payload]


@asynccontextmanager
async def mqtt_collector(
    broker: Mosquitto, *topics: str, persistent_id: str | None = None
) -> AsyncIterator[MqttCollector]:
    """Subscribes to `topics`. With `persistent_id` the session outlives the connection (the
    broker queues QoS 1 messages for it), for tests that must not miss what comes meanwhile."""
    options: dict[str, Any] = (
        {
            "identifier": persistent_id,
            "clean_session": False,
            "protocol": aiomqtt.ProtocolVersion.V311,
        }
        if persistent_id
        else {"protocol": aiomqtt.ProtocolVersion.V5}
    )
    async with broker.client(**options) as client:
        collector = MqttCollector(client)
        for topic in topics:
            await client.subscribe(topic, qos=1)
        pump = asyncio.create_task(collector._pump())
        try:
            yield collector
        finally:
            pump.cancel()
            with suppress(asyncio.CancelledError):
                await pump


@asynccontextmanager
async def lasting_collector(
    broker: Mosquitto, *topics: str, client_id: str, user: str = "monitor"
) -> AsyncIterator[MqttCollector]:
    """A collector that outlives broker restarts and pauses: our reconnecting client with a
    persistent session, so the broker keeps what arrives while it is away (fault tests)."""
    settings = MqttSettings(
        url=broker.url_for(user),
        client_id=client_id,
        clean_start=False,
        session_expiry_s=3600,
        keepalive_s=2,
    )
    async with MqttClient(settings, subscriptions=[(t, 1) for t in topics]) as client:
        async with asyncio.timeout(TIMEOUT):
            await client.wait_connected()
        collector = MqttCollector(client)
        pump = asyncio.create_task(collector._pump())
        try:
            yield collector
        finally:
            pump.cancel()
            with suppress(asyncio.CancelledError):
                await pump


def gateway_settings(
    broker: Mosquitto, tmp_path: os.PathLike[str], **overrides: Any
) -> GatewaySettings:
    values: dict[str, Any] = {
        "mqtt": broker.url,
        "gateway_id": "test-gw",
        "tcp": ["127.0.0.1:0"],
        "state_dir": str(tmp_path),
        "stats_interval": 0.2,
        "command_timeout_s": 0.5,
        "command_spacing_s": 0.5,
    }
    values.update(overrides)
    return load_settings(GatewaySettings, values)


@asynccontextmanager
async def started(
    run: Callable[[asyncio.Event], Awaitable[None]], timeout: float = TIMEOUT
) -> AsyncIterator[None]:
    """Run `run(ready)` as a task until the block ends; enter once `ready` is set, or raise
    what the task raised if it ended first (a start-up error, not a timeout)."""
    ready = asyncio.Event()
    task = asyncio.create_task(run(ready))
    try:
        async with asyncio.timeout(timeout):
            ready_wait = asyncio.create_task(ready.wait())
            done, _ = await asyncio.wait({ready_wait, task}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                ready_wait.cancel()
                task.result()
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def running_gateway(settings: GatewaySettings) -> AsyncIterator[GatewayApp]:
    app = GatewayApp(settings)
    async with started(lambda ready: app.serve(ready=ready)):
        yield app


def tcp_port(app: GatewayApp) -> int:
    return app.tcp_addresses[0][1]


class PtyLine:
    """The far end of a serial line: a pseudo-terminal whose slave the gateway opens.

    Frames written to the master reach the gateway as if sent by devices on an RS-485 bus."""

    def __init__(self) -> None:
        import tty

        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo or line editing before pyserial configures it
        self.path = os.ttyname(self.slave)
        self._decoder = StreamDecoder()
        self._frames: asyncio.Queue[Frame] = asyncio.Queue()
        os.set_blocking(self.master, False)
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        for item in self._decoder.feed(data):
            if isinstance(item, Frame):
                self._frames.put_nowait(item)

    def send(self, physical_id: int, message_id: int, command: int, data: bytes = b"") -> None:
        os.write(self.master, encode_frame(physical_id, message_id, command, data))

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        async with asyncio.timeout(timeout):
            return await self._frames.get()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        for fd in (self.master, self.slave):
            with suppress(OSError):
                os.close(fd)
