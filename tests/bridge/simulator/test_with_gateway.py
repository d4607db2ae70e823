"""Simulated chargers against the real gateway and the real Mosquitto broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bridge.mqtt.topics import Topics
from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from protocol.ids import device_id
from tests.bridge.helpers import gateway_settings, mqtt_collector, running_gateway, tcp_port
from tests.broker import Mosquitto

T = Topics("chargebridge")


async def request(broker: Mosquitto, topic: str, body: dict[str, object]) -> None:
    async with broker.client() as client:
        await client.publish(topic, json.dumps(body), qos=1)


async def test_fleet_registers_with_the_gateway_and_devices_show_online(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = gateway_settings(broker, tmp_path)
    async with (
        mqtt_collector(broker, f"{T.base}/devices/+") as mqtt,
        running_gateway(settings) as app,
    ):
        target = TcpTarget("127.0.0.1", tcp_port(app))
        async with Fleet(FleetConfig(devices=30, kind="mixed"), target) as fleet:
            async with asyncio.timeout(20):
                await fleet.wait_until(lambda s: s.registered == 30 and s.heartbeats_acked >= 30)
            for dev in fleet.devices:
                state = await mqtt.wait(
                    T.device(device_id(dev.physical_id)),
                    lambda d: d["online"] and d["port_count"] is not None,
                )
                assert state["iccid"] == dev.iccid and state["port_count"] == dev.port_count
                assert state["device_kind"] in ("dual_socket", "ten_port", "sixteen_port")


async def test_sessions_started_and_stopped_over_mqtt_end_in_settlements(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = gateway_settings(broker, tmp_path)
    async with (
        mqtt_collector(broker, T.all_order_events, T.all_device_responses) as mqtt,
        running_gateway(settings) as app,
    ):
        target = TcpTarget("127.0.0.1", tcp_port(app))
        async with Fleet(FleetConfig(devices=1, speed=3000), target) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.registered == 1)
            dev_id = device_id(fleet.devices[0].physical_id)
            fleet.plug(0, 0)
            fleet.plug(0, 1)
            # Port 1: time mode, 30 minutes of device time (0.6 s here).
            await request(
                broker,
                T.device_request(dev_id, "start_charging"),
                {"port": 1, "mode": "time", "duration_s": 1800, "request_id": "a"},
            )
            started = await mqtt.wait(T.device_response(dev_id, "start_charging"))
            assert started["ok"] and started["port"] == 1
            settled = await mqtt.wait(T.event(dev_id, "order"), lambda e: e["type"] == "settled")
            assert settled["stop_reason"] == "preset_time_reached"
            assert settled["order_no"] == started["order_no"] and settled["duration_s"] == 1800
            assert 0.05 < settled["energy_kwh"] < 0.25
            # Port 2: until full, stopped by the server once it is charging.
            await request(
                broker,
                T.device_request(dev_id, "start_charging"),
                {"port": 2, "mode": "full", "request_id": "b"},
            )
            second = await mqtt.wait(T.device_response(dev_id, "start_charging"))
            assert second["ok"] and second["port"] == 2
            await request(
                broker,
                T.device_request(dev_id, "stop_charging"),
                {"port": 2, "order_no": second["order_no"], "request_id": "c"},
            )
            stopped = await mqtt.wait(T.device_response(dev_id, "stop_charging"))
            assert stopped["ok"], stopped
            settled = await mqtt.wait(T.event(dev_id, "order"), lambda e: e["type"] == "settled")
            assert settled["stop_reason"] == "stopped_by_server"
            assert settled["order_no"] == second["order_no"] and settled["port"] == 2
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.settlements_acked == 2)


async def test_legacy_chargers_confirm_orders_and_settle_through_the_gateway(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = gateway_settings(broker, tmp_path)
    async with (
        mqtt_collector(broker, T.all_order_events, T.all_device_responses) as mqtt,
        running_gateway(settings) as app,
    ):
        target = TcpTarget("127.0.0.1", tcp_port(app))
        config = FleetConfig(devices=1, kind="legacy", speed=3000)
        async with Fleet(config, target) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.registered == 1 and s.heartbeats_acked >= 1)
            dev_id = device_id(fleet.devices[0].physical_id)
            fleet.plug(0, 0)
            await request(
                broker,
                T.device_request(dev_id, "start_charging"),
                {"port": 1, "mode": "time", "duration_s": 1800, "request_id": "a"},
            )
            started = await mqtt.wait(T.device_response(dev_id, "start_charging"))
            assert started["ok"], started
            confirmed = await mqtt.wait(
                T.event(dev_id, "order"), lambda e: e["type"] == "confirmed"
            )
            assert confirmed["order_no"] == started["order_no"] and confirmed["port"] == 1
            settled = await mqtt.wait(T.event(dev_id, "order"), lambda e: e["type"] == "settled")
            assert settled["order_no"] == started["order_no"] and settled["duration_s"] == 1800
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.settlements_acked == 1)
            # The gateway answered the 0x04, so the device stopped repeating it.
            assert fleet.devices[0].ports[0].confirm_id is None
