"""Simulated chargers through the real gateway, Mosquitto and charging service: every session
the chargers settle completes, and the energy the service delivers is what they reported.

The fleet is stopped while sessions still run, so a settlement can be on the broker (and so
completed by the service) while its acknowledgement is still on its way to the charger. The
ledger is therefore the `settled` events the broker carried; every settlement a charger had
acknowledged must be among them (nothing acknowledged is lost)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.commands.run import RunSettings, run_both
from bridge.config import load_settings
from bridge.demo.driver import DemoDriver
from bridge.mqtt.client import MqttClient
from bridge.mqtt.topics import Topics
from bridge.simulator.device import UserBehaviour
from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from tests.bridge.helpers import MqttCollector, lasting_collector
from tests.broker import Mosquitto, free_port

SESSIONS = 8


async def test_settled_energy_matches_what_the_chargers_reported(
    broker: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    settings = load_settings(
        RunSettings,
        {
            "mqtt": broker.url,
            "tcp": [f"127.0.0.1:{port}"],
            "state_dir": str(tmp_path),
            "gateway_id": "energy",
            "stats_interval": 0.2,
            "log_level": "warning",
        },
    )
    topics = Topics()
    gateway_ready, service_ready = asyncio.Event(), asyncio.Event()
    roles = asyncio.create_task(
        run_both(settings, gateway_ready=gateway_ready, service_ready=service_ready)
    )
    config = FleetConfig(
        devices=3,
        kind="2",
        speed=2000,
        seed=5,
        auto_plug=True,
        users=UserBehaviour(plug_mean_s=300.0, patience_s=3600.0, card_share=0.0),
    )
    try:
        async with asyncio.timeout(15):
            await service_ready.wait()
            await gateway_ready.wait()
        driver_mqtt = MqttClient(settings.mqtt_settings(client_id=""))
        driver = DemoDriver(driver_mqtt, topics)
        driver_mqtt.subscriptions = driver.subscriptions
        async with (
            lasting_collector(
                broker, topics.charging_stats, topics.all_order_events, client_id="energy-watch"
            ) as watch,
            driver_mqtt,
            Fleet(config, TcpTarget("127.0.0.1", port)) as fleet,
        ):
            driving = asyncio.create_task(driver.run())
            async with asyncio.timeout(60):
                await fleet.wait_until(lambda s: s.settlements_acked >= SESSIONS)
            await fleet.stop()  # no new sessions; what is settled is final
            driving.cancel()
            reported = fleet.snapshot()
            stats = await watch.latest(
                topics.charging_stats,
                lambda s: s["sessions_completed"] >= reported["settlements_acked"],
                timeout=20,
            )
            # Settled events and statistics arrive at the watcher independently: wait until
            # they agree (re-checked at every message).
            stats = await watch.latest(
                topics.charging_stats,
                lambda s: s["sessions_completed"] == len(_settled_energy(watch)),
                timeout=20,
            )
            settled = _settled_energy(watch)
    finally:
        roles.cancel()
        await asyncio.gather(roles, return_exceptions=True)
    # Every acknowledged settlement reached the broker; the service completed each settled order
    # once, with the energy the charger reported.
    assert reported["settlements_acked"] <= len(settled)
    assert len(settled) - reported["settlements_acked"] <= config.devices * 2  # in flight
    assert stats["sessions_completed"] == len(settled)
    assert abs(stats["total_energy_delivered_kwh"] - sum(settled.values())) < 1e-6
    if len(settled) == reported["settlements_acked"]:
        assert abs(sum(settled.values()) - reported["energy_reported_kwh"]) < 1e-6
    assert stats["processing_errors"] == 0


def _settled_energy(watch: MqttCollector) -> dict[str, float]:
    """Energy per settled order as the broker carried it (a resend appears once)."""
    return {
        m.json()["order_no"]: m.json()["energy_kwh"]
        for m in watch.messages
        if m.topic.endswith("/event/order") and m.payload and m.json()["type"] == "settled"
    }
