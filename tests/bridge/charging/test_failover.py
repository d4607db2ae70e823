"""Failover (issue 14): two `python -m bridge service` processes on one real PostgreSQL and one
real Mosquitto; one is killed with SIGKILL in the middle of simulated sessions and never
restarted. Every acknowledged settlement becomes exactly one completed session with its
energy, the statistics equal the ledger, a start request is carried out once, and whatever
the broker routed to the dead instance is processed within 30 s of the kill (its client-id
slot adopted and drained by the survivor: bridge/charging/slots.py)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from tests.bridge.charging.harness import (
    DEV,
    fake_gateway,
    power_event,
    publish_event,
    request,
    settled_event,
    watcher,
)
from tests.bridge.charging.store.conftest import pg_cluster, pg_url  # noqa: F401
from tests.bridge.charging.test_durability import ServiceProcess
from tests.broker import Mosquitto

pytestmark = pytest.mark.slow

SESSIONS = 12
FAILOVER_S = 30.0  # the bound: nothing routed to the dead instance waits longer


def order(k: int) -> str:
    return f"{0xF0 << 120 | k:032X}"


def device(k: int) -> str:
    return f"{0x04A00000 + k:08X}"


def energy(k: int) -> float:
    return round(0.1 + 0.01 * k, 2)


async def test_one_of_two_instances_killed_for_good_loses_and_doubles_nothing(
    broker: Mosquitto,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    instances = []
    for name in ("a", "b"):
        proc = ServiceProcess(broker, tmp_path / f"box-{name}", tmp_path / f"{name}.log")
        proc.args += ["--store", pg_url, "--instance-id", name, "--slot-idle-s", "1"]
        instances.append(proc)
    a, b = instances
    try:
        async with watcher(broker) as w, fake_gateway(broker) as gateway, broker.client() as gw:
            a.start()
            await w.until(lambda: w.stats, timeout=30)
            b.start()
            await wait_log(tmp_path / "b.log", re.compile("charging service ready"), 30)
            # First half of every session: started and charging, on both instances.
            for k in range(SESSIONS):
                event = power_event(energy(k) / 2, order_no=order(k), device_id=device(k), port=1)
                await publish_event(gw, "port", event)
            for k in range(SESSIONS):
                await w.session(order(k), "charging", timeout=30)
            # The second half, with b killed in the middle of it for good. From then on the
            # broker queues b's share in b's session, which only a drain by `a` reaches.
            killed = 0.0
            for k in range(SESSIONS):
                event = power_event(energy(k) * 0.8, order_no=order(k), device_id=device(k), port=1)
                await publish_event(gw, "port", event)
                if k == SESSIONS // 2:
                    b.kill()
                    killed = asyncio.get_running_loop().time()
            # The fake gateway answers as charger DEV: the request names it.
            start = {"request_id": "failover-start", "device_id": DEV, "port": 1}
            await request(gw, "start", start)
            for k in range(SESSIONS):  # every settlement acknowledged (PUBACK) by the broker
                await publish_event(gw, "order", settlement(k))
            ledger = round(sum(energy(k) for k in range(SESSIONS)), 3)

            async with asyncio.timeout_at(killed + FAILOVER_S):  # the bound
                for k in range(SESSIONS):
                    done = await w.session(order(k), "completed", timeout=FAILOVER_S)
                    assert done["energy_kwh"] == energy(k)
                response = await w.response("start", "failover-start", timeout=FAILOVER_S)
                await w.stats_where(
                    timeout=FAILOVER_S,
                    sessions_created=SESSIONS + 1,
                    sessions_completed=SESSIONS,
                    total_energy_delivered_kwh=ledger,
                )
            assert response["ok"], response
            # b's share went through the survivor's drain of b's client-id slot.
            drained = await wait_log(tmp_path / "a.log", DRAINED_SLOT_1, 30)
            assert int(drained.group(1)) > 0

            # Settlements resent by the chargers (their 0x03 reply lost): nothing changes.
            for k in range(0, SESSIONS, 3):
                await publish_event(gw, "order", settlement(k))
            stats = await w.stats_where(
                timeout=30, duplicate_events=SESSIONS // 3, sessions_completed=SESSIONS
            )
            assert stats["total_energy_delivered_kwh"] == ledger
            assert stats["sessions_created"] == SESSIONS + 1
            assert stats["charging_stop_events"] == SESSIONS
            completed = [s for s in w.sessions.values() if s and s["status"] == "completed"]
            assert sorted(s["session_id"] for s in completed) == [order(k) for k in range(SESSIONS)]
            assert all(s["energy_kwh"] == energy(int(s["session_id"][-2:], 16)) for s in completed)
            starts = [body for cmd, body in gateway.requests if cmd == "start_charging"]
            assert len(starts) == 1, starts  # carried out once: one command to the device
    finally:
        for proc in instances:
            proc.close()


DRAINED_SLOT_1 = re.compile(r"drained (\d+) messages of MQTT client-id slot 1 and ended")


def settlement(k: int) -> dict[str, object]:
    settled = settled_event(energy(k), 600, order_no=order(k), device_id=device(k))
    settled["port"] = 1
    return settled


async def wait_log(path: Path, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    """Until a child's log file has a line matching `pattern` (it announces nothing else to
    await); returns the match."""
    return await asyncio.to_thread(_wait_log, path, pattern, timeout)


def _wait_log(path: Path, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.search(path.read_text(errors="replace")) if path.exists() else None
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} never logged {pattern.pattern!r}")
        time.sleep(0.1)
