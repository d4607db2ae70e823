"""Configurable limits, each counted in the gateway stats: connections per IP, devices, and device
commands per minute."""

from __future__ import annotations

import pytest

from bridge.app import GatewayApp
from tests.bridge.gateway.conftest import B
from tests.bridge.gateway.test_commands import DEV, online, request
from tests.bridge.helpers import PID, FakeDevice, MqttCollector, tcp_port

STATS = f"{B}/gateways/test-gw/stats"


@pytest.mark.gateway(max_connections_per_ip=2)
async def test_connections_beyond_the_per_ip_limit_are_refused_and_counted(
    gateway: GatewayApp, mqtt: MqttCollector
) -> None:
    devices = [FakeDevice(PID + i) for i in range(4)]
    for d in devices:
        await d.connect(tcp_port(gateway))
    await devices[2].closed_by_peer()
    await devices[3].closed_by_peer()
    stats = await mqtt.wait(STATS, lambda m: m["connections_refused_per_ip"] == 2)
    assert stats["connections"] == 2
    await online(devices[0])  # the accepted ones are served
    for d in devices:
        await d.close()


@pytest.mark.gateway(max_devices=2)
async def test_frames_of_a_new_device_beyond_max_devices_are_ignored_and_counted(
    gateway: GatewayApp, mqtt: MqttCollector
) -> None:
    first, second, third = (FakeDevice(PID + i) for i in range(3))
    for d in (first, second, third):
        await d.connect(tcp_port(gateway))
    await online(first)
    await online(second)
    await third.send(0x22)
    await third.send(0x22)
    await third.expect_silence(0.5)
    stats = await mqtt.wait(STATS, lambda m: m["device_limit_frames"] == 2)
    assert stats["devices_online"] == 2
    third_id = f"{PID + 2:08X}"
    assert not mqtt.all(f"{B}/devices/{third_id}")
    await first.close()  # offline: its place may be taken
    await mqtt.wait(f"{B}/devices/{PID:08X}", lambda m: not m["online"])
    await online(third)
    await mqtt.wait(f"{B}/devices/{third_id}", lambda m: m["online"])
    await second.close()
    await third.close()


@pytest.mark.gateway(max_commands_per_minute=2, command_spacing_s=0)
async def test_commands_beyond_the_per_device_rate_are_answered_rate_limited(
    gateway: GatewayApp, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await online(device)
    for i in range(3):
        await request(mqtt, "query_status", {"request_id": f"q{i}"})
        frame = await device.recv() if i < 2 else None
        assert frame is None or frame.command == 0x81
        response = await mqtt.wait(f"{DEV}/response/query_status")
        assert response["request_id"] == f"q{i}"
        assert (response["ok"], response["result"]) == (
            (True, "ok") if i < 2 else (False, "rate_limited")
        )
    other = FakeDevice(PID + 1)  # the limit is per device
    await other.connect(tcp_port(gateway))
    await online(other)
    await request(mqtt, "query_status", {"request_id": "o"}, device=f"{B}/devices/{PID + 1:08X}")
    response = await mqtt.wait(f"{B}/devices/{PID + 1:08X}/response/query_status")
    assert response["ok"]
    # the stats may be published between the refusal and the third send: wait for both
    stats = await mqtt.wait(
        STATS, lambda m: m["commands_rate_limited"] == 1 and m["commands_sent"] >= 3
    )
    assert stats["commands_sent"] == 3
    await other.close()
