"""Two charging service processes on one PostgreSQL store and one base topic (docs/scaling.md):
events and requests reach them through shared subscriptions; whatever instance gets what,
every settlement makes exactly one completed session with its energy, the statistics equal
the ledger, a start request is carried out once, a message delivered twice takes effect
once, and no subscriber sees a session's version go back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from tests.bridge.charging.harness import (
    DEV,
    TOPICS,
    fake_gateway,
    power_event,
    request,
    settled_event,
    watcher,
)
from tests.bridge.charging.test_durability import ServiceProcess
from tests.broker import Mosquitto

DEVICES = ("0A000001", "0A000002", "0A000003")
PORTS = (1, 2, 3, 4)
POWER_REPORTS = 3


@dataclass
class Recorder:
    """Every session message (its version) and every response, in the order they came."""

    client: aiomqtt.Client
    versions: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    responses: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def response(self, request_id: str, timeout: float = 30) -> None:
        """Wait until this subscriber has seen the response to `request_id` (it is another
        client than the watcher's, so its copy may come a little later)."""
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(
                lambda: any(r.get("request_id") == request_id for r in self.responses)
            )

    async def serve(self, subscribed: asyncio.Event) -> None:
        await self.client.subscribe(TOPICS.all_sessions, qos=1)
        await self.client.subscribe(TOPICS.charging_response("+"), qos=1)
        subscribed.set()
        async for message in self.client.messages:
            raw = message.payload if isinstance(message.payload, bytes) else b""
            if not raw:
                continue
            data = json.loads(raw)
            sid = TOPICS.parse_session(str(message.topic))
            if sid is not None:
                self.versions[sid].append(data["version"])
            else:
                self.responses.append(data)
                async with self.arrived:
                    self.arrived.notify_all()


@contextlib.asynccontextmanager
async def recorder(broker: Mosquitto) -> AsyncIterator[Recorder]:
    async with broker.client() as client:
        rec = Recorder(client)
        subscribed = asyncio.Event()
        task = asyncio.create_task(rec.serve(subscribed))
        async with asyncio.timeout(10):
            await subscribed.wait()
        try:
            yield rec
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def instance(broker: Mosquitto, tmp_path: Path, name: str, pg_url: str) -> ServiceProcess:
    proc = ServiceProcess(broker, tmp_path / name, tmp_path / f"{name}.log")
    proc.args += ["--store", pg_url, "--instance-id", name, "--session-timeout-s", "3600"]
    return proc


async def ready(proc: ServiceProcess, timeout: float = 60) -> None:
    """Wait until the process logged that it is connected and current."""
    async with asyncio.timeout(timeout):
        while not (proc.log.exists() and "charging service ready" in proc.log.read_text()):
            assert proc.proc is not None and proc.proc.poll() is None, proc.log.read_text()
            await asyncio.sleep(0.1)


def order_no(device: str, port: int) -> str:
    return f"{device}{port:08X}".ljust(32, "0")


async def test_two_instances_share_the_work_exactly_once(
    broker: Mosquitto, tmp_path: Path, pg_url: str
) -> None:
    a = instance(broker, tmp_path, "a", pg_url)
    b = instance(broker, tmp_path, "b", pg_url)
    try:
        a.start()
        b.start()
        await ready(a)
        await ready(b)
        async with (
            watcher(broker) as w,
            recorder(broker) as rec,
            fake_gateway(broker) as gw,
            broker.client() as dev,
        ):
            ledger: dict[str, float] = {}
            messages = 0
            for i, (device, port) in enumerate((d, p) for d in DEVICES for p in PORTS):
                order = order_no(device, port)
                for k in range(1, POWER_REPORTS + 1):
                    event = power_event(
                        k / 100, order_no=order, port=port, device_id=device, duration_s=60 * k
                    )
                    await dev.publish(TOPICS.event(device, "order"), json.dumps(event), qos=1)
                    messages += 1
                energy = round(0.1 + i / 1000, 3)
                ledger[order] = energy
                settled = settled_event(energy, 600, order_no=order, port=port, device_id=device)
                payload = json.dumps(settled)
                # Delivered twice (the same message: a redelivery), then resent by the device.
                for body in (payload, payload, json.dumps({**settled, "message_id": 10**6 + i})):
                    await dev.publish(TOPICS.event(device, "order"), body, qos=1)
                messages += 1
            # One start request, delivered twice.
            start = {"request_id": "start-once", "device_id": DEV, "port": 1}
            await request(dev, "start", start)
            await request(dev, "start", start)

            duplicates = 2 * len(ledger) + 1
            stats = await w.stats_where(
                timeout=90,
                sessions_completed=len(ledger),
                duplicate_events=duplicates,
                total_events_processed=messages + 1,  # + the device's `started` reply
                sessions_created=len(ledger) + 1,
                active_sessions=1,
                security_events=0,
            )
            assert stats["total_energy_delivered_kwh"] == round(sum(ledger.values()), 3)
            for order, energy in ledger.items():
                done = await w.session(order, "completed", timeout=30)
                assert done["energy_kwh"] == energy
            started = await w.response("start", "start-once", timeout=30)
            assert started["ok"] is True
            assert [c for c, _ in gw.requests] == ["start_charging"]  # one 0x82
            # One response: the recorder has it, and a later request's response as a barrier.
            await rec.response("start-once")
            await request(dev, "query", {"request_id": "after", "session_id": order})
            await rec.response("after")
            answered = [r["request_id"] for r in rec.responses]
            assert answered.count("start-once") == 1, answered
            for sid, versions in rec.versions.items():
                assert versions == sorted(versions), (sid, versions)
            assert sorted(rec.versions) == sorted([*ledger, started["session"]["session_id"]])
        for proc in (a, b):  # both took part
            assert "event power" in proc.log.read_text(), proc.log
    finally:
        a.close()
        b.close()
