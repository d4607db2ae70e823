"""Read back-pressure (`bridge.gateway.readgate`): device connections are not read while a
connected broker is far behind, are read again once it caught up, and are neither idle nor
silent in between. Unit tests: a fake publisher whose backlog the test sets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import protocol as p
from bridge.gateway.core import Gateway
from bridge.gateway.readgate import PAUSE_AT, RESUME_AT
from bridge.links.base import Connection
from bridge.mqtt.topics import Topics
from tests.bridge.gateway.fakes import FakeClock, FakePublisher, FakeTransport, settings


class BehindPublisher(FakePublisher):
    """A publisher whose backlog (`queued`) and broker connection the test decides."""

    def __init__(self) -> None:
        super().__init__()
        self.queued = 0
        self.connected = asyncio.Event()
        self.connected.set()


class Socket(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def setup(tmp_path: Path, **overrides: Any) -> tuple[Gateway, BehindPublisher, FakeClock]:
    mqtt, clock = BehindPublisher(), FakeClock()
    gw = Gateway(settings(tmp_path, **overrides), mqtt, Topics("chargebridge"), clock=clock)
    return gw, mqtt, clock


def connect(gw: Gateway, kind: str = "tcp") -> tuple[Connection, Socket]:
    sock = Socket()
    conn = Connection(sock, kind, f"{kind}:peer")  # type: ignore[arg-type]
    gw.connection_made(conn)
    return conn, sock


def heartbeat(gw: Gateway, conn: Connection, pid: int = 0x04AB373B) -> None:
    hb = p.encode_payload(p.Heartbeat(voltage=2200, port_statuses=(0, 0)))
    gw.data_received(conn, p.encode_frame(pid, 1, 0x21, hb))


async def test_reading_pauses_over_the_backlog_and_resumes_below_it(tmp_path: Path) -> None:
    gw, mqtt, _ = setup(tmp_path)
    gate = gw.connections.read_gate
    first, first_sock = connect(gw)
    _, second_sock = connect(gw)
    mqtt.queued = PAUSE_AT - 1
    heartbeat(gw, first)
    assert first_sock.reading and second_sock.reading
    mqtt.queued = PAUSE_AT
    heartbeat(gw, first)
    assert not first_sock.reading and not second_sock.reading
    _, late_sock = connect(gw)  # accepted while paused: not read either
    assert not late_sock.reading
    mqtt.queued = RESUME_AT + 1
    gate.poll()
    assert gate.paused and not first_sock.reading
    mqtt.queued = RESUME_AT
    gate.poll()
    assert not gate.paused
    assert first_sock.reading and second_sock.reading and late_sock.reading
    assert gate.pauses == 1


async def test_reading_goes_on_while_the_broker_is_not_connected(tmp_path: Path) -> None:
    """Nothing drains then: devices are still answered and the outbox bounds memory."""
    gw, mqtt, _ = setup(tmp_path)
    conn, sock = connect(gw)
    mqtt.connected.clear()
    mqtt.queued = 10 * PAUSE_AT
    heartbeat(gw, conn)
    assert sock.reading
    assert p.decode_frame(sock.written[-1]).command == 0x21  # answered
    mqtt.connected.set()  # back, and far behind: paused; then it goes down while paused
    heartbeat(gw, conn, 0x04AB373C)
    assert not sock.reading
    mqtt.connected.clear()
    gw.connections.read_gate.poll()
    assert sock.reading


async def test_time_paused_is_not_idle_time(tmp_path: Path) -> None:
    gw, mqtt, clock = setup(tmp_path, first_frame_timeout_s=30.0, idle_timeout=60.0)
    framed, framed_sock = connect(gw)
    heartbeat(gw, framed)
    _, fresh_sock = connect(gw)  # no frame read yet
    mqtt.queued = PAUSE_AT
    heartbeat(gw, framed)
    assert gw.connections.read_gate.paused
    clock.advance(600.0)  # far beyond both timeouts, all of it paused
    gw.loops.sweep_idle()
    assert not framed_sock.closed and not fresh_sock.closed
    mqtt.queued = 0
    gw.connections.read_gate.poll()
    gw.loops.sweep_idle()
    assert not framed_sock.closed and not fresh_sock.closed
    clock.advance(31.0)  # the first-frame timeout counts again from the resume
    gw.loops.sweep_idle()
    assert fresh_sock.closed and not framed_sock.closed


async def test_serial_lines_are_never_paused(tmp_path: Path) -> None:
    gw, mqtt, _ = setup(tmp_path)
    line, line_sock = connect(gw, "serial")
    mqtt.queued = PAUSE_AT
    heartbeat(gw, line)
    assert gw.connections.read_gate.paused and line_sock.reading
