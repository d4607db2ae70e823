"""Replies the gateway gives by itself, and the events and states they publish."""

from __future__ import annotations

import time

import pytest

import protocol as p
from bridge.app import GatewayApp
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import ICCID, PID, FakeDevice, MqttCollector, tcp_port

DEV = f"{B}/devices/04AB373B"


def registration() -> bytes:
    return p.encode_payload(
        p.Registration(
            firmware=126,
            port_count=2,
            virtual_id=0,
            device_type=0x21,
            work_mode=0,
            power_board_version=0,
        )
    )


def heartbeat(statuses: tuple[int, ...] = (0, 1)) -> bytes:
    return p.encode_payload(
        p.Heartbeat(voltage=2200, port_statuses=statuses, signal=9, temperature=90)
    )


def result_of(frame: p.Frame) -> int:
    reply = p.decode_payload(frame.command, frame.data, p.Sender.SERVER)
    assert isinstance(reply, p.ResultReply)
    return reply.result


async def test_registration_is_answered_and_published(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    mid = await device.send(0x20, registration())
    reply = await device.recv()
    assert (reply.physical_id, reply.command, reply.message_id) == (PID, 0x20, mid)
    assert result_of(reply) == 0

    online = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "online")
    assert online["command"] == 0x20 and online["message_id"] == mid
    assert online["gateway_id"] == "test-gw"
    assert online["ts"].endswith("Z") and len(online["ts"]) == 24
    event = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "register")
    assert event == {
        "type": "register",
        "ts": event["ts"],
        "device_id": "04AB373B",
        "gateway_id": "test-gw",
        "command": 0x20,
        "message_id": mid,
        "firmware": "1.26",
        "port_count": 2,
        "virtual_id": 0,
        "device_type": 0x21,
        "work_mode": 0,
        "power_board_firmware": "0.00",
    }
    body = await mqtt.wait(DEV, lambda m: m["firmware"] == "1.26")
    assert body["online"] is True
    assert body["device_number"] == 11220795
    assert body["device_kind"] == "dual_socket"
    assert body["port_count"] == 2
    assert body["gateway_id"] == "test-gw"
    assert (body["device_type"], body["device_type_code"]) == ("new_485_dual_mode", 0x21)


async def test_heartbeat_0x21_updates_ports_and_device(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    mid = await device.send(0x21, heartbeat((0, 1)))
    reply = await device.recv()
    assert (reply.command, reply.message_id, result_of(reply)) == (0x21, mid, 0)

    port2 = await mqtt.wait(f"{DEV}/ports/2")
    assert port2 == {
        "port": 2,
        "status": "charging",
        "status_code": 1,
        "power_w": None,
        "order_no": None,
        "updated_at": port2["updated_at"],
        "energy_kwh": None,
        "voltage_v": None,
        "current_a": None,
        "temperature_c": None,
        "port_temperature_c": None,
        "measured_at": None,
    }
    status = await mqtt.wait(f"{DEV}/event/port", lambda m: m["port"] == 1)
    assert (status["type"], status["status"], status["status_code"]) == ("status", "idle", 0)
    hb = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "heartbeat")
    assert hb["voltage_v"] == 220.0 and hb["signal"] == 9 and hb["temperature_c"] == 25.0
    assert [x["status"] for x in hb["ports"]] == ["idle", "charging"]
    state = await mqtt.wait(DEV, lambda m: m["voltage_v"] == 220.0)
    assert state["temperature_c"] == 25.0 and state["signal"] == 9


async def test_legacy_heartbeat_answered_only_until_0x21_seen(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    legacy = p.encode_payload(
        p.LegacyHeartbeat(
            firmware=126,
            voltage=2188,
            port_statuses=(0, 3),
            powers=(0, 228),
            peak_powers=(0, 571),
            virtual_id=41,
            signal=7,
            device_type=2,
            temperature=97,
            work_mode=0,
        )
    )
    mid = await device.send(0x01, legacy)
    reply = await device.recv()
    assert (reply.command, reply.message_id, result_of(reply)) == (0x01, mid, 0)
    port2 = await mqtt.wait(f"{DEV}/ports/2")
    assert port2["power_w"] == 22.8 and port2["status"] == "plugged_full"

    await device.send(0x21, heartbeat())
    assert (await device.recv()).command == 0x21
    await device.send(0x01, legacy)
    await device.expect_silence(1.0)  # reference 5.3: never answer both kinds


async def test_time_requests_get_current_unix_time(device: FakeDevice, mqtt: MqttCollector) -> None:
    for command in (0x22, 0x12):
        before = int(time.time())
        mid = await device.send(command)
        reply = await device.recv()
        assert (reply.command, reply.message_id) == (command, mid)
        t = p.decode_payload(command, reply.data, p.Sender.SERVER)
        assert isinstance(t, p.TimeReply)
        assert before <= t.unix_time <= int(time.time())
        event = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "time_sync")
        assert event["unix_time"] == t.unix_time and event["command"] == command


def swipe(port: int = 0) -> bytes:
    return p.encode_payload(
        p.CardSwipe(card_id=bytes.fromhex("A1B2C3D4"), card_type=0, port=port, balance=150)
    )


def card_reply_of(frame: p.Frame) -> p.CardSwipeReply:
    reply = p.decode_payload(0x02, frame.data, p.Sender.SERVER)
    assert isinstance(reply, p.CardSwipeReply)
    return reply


async def test_card_swipe_rejected_by_default(device: FakeDevice, mqtt: MqttCollector) -> None:
    mid = await device.send(0x02, swipe(port=1))
    frame = await device.recv()
    assert frame.message_id == mid
    reply = card_reply_of(frame)
    assert (reply.card_id, reply.account_status, reply.port) == (bytes.fromhex("A1B2C3D4"), 1, 1)
    event = await mqtt.wait(f"{DEV}/event/order", lambda m: m["type"] == "card_swipe")
    assert event["card_id"] == "A1B2C3D4" and event["card_number"] == 0xA1B2C3D4
    assert event["port"] == 2 and event["card_type"] == "old_card"
    assert event["balance_cents"] == 150 and event["awaiting_reply"] is False


@pytest.mark.gateway(card_policy="accept", card_balance_cents=1234)
async def test_card_swipe_accepted_with_balance(device: FakeDevice, mqtt: MqttCollector) -> None:
    await device.send(0x02, swipe(port=0xFF))
    reply = card_reply_of(await device.recv())
    assert (reply.account_status, reply.balance, reply.port) == (0, 1234, 0xFF)
    event = await mqtt.wait(f"{DEV}/event/order", lambda m: m["type"] == "card_swipe")
    assert event["port"] == "balance_query"


async def test_iccid_is_attached_to_the_device(gateway: GatewayApp, mqtt: MqttCollector) -> None:
    dev = FakeDevice()
    await dev.connect(tcp_port(gateway), iccid=ICCID)
    try:
        await dev.send(0x21, heartbeat())
        await dev.recv()
        state = await mqtt.wait(DEV, lambda m: m["iccid"] == ICCID)
        assert state["online"] is True
    finally:
        await dev.close()


async def test_host_heartbeat_is_not_answered_but_published(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    host = p.HostHeartbeat(
        firmware=290,
        rtc_module=1,
        host_time=1604934878,
        signal=25,
        module_type=6,
        iccid=ICCID,
        host_type=0x50,
        frequency=0,
        imei="861234567890123",
        module_version="V1",
    )
    mid = await device.send(0x11, p.encode_payload(host))
    event = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "heartbeat")
    assert event["message_id"] == mid and event["command"] == 0x11
    assert (event["firmware"], event["signal"], event["iccid"]) == ("2.90", 25, ICCID)
    assert (event["imei"], event["host_time"]) == ("861234567890123", "2020-11-09T15:14:38.000Z")
    state = await mqtt.wait(DEV, lambda m: m["iccid"] == ICCID)
    assert state["firmware"] == "2.90"
    await device.expect_silence(0.5)
