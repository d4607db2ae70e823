"""Simulated legacy piles (0x01 heartbeats with per-port power, 0x04, no 0x06) through the
real gateway, Mosquitto and charging service.

Without the legacy handling such a session shows 0 W and goes `timeout` after
`session_timeout_s` while still charging; here it stays `charging` on its heartbeats, shows
their live power, estimates its energy from it and completes with the settled figure.
The simulator runs `SPEED` times faster than the wall clock the gateway stamps events
with, so the estimate (power x wall-clock time) is the settled energy / SPEED.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from bridge.commands.run import RunSettings, run_both
from bridge.config import load_settings
from bridge.mqtt.payloads import ChargingSessionPayload
from bridge.mqtt.topics import Topics
from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from protocol.ids import device_id
from tests.bridge.helpers import mqtt_collector
from tests.broker import Mosquitto, free_port

SPEED = 120  # the 180 s heartbeat every 1.5 s
SESSION_S = 1200  # device seconds: 10 s here, twice the 5 s session timeout
WINDOW_S = 2.0  # power_update_window_s


async def test_a_legacy_session_stays_alive_shows_power_and_estimates_its_energy(
    broker: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    settings = load_settings(
        RunSettings,
        {
            "mqtt": broker.url,
            "tcp": [f"127.0.0.1:{port}"],
            "state_dir": str(tmp_path),
            "gateway_id": "legacy",
            "log_level": "warning",
            "session_timeout_s": 5.0,
            "cleanup_interval_s": 0.1,
            "energy_calculation_window_s": 0.2,
            "power_update_window_s": WINDOW_S,
        },
    )
    topics = Topics()
    gateway_ready, service_ready = asyncio.Event(), asyncio.Event()
    roles = asyncio.create_task(
        run_both(settings, gateway_ready=gateway_ready, service_ready=service_ready)
    )
    config = FleetConfig(devices=1, kind="legacy", speed=SPEED, seed=3)
    try:
        async with asyncio.timeout(15):
            await service_ready.wait()
            await gateway_ready.wait()
        async with (
            mqtt_collector(broker, topics.all_sessions, topics.charging_response("start")) as mqtt,
            Fleet(config, TcpTarget("127.0.0.1", port)) as fleet,
        ):
            async with asyncio.timeout(15):
                await fleet.wait_until(lambda s: s.registered == 1 and s.heartbeats_acked >= 1)
            dev_id = device_id(fleet.devices[0].physical_id)
            fleet.plug(0, 0)
            began = time.monotonic()
            start = {"request_id": "r", "device_id": dev_id, "port": 1}
            start |= {"mode": "time", "duration_s": SESSION_S}
            await publish(broker, topics.charging_request("start"), start)
            answer = await mqtt.wait(topics.charging_response("start"), timeout=15)
            assert answer["ok"], answer
            order_no = answer["session"]["order_no"]
            topic = topics.session(order_no)
            final = await mqtt.wait(topic, lambda s: s["status"] == "completed", timeout=60)
            span = time.monotonic() - began
            async with asyncio.timeout(15):
                await fleet.wait_until(lambda s: s.settlements_acked == 1)
            reported_kwh = fleet.snapshot()["energy_reported_kwh"]
    finally:
        roles.cancel()
        await asyncio.gather(roles, return_exceptions=True)

    states = mqtt.all(topic)
    for state in states:
        ChargingSessionPayload.model_validate(state)
    statuses = [s["status"] for s in states]
    assert "timeout" not in statuses and statuses[-1] == "completed"
    charging = [s for s in states if s["status"] == "charging"]
    assert any(s["power_w"] > 0 for s in charging)  # the 0x01 per-port power is live
    types = [e["type"] for e in final["events"]]
    assert "confirmed" in types and types[-1] == "settled"
    beats = [e for e in final["events"] if e["type"] == "heartbeat"]
    assert len(beats) >= 3 and all(e["power_w"] > 0 for e in beats)
    # Billing stays the device's figure; the estimate is beside it.
    assert final["energy_kwh"] == reported_kwh > 0
    ratio = final["energy_kwh_estimated"] * SPEED / final["energy_kwh"]
    assert 0.5 < ratio < 1.5, (final["energy_kwh_estimated"], final["energy_kwh"])
    # Power-only updates (all but the first `charging` state) at most once per window.
    assert len(charging) - 1 <= span / WINDOW_S + 1, (len(charging), span)


async def publish(broker: Mosquitto, topic: str, body: dict[str, object]) -> None:
    async with broker.client() as client:
        await client.publish(topic, json.dumps(body), qos=1)
