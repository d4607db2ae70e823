"""The charging service's presence with a real Mosquitto: `{b}/charging/state` online with
the live instances while any runs, `offline` when none does (by its stop, or by the will of
a killed process), and `{b}/charging/instances/{id}` per instance (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bridge.charging.presence import ServicePresence, instance_id
from tests.bridge.charging.harness import BASE, running_service, settings_for
from tests.bridge.helpers import TIMEOUT, mqtt_collector
from tests.broker import Mosquitto

STATE = f"{BASE}/charging/state"


def instance(name: str) -> str:
    return f"{BASE}/charging/instances/{name}"


def online(*names: str) -> dict[str, Any]:
    return {"state": "online", "instances": sorted(names)}


OFFLINE = {"state": "offline", "instances": []}


async def retained(broker: Mosquitto, topic: str) -> Any:
    """What a client subscribing now reads (the retained message), or None."""
    async with mqtt_collector(broker, topic, f"{BASE}/probe/presence") as late:
        await late.client.publish(f"{BASE}/probe/presence", b"{}", qos=1)
        await late.wait_message(f"{BASE}/probe/presence")  # retained messages come before it
    found = [m.json() for m in late.messages if m.topic == topic and m.payload]
    return found[-1] if found else None


async def settles_on(broker: Mosquitto, topic: str, expected: Any) -> None:
    """Until the broker retains `expected` on `topic` (survivors correct a will's `offline`
    within a round trip; each look is one subscription, no sleeping)."""
    async with asyncio.timeout(TIMEOUT):
        while (found := await retained(broker, topic)) != expected:
            assert found is None or found["state"] in ("online", "offline"), found


async def test_the_service_is_online_while_it_runs_and_offline_when_it_stops(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = settings_for(broker, tmp_path, gateway_id="svc-1")
    assert instance_id(settings) == "svc-1"  # the default: the gateway_id option (host name)
    async with mqtt_collector(broker, f"{BASE}/charging/#") as mqtt:
        async with running_service(settings):
            await mqtt.wait(STATE, lambda m: m == online("svc-1"))
            mine = await mqtt.wait(instance("svc-1"), lambda m: m["state"] == "online")
            assert mine["instance_id"] == "svc-1" and mine["since"].endswith("Z")
        await mqtt.wait(
            instance("svc-1"), lambda m: m == {"state": "offline", "instance_id": "svc-1"}
        )
        await mqtt.wait(STATE, lambda m: m == OFFLINE)
    assert await retained(broker, STATE) == OFFLINE


@contextlib.asynccontextmanager
async def presence(broker: Mosquitto, tmp_path: Path, name: str) -> AsyncIterator[None]:
    unit = ServicePresence(settings_for(broker, tmp_path / name), name)
    task = asyncio.create_task(unit.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_instances_keep_one_aggregate_and_survivors_correct_it(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Two instances in one process: both listed; one stops (it says offline as its will
    would) and the other puts itself back at once; the last to stop leaves `offline`."""
    async with mqtt_collector(broker, STATE) as mqtt, presence(broker, tmp_path, "node-a"):
        await mqtt.wait(STATE, lambda m: m == online("node-a"))
        async with presence(broker, tmp_path, "node-b"):
            await mqtt.wait(STATE, lambda m: m == online("node-a", "node-b"))
            async with presence(broker, tmp_path, "node-c"):
                await mqtt.wait(STATE, lambda m: m == online("node-a", "node-b", "node-c"))
            await settles_on(broker, STATE, online("node-a", "node-b"))
        await settles_on(broker, STATE, online("node-a"))
    await settles_on(broker, STATE, OFFLINE)
    assert await retained(broker, instance("node-b")) == {
        "state": "offline",
        "instance_id": "node-b",
    }


def start_service(broker: Mosquitto, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    state_dir = tmp_path / name
    state_dir.mkdir()
    with (tmp_path / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "service", "--mqtt", broker.url],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "CHARGEBRIDGE_STATE_DIR": str(state_dir),
                "CHARGEBRIDGE_GATEWAY_ID": name,
                "CHARGEBRIDGE_BASE_TOPIC": BASE,
            },
        )


async def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    await asyncio.wait_for(asyncio.to_thread(proc.wait), TIMEOUT)


async def test_killed_service_processes_go_offline_by_their_wills(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """kill -9 of one of two service processes: its own will marks it offline and the
    survivor lists only itself; kill -9 of the last: the will says the service is offline."""
    procs = [start_service(broker, tmp_path, name) for name in ("svc-a", "svc-b")]
    try:
        async with mqtt_collector(broker, f"{BASE}/charging/#") as mqtt:
            await mqtt.wait(STATE, lambda m: m == online("svc-a", "svc-b"), timeout=40)
            await kill(procs[0])
            await mqtt.wait(instance("svc-a"), lambda m: m["state"] == "offline")
            await settles_on(broker, STATE, online("svc-b"))
            await kill(procs[1])
            await mqtt.wait(instance("svc-b"), lambda m: m["state"] == "offline")
            await mqtt.wait(STATE, lambda m: m == OFFLINE)
        assert await retained(broker, STATE) == OFFLINE
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
