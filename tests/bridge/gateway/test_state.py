"""Retained state: device, ports, each gateway's presence and stats, as a subscriber arriving
later sees them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import protocol as p
from bridge.app import GatewayApp
from bridge.links.tcp import TcpLink
from bridge.mqtt.payloads import GatewayStatsPayload
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import (
    FakeDevice,
    MqttCollector,
    gateway_settings,
    mqtt_collector,
    running_gateway,
    tcp_port,
)
from tests.broker import Mosquitto

DEV = f"{B}/devices/04AB373B"


async def test_late_subscriber_gets_retained_device_and_port_states(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    hb = p.Heartbeat(voltage=2300, port_statuses=(1, 0), signal=3, temperature=0)
    await device.send(0x21, p.encode_payload(hb))
    await device.recv()
    await mqtt.wait(f"{DEV}/ports/2")  # published
    async with mqtt_collector(broker, f"{DEV}/#") as late:
        state = await late.wait_message(DEV)
        port1 = await late.wait_message(f"{DEV}/ports/1")
        port2 = await late.wait_message(f"{DEV}/ports/2")
    assert state.retain and port1.retain and port2.retain
    body = state.json()
    assert set(body) == {
        "device_id",
        "device_number",
        "device_kind",
        "online",
        "iccid",
        "firmware",
        "port_count",
        "voltage_v",
        "signal",
        "temperature_c",
        "last_seen",
        "gateway_id",
        "connected_at",
        "device_type",
        "device_type_code",
        "host_type",
        "host_type_code",
    }
    assert (body["online"], body["voltage_v"], body["temperature_c"]) == (True, 230.0, None)
    assert (port1.json()["status"], port2.json()["status"]) == ("charging", "idle")


async def test_gateway_stats_retained_and_counting(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await device.send(0x22)
    await device.recv()
    await mqtt.wait(f"{B}/gateways/test-gw/stats", lambda m: m["frames_out"] >= 1)
    async with mqtt_collector(broker, f"{B}/gateways/test-gw/stats") as late:
        message = await late.wait_message(f"{B}/gateways/test-gw/stats")
    assert message.retain
    stats = GatewayStatsPayload.model_validate(message.json())
    assert stats.frames_in >= 1 and stats.bytes_in >= 14 and stats.bytes_out >= 18
    assert stats.connections == 1 and stats.devices_online == 1
    assert stats.updated_at.endswith("Z")


async def test_heartbeat_keeps_the_order_of_a_charging_port(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    order = bytes(range(16))
    report = p.PortPowerReport(
        port=0,
        status=1,
        duration=60,
        energy=1,
        start_mode=1,
        power=1000,
        max_power=1000,
        min_power=1000,
        average_power=1000,
        order_no=order,
    )
    await device.send(0x06, p.encode_payload(report))
    await mqtt.wait(f"{DEV}/ports/1", lambda m: m["order_no"] == order.hex().upper())
    for statuses in ((1, 0), (0, 0)):
        await device.send(0x21, p.encode_payload(p.Heartbeat(voltage=2200, port_statuses=statuses)))
        await device.recv()
    # still charging: nothing changed, nothing published; then idle: order cleared
    idle = await mqtt.wait(f"{DEV}/ports/1", lambda m: m["status"] == "idle")
    assert (idle["order_no"], idle["power_w"]) == (None, None)
    port1 = mqtt.all(f"{DEV}/ports/1")
    assert [m["status"] for m in port1] == ["charging", "idle"]


async def test_states_come_back_after_the_broker_lost_its_store(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await device.send(0x21, p.encode_payload(p.Heartbeat(voltage=2200, port_statuses=(1,))))
    await device.recv()
    await mqtt.wait(f"{DEV}/ports/1")
    broker.kill()
    broker.wipe_store()
    broker.start()
    async with mqtt_collector(broker, f"{B}/#") as late:
        await late.wait(f"{B}/gateways/test-gw/state", lambda m: m["state"] == "online", timeout=40)
        state = await late.wait_message(DEV)
        port = await late.wait_message(f"{DEV}/ports/1")
    assert state.json()["online"] is True and port.json()["status"] == "charging"


async def test_two_gateways_on_one_base_topic_keep_their_own_presence_and_stats(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Two gateway ids, one base topic: each has its own retained state and stats, counts
    only its own chargers, and one stopping leaves the other online."""
    a = gateway_settings(broker, tmp_path / "a", gateway_id="gw-a")
    b = gateway_settings(broker, tmp_path / "b", gateway_id="gw-b")
    state = {gw: f"{B}/gateways/{gw}/state" for gw in ("gw-a", "gw-b")}
    stats = {gw: f"{B}/gateways/{gw}/stats" for gw in ("gw-a", "gw-b")}
    async with mqtt_collector(broker, f"{B}/#") as mqtt, running_gateway(b) as gateway_b:
        async with running_gateway(a):
            for gw in ("gw-a", "gw-b"):
                online = await mqtt.wait(state[gw], lambda m: m["state"] == "online")
                assert online["gateway_id"] == gw and online["since"].endswith("Z")
            device = FakeDevice()
            await device.connect(tcp_port(gateway_b))
            await device.send(0x22)
            await device.recv()
            counted = await mqtt.wait(stats["gw-b"], lambda m: m["devices_online"] == 1)
            assert counted["gateway_id"] == "gw-b"
            idle = await mqtt.latest(stats["gw-a"], lambda m: True)
            assert (idle["gateway_id"], idle["devices_online"], idle["frames_in"]) == ("gw-a", 0, 0)
        await mqtt.wait(state["gw-a"], lambda m: m == {"state": "offline", "gateway_id": "gw-a"})
        async with mqtt_collector(broker, f"{B}/gateways/+/state") as late:
            first = await late.wait_message(state["gw-a"])
            second = await late.wait_message(state["gw-b"])
        assert first.retain and first.json()["state"] == "offline"
        assert second.retain and second.json()["state"] == "online"
        assert not any(m.topic.startswith(f"{B}/bridge/") for m in mqtt.messages)
        await device.close()


async def test_the_gateway_listens_before_it_says_it_is_online(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`online` means chargers can connect: the listeners open before the broker connection
    (a slow listener start, as on a loaded machine, let a client see `online` and be refused).
    Mutation: the listeners opened after `async with mqtt`."""
    started = asyncio.Event()
    start = TcpLink.start

    async def slow_start(link: TcpLink) -> None:
        await asyncio.sleep(1.0)  # time enough for the broker connection and its `online`
        await start(link)
        started.set()

    monkeypatch.setattr(TcpLink, "start", slow_start)
    async with mqtt_collector(broker, f"{B}/gateways/test-gw/state") as mqtt:
        app = GatewayApp(gateway_settings(broker, tmp_path))
        task = asyncio.create_task(app.serve())
        try:
            await mqtt.wait(f"{B}/gateways/test-gw/state", lambda m: m["state"] == "online")
            assert started.is_set()
            _, writer = await asyncio.open_connection("127.0.0.1", tcp_port(app))
            writer.close()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
