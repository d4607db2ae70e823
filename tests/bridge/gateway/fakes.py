"""In-memory parts for fast unit tests of the gateway: no broker, no sockets, no sleeps.

`FakePublisher` records every submit and hands back futures the test resolves (or fails);
`FakeLink` is a `Connection` whose writes land in a list; `FakeClock` moves when told to.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import protocol as p
from bridge.config import GatewaySettings, load_settings
from bridge.gateway.core import Gateway
from bridge.links.base import Connection
from bridge.mqtt.topics import Topics
from protocol import Frame, StreamDecoder

PID = 0x04AB373B
DEVICE_ID = "04AB373B"


@dataclass
class Published:
    topic: str
    payload: Any  # parsed JSON
    retain: bool
    critical: bool
    key: str | None
    future: asyncio.Future[None]


class FakePublisher:
    """Records topic, payload and retain; resolves each future at once unless `hold` is set,
    in which case the test resolves or fails it (a broker acknowledging or refusing)."""

    def __init__(self) -> None:
        self.messages: list[Published] = []
        self.hold = False
        self.dropped = 0
        self.sent_at: list[int] = []  # len(messages) at each `send_queued`

    def submit(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Any = None,
        critical: bool = False,
        key: str | None = None,
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.hold:
            fut.set_result(None)
        self.messages.append(Published(topic, json.loads(payload), retain, critical, key, fut))
        return fut

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.submit(topic, payload, retain=retain)

    def send_queued(self) -> None:
        self.sent_at.append(len(self.messages))

    def on(self, topic_end: str) -> list[Published]:
        return [m for m in self.messages if m.topic.endswith(topic_end)]

    def events(self, kind: str, type_: str) -> list[dict[str, Any]]:
        return [m.payload for m in self.on(f"/event/{kind}") if m.payload["type"] == type_]


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.wrote = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.wrote.set()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeLink:
    """One connection to the gateway: frames in as bytes, frames out decoded from bytes."""

    def __init__(self, gateway: Gateway, kind: str = "tcp") -> None:
        self.gateway = gateway
        self.transport = FakeTransport()
        self.conn = Connection(self.transport, kind, f"{kind}-peer")  # type: ignore[arg-type]
        self._decoder = StreamDecoder()
        self._read = 0
        self.message_id = 0
        gateway.connection_made(self.conn)

    def send(self, command: int, data: bytes = b"", *, message_id: int | None = None) -> int:
        if message_id is None:
            self.message_id += 1
            message_id = self.message_id
        raw = p.encode_frame(PID, message_id, command, data)
        items = list(self._decoder.feed(raw))
        self.gateway.items_received(self.conn, items, len(raw))
        return message_id

    def frames(self) -> list[Frame]:
        """Every frame the gateway wrote so far, decoded from the bytes."""
        out = StreamDecoder()
        return [i for raw in self.transport.written for i in out.feed(raw) if isinstance(i, Frame)]

    def new_frames(self) -> list[Frame]:
        frames = self.frames()
        fresh = frames[self._read :]
        self._read = len(frames)
        return fresh

    async def next_frame(self) -> Frame:
        """Wait (on the gateway's write, not on time) for the next frame it writes."""
        while True:
            fresh = self.new_frames()
            if fresh:
                assert len(fresh) == 1, fresh
                return fresh[0]
            self.transport.wrote.clear()
            await asyncio.wait_for(self.transport.wrote.wait(), 5)


@dataclass
class FakeClock:
    mono: float = 1000.0
    unix: float = 1_700_000_000.0
    times: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.unix

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.unix += seconds


def settings(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "mqtt": "mqtt://127.0.0.1:1",
        "gateway_id": "unit-gw",
        "tcp": ["127.0.0.1:0"],
        "state_dir": str(tmp_path),
        "command_timeout_s": 5.0,
        "command_spacing_s": 0.0,
    }
    values.update(overrides)
    return load_settings(GatewaySettings, values)


def gateway(tmp_path: Path, **overrides: Any) -> tuple[Gateway, FakePublisher, FakeClock]:
    mqtt = FakePublisher()
    clock = FakeClock()
    gw = Gateway(settings(tmp_path, **overrides), mqtt, Topics("chargebridge"), clock=clock)
    return gw, mqtt, clock
