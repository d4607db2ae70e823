"""A two-port charger that registers, reports its ports and charges on port 1; waiting for
MQTT messages by topic prefix."""

from __future__ import annotations

import asyncio

import protocol as p
from tests.bridge.helpers import TIMEOUT, FakeDevice, MqttCollector, Received

ORDER = bytes.fromhex("0102030405060708090A0B0C0D0E0F10")


async def register(device: FakeDevice) -> None:
    registration = p.Registration(
        firmware=126,
        port_count=2,
        virtual_id=0,
        device_type=0x21,
        work_mode=0,
        power_board_version=0,
    )
    await device.send(0x20, p.encode_payload(registration))
    await device.recv()
    heartbeat = p.Heartbeat(voltage=2300, port_statuses=(1, 0), signal=21, temperature=90)
    await device.send(0x21, p.encode_payload(heartbeat))
    await device.recv()


async def report_power(device: FakeDevice, energy: int = 12) -> None:
    report = p.PortPowerReport(
        port=0,
        status=1,
        duration=600,
        energy=energy,
        start_mode=1,
        power=2342,
        max_power=2400,
        min_power=2300,
        average_power=2350,
        order_no=ORDER,
        period_energy=5,
        peak_power=2500,
        voltage=2201,
        current=1065,
        ambient_temperature=90,
        port_temperature=95,
    )
    await device.send(0x06, p.encode_payload(report))


async def wait_prefix(
    collector: MqttCollector, prefix: str, *, empty: bool = False, after: int = 0
) -> Received:
    """The next unconsumed message (index >= `after`) whose topic starts with `prefix` and
    whose payload is empty (`empty`) or not."""

    def find() -> Received | None:
        for i, m in enumerate(collector.messages):
            if i < after or i in collector._consumed or not m.topic.startswith(prefix):
                continue
            if bool(m.payload) == empty:
                continue
            collector._consumed.add(i)
            return m
        return None

    async with asyncio.timeout(TIMEOUT), collector._new:
        while (found := find()) is None:
            await collector._new.wait()
        return found
