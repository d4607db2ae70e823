"""Memory held per idle charger, in process (bench/memory.py measures the RSS of a real gateway
with 10,000): chargers that sent their ICCID, a 0x20 and a 2-port 0x21 must not hold more than
a generous bound of traced Python memory each. No timing involved."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path
from typing import Any

import protocol as p
from bridge.gateway.core import Gateway
from bridge.gateway.registry import PortRecord
from bridge.links.base import Connection
from bridge.mqtt.payloads import PortState
from bridge.mqtt.topics import Topics
from tests.bridge.gateway.fakes import FakeClock, settings

CHARGERS = 300
BOUND = 4096  # bytes of traced memory per charger; about 2.5 KB today (docs/performance.md)
REGISTRATION = p.encode_payload(p.Registration(126, 2, 0, 0x21, 0, 0))
HEARTBEAT = p.encode_payload(p.Heartbeat(voltage=2200, port_statuses=(0, 0), signal=25))


class Forgetting:
    """A publisher whose broker acknowledges at once and that keeps nothing."""

    dropped = 0

    def submit(self, topic: str, payload: bytes | str, **_: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def post(self, topic: str, payload: bytes, **_: Any) -> None:
        """Acknowledged at once, kept nowhere."""

    def send_queued(self) -> None: ...


class Socket:
    """The transport of one charger: what the gateway writes is counted, not kept."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def close(self) -> None: ...

    def abort(self) -> None: ...


def connect(gw: Gateway, index: int) -> Socket:
    """One charger: its ICCID and registration, then its heartbeat, as the bytes a socket gives."""
    sock = Socket()
    conn = Connection(sock, "tcp", f"tcp:127.0.0.2:{10000 + index}")  # type: ignore[arg-type]
    gw.connection_made(conn)
    pid = 0x04 << 24 | (0x100000 + index)
    hello = f"8986{index:016d}".encode() + p.encode_frame(pid, 1, 0x20, REGISTRATION)
    gw.data_received(conn, hello)
    gw.data_received(conn, p.encode_frame(pid, 2, 0x21, HEARTBEAT))
    return sock


async def held_per_charger(gw: Gateway, first: int, count: int) -> tuple[float, list[Socket]]:
    """Traced bytes still allocated after `count` chargers connected, per charger (the loop
    runs between chargers, so acknowledgement callbacks are done as in a gateway)."""
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        socks = []
        for i in range(count):
            socks.append(connect(gw, first + i))
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / count, socks


async def test_an_idle_charger_holds_a_bounded_amount_of_memory(tmp_path: Path) -> None:
    gw = Gateway(settings(tmp_path), Forgetting(), Topics("chargebridge"), clock=FakeClock())  # type: ignore[arg-type]
    connect(gw, 0)  # first-use caches (pydantic, topics) are not per charger
    per_charger, socks = await held_per_charger(gw, 1, CHARGERS)
    assert all(s.written == 2 for s in socks)  # registration and heartbeat answered
    assert gw.registry.online_count() == CHARGERS + 1
    assert all(len(d.ports) == 2 for d in gw.registry.devices.values())
    assert per_charger < BOUND, f"{per_charger:.0f} bytes per idle charger"


def test_the_kept_port_record_has_every_port_state_field() -> None:
    """A field added to `PortState` must be kept per device too, or a republish loses it."""
    assert PortRecord._fields == tuple(PortState.model_fields)
    at = "2026-12-02T00:00:00.000Z"
    state = PortState(
        port=1, status="charging", status_code=1, power_w=120.5, order_no="AB" * 16,
        updated_at=at, energy_kwh=0.25, measured_at=at,
    )  # fmt: skip
    record = PortRecord.of(state)
    assert record.model() == state and record.model().to_json() == state.to_json()
    later = PortRecord.of(state.model_copy(update={"updated_at": "2026-12-02T00:03:00.000Z"}))
    assert record.same_as(later) and later != record
    assert not record.same_as(PortRecord.of(state.model_copy(update={"power_w": 99.0})))
