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
            await wait_log(tmp_path / "b.log", "charging service ready", 30)
            # First half of every session: started and charging, on both instances.
            for k in range(SESSIONS):
                event = power_event(energy(k) / 2, order_no=order(k), device_id=device(k), port=1)
                await publish_event(gw, "port", event)
            for k in range(SESSIONS):
                await w.session(order(k), "charging", timeout=30)
            # The second half, with b killed in the middle of it for good.
            killed = 0.0
            for k in range(SESSIONS):
                event = power_event(energy(k) * 0.8, order_no=order(k), device_id=device(k), port=1)
                await publish_event(gw, "port", event)
                if k == SESSIONS // 2:
                    b.kill()
                    killed = asyncio.get_running_loop().time()
            start = {"request_id": "failover-start", "device_id": device(99), "port": 1}
            await request(gw, "start", start)
            for k in range(SESSIONS):  # every settlement acknowledged (PUBACK), and resent
                settled = settled_event(energy(k), 600, order_no=order(k), device_id=device(k))
                settled["port"] = 1
                await publish_event(gw, "order", settled)
                await publish_event(gw, "order", settled)
            ledger = round(sum(energy(k) for k in range(SESSIONS)), 3)

            async def all_done() -> None:
                for k in range(SESSIONS):
                    done = await w.session(order(k), "completed", timeout=FAILOVER_S)
                    assert done["energy_kwh"] == energy(k)
                await w.stats_where(
                    timeout=FAILOVER_S,
                    sessions_completed=SESSIONS,
                    total_energy_delivered_kwh=ledger,
                )

            await asyncio.wait_for(all_done(), FAILOVER_S)
            taken = asyncio.get_running_loop().time() - killed
            assert taken < FAILOVER_S

            response = await w.response("start", "failover-start", timeout=30)
            assert response["ok"], response
            starts = [body for cmd, body in gateway.requests if cmd == "start_charging"]
            assert len(starts) == 1, starts  # carried out once: one command to the device
            stats = await w.stats_where(
                timeout=30,
                sessions_created=SESSIONS + 1,
                sessions_completed=SESSIONS,
                total_energy_delivered_kwh=ledger,
            )
            completed = [s for s in w.sessions.values() if s and s["status"] == "completed"]
            assert sorted(s["session_id"] for s in completed) == [order(k) for k in range(SESSIONS)]
            assert stats["charging_stop_events"] == SESSIONS
            # The survivor adopted the dead instance's slot and ended its session.
            await wait_log(tmp_path / "a.log", "and ended its session", 30)
        a_log = (tmp_path / "a.log").read_text(errors="replace")
        assert re.search(r"adopting orphaned MQTT client-id slot \d", a_log)
    finally:
        for proc in instances:
            proc.close()


async def wait_log(path: Path, text: str, timeout: float) -> None:
    """Until a child's log file has `text` (it announces nothing else to await)."""
    await asyncio.to_thread(_wait_log, path, text, timeout)


def _wait_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} never logged {text!r}")
        time.sleep(0.1)
