"""Power control end to end: simulated chargers (which honour 0x85 at once) against the real
gateway and Mosquitto: `adjust_power` and the site power cap (`site_power_limit_w`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bridge.mqtt.payloads import iso_utc
from bridge.mqtt.topics import Topics
from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from protocol.ids import device_id
from tests.bridge.helpers import (
    MqttCollector,
    gateway_settings,
    mqtt_collector,
    running_gateway,
    tcp_port,
)
from tests.broker import Mosquitto

T = Topics("chargebridge")
CAP_W = 300.0


async def request(broker: Mosquitto, dev_id: str, command: str, body: dict[str, Any]) -> None:
    async with broker.client() as client:
        await client.publish(T.device_request(dev_id, command), json.dumps(body), qos=1)


async def start(broker: Mosquitto, mqtt: MqttCollector, dev_id: str, port: int) -> str:
    await request(broker, dev_id, "start_charging", {"port": port, "mode": "full"})
    resp = await mqtt.wait(T.device_response(dev_id, "start_charging"))
    assert resp["ok"], resp
    order_no: str = resp["order_no"]
    return order_no


async def test_adjust_power_lowers_a_running_order(broker: Mosquitto, tmp_path: Path) -> None:
    settings = gateway_settings(broker, tmp_path, command_spacing_s=0.0)
    async with (
        mqtt_collector(broker, f"{T.base}/devices/#") as mqtt,
        running_gateway(settings) as app,
    ):
        target = TcpTarget("127.0.0.1", tcp_port(app))
        async with Fleet(FleetConfig(devices=1, speed=3000), target) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.registered == 1)
            dev_id = device_id(fleet.devices[0].physical_id)
            fleet.plug(0, 0)
            order = await start(broker, mqtt, dev_id, 1)
            await mqtt.wait(T.event(dev_id, "port"), lambda e: e["type"] == "power")
            wrong = {"port": 1, "order_no": "00" * 16, "max_power_w": 80}
            await request(broker, dev_id, "adjust_power", wrong)
            refused = await mqtt.wait(T.device_response(dev_id, "adjust_power"))
            assert (refused["ok"], refused["result"]) == (False, "invalid"), refused
            body = {"port": 1, "order_no": order, "max_power_w": 80, "request_id": "p"}
            await request(broker, dev_id, "adjust_power", body)
            resp = await mqtt.wait(T.device_response(dev_id, "adjust_power"))
            assert resp["ok"], resp
            assert (resp["max_power_w"], resp["max_charge_time_s"]) == (80, 36000)
            assert fleet.devices[0].params[0x85].overload_power == 800
            mark = iso_utc()
            # The second power report from now on was made under the new limit.
            for _ in range(2):
                event = await mqtt.wait(
                    T.event(dev_id, "port"), lambda e: e["type"] == "power" and e["ts"] > mark
                )
            assert event["order_no"] == order and 0 < event["power_w"] <= 80.0


async def test_site_cap_lowers_both_chargers_and_restores_them(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = gateway_settings(broker, tmp_path, command_spacing_s=0.0, site_power_limit_w=CAP_W)
    async with (
        mqtt_collector(broker, f"{T.base}/devices/#") as mqtt,
        running_gateway(settings) as app,
    ):
        target = TcpTarget("127.0.0.1", tcp_port(app))
        async with Fleet(FleetConfig(devices=2, speed=3000), target) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.registered == 2)
            ids = [device_id(d.physical_id) for d in fleet.devices]
            orders = []
            for i, dev_id in enumerate(ids):
                fleet.plug(i, 0)
                orders.append(await start(broker, mqtt, dev_id, 1))
            for dev_id in ids:
                limited = await mqtt.wait(
                    T.event(dev_id, "device"),
                    lambda e: e["type"] == "power_limited" and e["limit_w"] == CAP_W / 2,
                )
                assert limited["site_power_w"] > CAP_W
            share = int(CAP_W / 2 * 10)  # 0.1 W
            async with asyncio.timeout(10):
                await fleet.wait_until(
                    lambda _: all(d.params[0x85].overload_power == share for d in fleet.devices)
                )
            mark = iso_utc()
            # The second power report after the limits took effect: each port within its share.
            latest: dict[str, float] = {}
            for dev_id in ids:
                for _ in range(2):
                    event = await mqtt.wait(
                        T.event(dev_id, "port"), lambda e: e["type"] == "power" and e["ts"] > mark
                    )
                latest[dev_id] = event["power_w"]
            assert all(0 < w <= CAP_W / 2 for w in latest.values()), latest
            assert sum(latest.values()) <= CAP_W
            # One session ends: the site is below 90 % of the cap, the limits go back up.
            await request(broker, ids[0], "stop_charging", {"port": 1, "order_no": orders[0]})
            assert (await mqtt.wait(T.device_response(ids[0], "stop_charging")))["ok"]
            restored = await mqtt.wait(
                T.event(ids[1], "device"), lambda e: e["type"] == "power_restored"
            )
            assert restored["limit_w"] == 2000.0
            above = await mqtt.wait(
                T.event(ids[1], "port"), lambda e: e["type"] == "power" and e["power_w"] > 150
            )
            assert above["order_no"] == orders[1]
