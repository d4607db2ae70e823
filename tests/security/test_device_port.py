"""The attacks of issue 15 on the device port and the request topics, against a real
Mosquitto (shipped ACL), real TCP sockets and the real gateway (docs/reliability.md reports
each with its result).

- an impostor claiming a pinned physical id: refused, the real charger keeps its connection;
- a slow peer trickling bytes: closed within the first-frame / idle deadlines;
- a retained request (published live, replayed after a reconnection, or cleared with an
  empty payload): never executed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import protocol as p
from bridge.app import GatewayApp
from tests.bridge.helpers import (
    ICCID,
    PID,
    FakeDevice,
    MqttCollector,
    gateway_settings,
    mqtt_collector,
    running_gateway,
    tcp_port,
)
from tests.broker import Mosquitto

B = "chargebridge"
DEV = f"{B}/devices/04AB373B"
OTHER_ICCID = "89860499999999999999"
ORDER = bytes.fromhex("AB" * 16)


def settlement() -> bytes:
    return p.Settlement(
        duration=3600,
        max_power=2342,
        energy=1,
        port=0,
        start_mode=1,
        card_id=b"\0\0\0\0",
        stop_reason=7,
        order_no=ORDER,
    ).encode()


async def online(app: GatewayApp, iccid: str | None = ICCID) -> FakeDevice:
    dev = FakeDevice()
    await dev.connect(tcp_port(app), iccid=iccid)
    mid = await dev.send(0x22)
    assert (await dev.recv()).message_id == mid
    return dev


async def test_an_impostor_cannot_take_a_pinned_physical_id(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        mqtt_collector(broker, f"{B}/#") as mqtt,
        running_gateway(gateway_settings(broker, tmp_path)) as app,
    ):
        await mqtt.wait(f"{B}/gateways/test-gw/state", lambda m: m["state"] == "online")
        real = await online(app)
        impostors = []
        for iccid in (OTHER_ICCID, None):  # another SIM, and none at all
            impostor = FakeDevice()
            await impostor.connect(tcp_port(app), iccid=iccid)
            await impostor.send(0x03, settlement())
            await impostor.send(0x22)
            impostors.append(impostor)
        event = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "security")
        assert (event["reason"], event["iccid"]) == ("pin_mismatch", OTHER_ICCID)
        stats = await mqtt.wait(
            f"{B}/gateways/test-gw/stats", lambda m: m.get("frames_pin_mismatch", 0) >= 4
        )
        assert stats["pins"] == 1
        # The real charger still holds the id: a command reaches it, not the impostors.
        await mqtt.client.publish(f"{DEV}/request/query_status", b"{}", qos=1)
        assert (await real.recv()).command == 0x81
        assert (await mqtt.wait(f"{DEV}/response/query_status"))["ok"] is True
        for impostor in impostors:
            await impostor.expect_silence(0.5)  # not even the settlement was acknowledged
        events = [m["type"] for m in mqtt.all(f"{DEV}/event/order")]
        assert "settled" not in events
        device_events = [m["type"] for m in mqtt.all(f"{DEV}/event/device")]
        assert device_events.count("online") == 1 and "offline" not in device_events
        for dev in (real, *impostors):
            await dev.close()


async def test_a_slow_peer_is_closed_by_the_deadlines(broker: Mosquitto, tmp_path: Path) -> None:
    """One byte every 0.2 s: garbage from the start (no frame ever), or half a frame after a
    valid one. Neither resets a timer; both connections are closed."""
    settings = gateway_settings(broker, tmp_path, first_frame_timeout_s=1.0, idle_timeout=2.0)
    async with running_gateway(settings) as app:
        never = FakeDevice()
        await never.connect(tcp_port(app))
        framed = await online(app, iccid=None)
        half = p.encode_frame(PID, 7, 0x22)[:-1]

        async def trickle(dev: FakeDevice, data: bytes) -> None:
            for i in range(10_000):
                await dev.send_raw(data[i % len(data) : i % len(data) + 1])
                await asyncio.sleep(0.2)

        tasks = [
            asyncio.create_task(trickle(never, b"xyz")),
            asyncio.create_task(trickle(framed, half)),
        ]
        try:
            await never.closed_by_peer(timeout=20)
            await framed.closed_by_peer(timeout=20)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        gateway = app.gateway
        assert gateway is not None and gateway.stats.connections_closed_no_frame == 1
        await never.close()
        await framed.close()


async def first_command(dev: FakeDevice, mqtt: MqttCollector) -> int:
    """Publish a live query_status; the first command the charger then receives."""
    await mqtt.client.publish(f"{DEV}/request/query_status", b"{}", qos=1)
    return (await dev.recv()).command


async def test_retained_and_empty_requests_are_never_executed(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        mqtt_collector(broker, f"{B}/#") as mqtt,
        running_gateway(gateway_settings(broker, tmp_path)) as app,
    ):
        await mqtt.wait(f"{B}/gateways/test-gw/state", lambda m: m["state"] == "online")
        dev = await online(app)
        await mqtt.client.publish(f"{DEV}/request/reboot", b"{}", qos=1, retain=True)
        await mqtt.wait(f"{B}/gateways/test-gw/stats", lambda m: m.get("requests_ignored") == 1)
        await mqtt.client.publish(f"{DEV}/request/reboot", b"", qos=1, retain=True)  # clear it
        await mqtt.wait(f"{B}/gateways/test-gw/stats", lambda m: m.get("requests_ignored") == 2)
        assert await first_command(dev, mqtt) == 0x81  # not 0x87
        assert [m.topic for m in mqtt.messages if m.topic.endswith("/response/reboot")] == []
        await dev.close()


async def test_a_retained_request_replayed_on_reconnection_is_not_executed(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Publish a retained reboot, start the gateway while the broker is away, let the charger
    connect, then bring the broker back: the replayed request must not reboot it."""
    async with mqtt_collector(broker) as publisher:
        await publisher.client.publish(f"{DEV}/request/reboot", b"{}", qos=1, retain=True)
    broker.stop()
    async with running_gateway(gateway_settings(broker, tmp_path)) as app:
        dev = await online(app)
        broker.start()
        async with mqtt_collector(broker, f"{B}/#") as mqtt:
            await mqtt.wait(f"{B}/gateways/test-gw/stats", lambda m: m.get("requests_ignored") == 1)
            assert await first_command(dev, mqtt) == 0x81  # not 0x87
        await dev.close()
