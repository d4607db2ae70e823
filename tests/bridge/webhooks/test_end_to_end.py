"""Real Mosquitto, gateway and charging service (`run` with `--webhook`), a charger on a TCP
socket charging and settling one order, and a real HTTP endpoint: exactly one
`session_completed` POST, even when the charger resends its settlement."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import protocol as p
from bridge.commands.run import RunSettings, run_both
from bridge.config import load_settings
from tests.bridge.ecosystem.support import ORDER, register, report_power
from tests.bridge.helpers import FakeDevice, mqtt_collector
from tests.bridge.webhooks.endpoint import endpoint
from tests.broker import Mosquitto, free_port

DEVICE_ID = "04AB373B"


def settlement() -> bytes:
    return p.encode_payload(
        p.Settlement(
            duration=3600,
            max_power=2342,
            energy=135,
            port=0,
            start_mode=1,
            card_id=b"\0\0\0\0",
            stop_reason=7,
            order_no=ORDER,
            second_max_power=2000,
            timestamp=1604914697,
            occupied_time=3,
        )
    )


async def test_a_settled_session_is_posted_exactly_once(broker: Mosquitto, tmp_path: Path) -> None:
    tcp = free_port()
    kinds = {"session_completed", "device_offline"}
    async with endpoint(["fail"]) as ep:
        settings = load_settings(
            RunSettings,
            {
                "mqtt": broker.url,
                "tcp": [f"127.0.0.1:{tcp}"],
                "state_dir": str(tmp_path),
                "gateway_id": "hooks",
                "stats_interval": 0.1,
                "webhook": [ep.url],
                "webhook_events": sorted(kinds),
                "webhook_secret": "k",
                "webhook_backoff_s": 0.05,
            },
        )
        gateway_ready, service_ready = asyncio.Event(), asyncio.Event()
        roles = asyncio.create_task(
            run_both(settings, gateway_ready=gateway_ready, service_ready=service_ready)
        )
        device = FakeDevice()
        try:
            async with (
                asyncio.timeout(60),
                mqtt_collector(broker, "chargebridge/sessions/+") as sessions,
            ):
                await service_ready.wait()
                await gateway_ready.wait()
                await device.connect(tcp)
                await register(device)
                await report_power(device)
                topic = f"chargebridge/sessions/{ORDER.hex().upper()}"
                await sessions.wait(topic, lambda s: s["status"] == "charging")
                for _ in range(2):  # the charger resends a settlement (new message id)
                    await device.send(0x03, settlement())
                    assert (await device.recv()).command == 0x03
                await sessions.wait(topic, lambda s: s["status"] == "completed")
                await device.close()  # a fence: its offline event comes after all that
                await ep.wait(
                    lambda rs: {json.loads(r.body)["event"] for r in ep.delivered} == kinds
                )
        finally:
            roles.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await roles
    completed = [r for r in ep.requests if json.loads(r.body)["event"] == "session_completed"]
    assert [r.answer for r in completed] == ["fail", "ok"]  # one event, retried once
    body = json.loads(completed[0].body)
    assert body["id"] == f"{ORDER.hex().upper()}:session_completed"
    assert body["session"]["device_id"] == DEVICE_ID and body["session"]["port"] == 1
    assert body["session"]["energy_kwh"] == 1.35
    assert completed[0].headers["idempotency-key"] == body["id"]
