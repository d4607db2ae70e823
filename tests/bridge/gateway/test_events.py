"""Every event type with its exact payload; resends; the settlement acknowledged after PUBACK."""

from __future__ import annotations

from typing import Any

import protocol as p
from bridge.app import GatewayApp
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import FakeDevice, MqttCollector, mqtt_collector
from tests.broker import Mosquitto

DEV = f"{B}/devices/04AB373B"
ORDER = bytes.fromhex("12345678123456781234567812345678")


def common(event: dict[str, Any], command: int | None, mid: int | None) -> dict[str, Any]:
    return {
        "ts": event["ts"],
        "device_id": "04AB373B",
        "gateway_id": "test-gw",
        "command": command,
        "message_id": mid,
    }


def settlement(order_no: bytes = ORDER, port: int = 1) -> bytes:
    return p.encode_payload(
        p.Settlement(
            duration=3600,
            max_power=2342,
            energy=135,
            port=port,
            start_mode=1,
            card_id=b"\0\0\0\0",
            stop_reason=7,
            order_no=order_no,
            second_max_power=2000,
            timestamp=1604914697,
            occupied_time=3,
        )
    )


async def fence(device: FakeDevice, mqtt: MqttCollector) -> None:
    """Events are published in order: once this time_sync arrives, everything before it has."""
    mid = await device.send(0x22)
    await device.recv()
    await mqtt.wait(f"{DEV}/event/device", lambda m: m["message_id"] == mid)


async def test_settled_event_exact_payload(device: FakeDevice, mqtt: MqttCollector) -> None:
    mid = await device.send(0x03, settlement())
    reply = await device.recv()
    assert (reply.command, reply.message_id, reply.data) == (0x03, mid, b"\x00")
    event = await mqtt.wait(f"{DEV}/event/order", lambda m: m["type"] == "settled")
    assert event == {
        "type": "settled",
        **common(event, 0x03, mid),
        "port": 2,
        "order_no": ORDER.hex().upper(),
        "duration_s": 3600,
        "max_power_w": 234.2,
        "energy_kwh": 1.35,
        "start_mode": "online",
        "start_mode_code": 1,
        "card_id": "00000000",
        "stop_reason": "stopped_by_server",
        "stop_reason_code": 7,
        "second_max_power_w": 200.0,
        "device_time": "2020-11-09T09:38:17.000Z",
        "occupied_minutes": 3,
    }


async def test_resent_frame_is_answered_twice_published_once(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    data = p.encode_payload(p.Heartbeat(voltage=2200, port_statuses=(0, 0), signal=0))
    await device.send(0x21, data, message_id=77)
    await device.send(0x21, data, message_id=77)
    first, second = await device.recv(), await device.recv()
    assert first == second and first.message_id == 77
    await fence(device, mqtt)
    beats = [m for m in mqtt.all(f"{DEV}/event/device") if m["type"] == "heartbeat"]
    assert len(beats) == 1


async def test_settlement_resent_with_new_message_id_publishes_once(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    mid1 = await device.send(0x03, settlement())
    assert (await device.recv()).message_id == mid1
    mid2 = await device.send(0x03, settlement())  # e.g. 30 min later after a lost reply
    assert (await device.recv()).message_id == mid2
    await fence(device, mqtt)
    assert len([m for m in mqtt.all(f"{DEV}/event/order") if m["type"] == "settled"]) == 1


async def test_settlement_answered_only_after_broker_ack(
    broker: Mosquitto, gateway: GatewayApp, device: FakeDevice
) -> None:
    # A persistent subscriber: the broker keeps the event for it across the outage.
    async with mqtt_collector(broker, f"{B}/devices/+/event/order", persistent_id="watch"):
        pass
    await device.send(0x22)  # device online first, so only the settlement waits
    await device.recv()
    broker.stop()
    mid = await device.send(0x03, settlement())
    await device.expect_silence(3.0)  # strict: no acknowledgement without the broker's
    broker.start()
    reply = await device.recv(timeout=40)
    assert (reply.command, reply.message_id, reply.data) == (0x03, mid, b"\x00")
    async with mqtt_collector(
        broker, f"{B}/devices/+/event/order", persistent_id="watch"
    ) as watcher:
        event = await watcher.wait(f"{DEV}/event/order", lambda m: m["type"] == "settled")
        assert event["message_id"] == mid


async def test_power_report_event_and_port_state(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    report = p.PortPowerReport(
        port=0,
        status=1,
        duration=600,
        energy=12,
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
        port_temperature=0,
    )
    mid = await device.send(0x06, p.encode_payload(report))
    event = await mqtt.wait(f"{DEV}/event/port", lambda m: m["type"] == "power")
    assert event == {
        "type": "power",
        **common(event, 0x06, mid),
        "port": 1,
        "status": "charging",
        "status_code": 1,
        "order_no": ORDER.hex().upper(),
        "duration_s": 600,
        "energy_kwh": 0.12,
        "power_w": 234.2,
        "max_power_w": 240.0,
        "min_power_w": 230.0,
        "avg_power_w": 235.0,
        "peak_power_w": 250.0,
        "voltage_v": 220.1,
        "current_a": 1.065,
        "temperature_c": 25.0,
        "port_temperature_c": None,
        "start_mode": "online",
        "start_mode_code": 1,
    }
    state = await mqtt.wait(f"{DEV}/ports/1")
    assert state == {
        "port": 1,
        "status": "charging",
        "status_code": 1,
        "power_w": 234.2,
        "order_no": ORDER.hex().upper(),
        "updated_at": state["updated_at"],
        "energy_kwh": 0.12,
        "voltage_v": 220.1,
        "current_a": 1.065,
        "temperature_c": 25.0,
        "port_temperature_c": None,
        "measured_at": state["updated_at"],
    }
    await device.expect_silence(0.5)  # 0x06 is not answered
    # A heartbeat changing the other port keeps port 1's measurements in its retained state.
    hb = p.Heartbeat(voltage=2300, port_statuses=(1, 2), signal=3, temperature=0)
    await device.send(0x21, p.encode_payload(hb))
    await mqtt.wait(f"{DEV}/ports/2")
    async with mqtt_collector(broker, f"{DEV}/ports/1") as late:
        kept = await late.wait(f"{DEV}/ports/1")
    assert kept == state


async def test_order_confirmation_answered_and_published(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    confirmation = p.OrderConfirmation(
        port=1, start_mode=0, card_id=bytes.fromhex("A1B2C3D4"), duration=60, order_no=ORDER
    )
    mid = await device.send(0x04, p.encode_payload(confirmation))
    reply = p.decode_payload(0x04, (await device.recv()).data, p.Sender.SERVER)
    assert isinstance(reply, p.OrderConfirmationReply)
    assert (reply.port, reply.answer) == (1, 0)
    event = await mqtt.wait(f"{DEV}/event/order", lambda m: m["type"] == "confirmed")
    assert event == {
        "type": "confirmed",
        **common(event, 0x04, mid),
        "port": 2,
        "order_no": ORDER.hex().upper(),
        "start_mode": "offline",
        "start_mode_code": 0,
        "card_id": "A1B2C3D4",
        "duration_s": 60,
    }


async def test_alarm_unknown_and_short_payload_events(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    mid = await device.send(0x42, bytes([3, 1, 0]))
    alarm = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "alarm")
    assert alarm == {
        "type": "alarm",
        **common(alarm, 0x42, mid),
        "alarm": "hot_melt",
        "alarm_code": 3,
        "port": 2,
        "sensor_address": 0,
        "inputs": 0,
    }
    mid = await device.send(0x3C, b"\x01\x02")
    unknown = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "unknown")
    assert unknown == {
        "type": "unknown",
        **common(unknown, 0x3C, mid),
        "command_name": p.command_name(0x3C),
        "data_hex": "0102",
        "error": None,
    }
    mid = await device.send(0x03, b"\x01")  # far too short for a settlement
    bad = await mqtt.wait(f"{DEV}/event/device", lambda m: m["message_id"] == mid)
    assert bad["type"] == "unknown" and bad["data_hex"] == "01" and bad["error"]
    await device.expect_silence(0.5)


async def test_offline_event_and_state_on_disconnect(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    await device.send(0x22)
    await device.recv()
    await mqtt.wait(DEV, lambda m: m["online"] is True)
    await device.close()
    event = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "offline")
    assert event == {"type": "offline", **common(event, None, None), "reason": "closed"}
    state = await mqtt.wait(DEV, lambda m: m["online"] is False)
    assert state["last_seen"].endswith("Z")


async def test_resent_time_request_gets_the_current_time(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    await device.send(0x22, message_id=9)
    first = p.decode_payload(0x22, (await device.recv()).data, p.Sender.SERVER)
    await device.send(0x22, message_id=9)  # e.g. after a reboot message ids restart
    second = p.decode_payload(0x22, (await device.recv()).data, p.Sender.SERVER)
    assert isinstance(first, p.TimeReply) and isinstance(second, p.TimeReply)
    # answered anew, not from the resend memory; that the time moved on is checked with an
    # injected clock in test_units.py (no sleep here)
    assert second.unix_time >= first.unix_time
    await fence(device, mqtt)
    assert len([m for m in mqtt.all(f"{DEV}/event/device") if m["type"] == "time_sync"]) == 2
