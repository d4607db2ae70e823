"""Device commands over MQTT: validation, replies, resend and timeout, spacing, v5 responses."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import protocol as p
from bridge.app import GatewayApp
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import PID, FakeDevice, MqttCollector

DEV = f"{B}/devices/04AB373B"
ORDER = "0102030405060708090A0B0C0D0E0F10"


async def request(
    mqtt: MqttCollector, command: str, body: Any, device: str = DEV, **kw: Any
) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    await mqtt.client.publish(f"{device}/request/{command}", payload, qos=1, **kw)


def sent_at(app: GatewayApp, command: int) -> list[tuple[float, p.Frame]]:
    """(time, frame) of every `command` frame the gateway writes, stamped by the gateway as it
    writes (a tap), so that a loaded test machine cannot compress the gaps."""
    sent: list[tuple[float, p.Frame]] = []

    def tap(sender: p.Sender, dev: Any, frame: p.Frame) -> None:
        if sender is p.Sender.SERVER and frame.command == command:
            sent.append((time.monotonic(), frame))

    assert app.gateway is not None
    app.gateway.taps.append(tap)
    return sent


async def online(device: FakeDevice) -> None:
    await device.send(0x22)
    await device.recv()


async def test_start_charging_reply_response_and_event(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    await online(device)
    body = {"request_id": "r1", "port": 2, "mode": "time", "duration_s": 3600, "order_no": ORDER}
    await request(mqtt, "start_charging", body)
    frame = await device.recv()
    assert (frame.physical_id, frame.command) == (PID, 0x82)
    control = p.decode_payload(0x82, frame.data, p.Sender.SERVER)
    assert isinstance(control, p.ChargeControl)
    assert (control.port, control.command, control.duration, control.rate_mode) == (1, 1, 3600, 0)
    assert control.order_no.hex().upper() == ORDER
    reply = p.ChargeControlReply(result=0, order_no=control.order_no, port=1, waiting_ports=0)
    await device.send(0x82, p.encode_payload(reply), message_id=frame.message_id)
    response = await mqtt.wait(f"{DEV}/response/start_charging")
    assert response == {
        "request_id": "r1",
        "ok": True,
        "code": 0,
        "result": "ok",
        "message": "ok",
        "order_no": ORDER,
        "port": 2,
    }
    event = await mqtt.wait(f"{DEV}/event/order", lambda m: m["type"] == "started")
    assert event == {
        "type": "started",
        "ts": event["ts"],
        "device_id": "04AB373B",
        "gateway_id": "test-gw",
        "command": 0x82,
        "message_id": frame.message_id,
        "port": 2,
        "order_no": ORDER,
        "result": "ok",
        "result_code": 0,
        "reason": None,
        "waiting_ports": None,
    }


async def test_refused_start_and_stop(device: FakeDevice, mqtt: MqttCollector) -> None:
    await online(device)
    await request(mqtt, "start_charging", {"request_id": "a", "port": 1, "mode": "full"})
    frame = await device.recv()
    await device.send(0x82, bytes([1]), message_id=frame.message_id)  # old device: result only
    response = await mqtt.wait(f"{DEV}/response/start_charging")
    assert (response["ok"], response["code"], response["result"]) == (False, 1, "no_charger")
    assert len(response["order_no"]) == 32  # generated
    failed = await mqtt.wait(f"{DEV}/event/order", lambda m: m["type"] == "start_failed")
    assert failed["reason"] == "no charger" and failed["port"] == 1
    assert failed["order_no"] == response["order_no"]

    await request(mqtt, "stop_charging", {"request_id": "b", "port": 1, "order_no": ORDER})
    frame = await device.recv()
    control = p.decode_payload(0x82, frame.data, p.Sender.SERVER)
    assert isinstance(control, p.ChargeControl) and control.command == 0
    reply = p.ChargeControlReply(result=0, order_no=bytes.fromhex(ORDER), port=0, waiting_ports=0)
    await device.send(0x82, p.encode_payload(reply), message_id=frame.message_id)
    assert (await mqtt.wait(f"{DEV}/response/stop_charging"))["ok"] is True
    stopped = await mqtt.wait(f"{DEV}/event/order", lambda m: m["type"] == "stopped")
    assert (stopped["port"], stopped["order_no"]) == (1, ORDER)


async def test_timeout_after_one_resend_with_same_message_id(
    gateway: GatewayApp, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await online(device)
    sent = sent_at(gateway, 0x96)
    await request(mqtt, "locate", {"request_id": "t", "seconds": 5})
    first = await device.recv()
    second = await device.recv()
    [(t0, _), (t1, _)] = sent
    assert t1 - t0 >= 0.49  # the resend waits for the (test: 0.5 s) timeout, at the sender
    assert first == second  # same message id, same bytes
    response = await mqtt.wait(f"{DEV}/response/locate")
    assert (response["ok"], response["result"], response["request_id"]) == (False, "timeout", "t")
    await device.expect_silence(0.7)  # no third attempt


async def test_commands_to_one_device_are_spaced(
    gateway: GatewayApp, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await online(device)
    sent = sent_at(gateway, 0x96)
    for i in range(3):
        await request(mqtt, "locate", {"request_id": str(i), "seconds": 1})
    for _ in range(3):
        frame = await device.recv()
        await device.send(0x96, b"\x00", message_id=frame.message_id)
    # Stamped when the gateway writes, not when the device reads: a loaded receiver that
    # reads two frames late but together would see them closer than they were sent.
    times = [t for t, _ in sent]
    assert len(times) == 3
    assert all(b - a >= 0.49 for a, b in itertools.pairwise(times))
    ids = set()
    for _ in range(3):
        response = await mqtt.wait(f"{DEV}/response/locate")
        assert response["ok"] is True
        ids.add(response["request_id"])
    assert ids == {"0", "1", "2"}


async def test_offline_device_answers_at_once(gateway: GatewayApp, mqtt: MqttCollector) -> None:
    # "At once" (no wait on any timer) is checked in memory: test_units.py.
    await request(mqtt, "reboot", {"request_id": "x"}, device=f"{B}/devices/05000001")
    response = await mqtt.wait(f"{B}/devices/05000001/response/reboot")
    assert (response["ok"], response["result"], response["code"]) == (False, "offline", None)
    assert gateway.gateway is not None and gateway.gateway.stats.commands_sent == 0


@pytest.mark.parametrize(
    ("command", "body", "field"),
    [
        ("start_charging", b"{not json", "JSON"),
        ("start_charging", b"[1, 2]", "object"),
        ("fly", {"request_id": "i"}, "unknown command"),
        ("start_charging", {"request_id": "i", "port": 0, "mode": "full"}, "port"),
        ("start_charging", {"request_id": "i", "port": "1", "mode": "full"}, "port"),
        ("start_charging", {"request_id": "i", "port": 1}, "mode"),
        ("start_charging", {"request_id": "i", "port": 1, "mode": "time"}, "duration_s"),
        (
            "start_charging",
            {"request_id": "i", "port": 1, "mode": "full", "order_no": "XYZ"},
            "order_no",
        ),
        ("stop_charging", {"request_id": "i", "port": 1}, "order_no"),
        ("locate", {"request_id": "i", "seconds": 1, "volume": 3}, "volume"),
        (
            "set_limits",
            {"max_duration_s": 1, "max_power_w": 1, "over_voltage_v": 250},
            "under_voltage_v",
        ),
        ("set_params", {"heartbeat_interval_s": 60}, "unplug_power"),
        ("raw", {"command": 0x96, "data_hex": "zz"}, "data_hex"),
        ("raw", {"command": 300, "data_hex": ""}, "command"),
        ("adjust_charging", {"request_id": "i", "port": 1, "mode": "forever"}, "mode"),
        ("adjust_charging", {"request_id": "i", "port": 1, "mode": "time"}, "duration_s"),
        ("read_params", {"request_id": "i", "which": "secrets"}, "which"),
        ("query_status", {"request_id": "i", "verbose": True}, "verbose"),
        ("reboot", {"request_id": "i", "delay_s": 5}, "delay_s"),
        ("locate", {"request_id": "i", "seconds": -1}, "seconds"),
        ("stop_charging", {"request_id": "i", "port": True, "order_no": ORDER}, "port"),
        ("card_reply", {"request_id": "i", "card_id": "A1B2C3"}, "card_id"),
        ("start_charging", b'{"request_id": "i", "pad": "' + b"x" * 20000 + b'"}', "limited"),
    ],
)
async def test_invalid_requests_never_reach_the_device(
    device: FakeDevice, mqtt: MqttCollector, command: str, body: Any, field: str
) -> None:
    await online(device)
    await request(mqtt, command, body)
    response = await mqtt.wait(f"{DEV}/response/{command}")
    assert (response["ok"], response["result"]) == (False, "invalid")
    assert field in response["message"]
    if isinstance(body, dict) and "request_id" in body:
        assert response["request_id"] == "i"
    await device.expect_silence(0.3)


async def test_bad_device_id_is_invalid(gateway: Any, mqtt: MqttCollector) -> None:
    await request(mqtt, "reboot", {"request_id": "d"}, device=f"{B}/devices/nothex")
    response = await mqtt.wait(f"{B}/devices/nothex/response/reboot")
    assert response["result"] == "invalid" and "device_id" in response["message"]


async def test_query_status_needs_no_reply_and_v5_response_topic(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    await online(device)
    await mqtt.client.subscribe("chargebridge/replies/inbox", qos=1)
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = "chargebridge/replies/inbox"
    props.CorrelationData = b"corr-1"
    await request(mqtt, "query_status", {"request_id": "q"}, properties=props)
    frame = await device.recv()
    assert (frame.command, frame.data) == (0x81, b"")
    response = await mqtt.wait(f"{DEV}/response/query_status")
    assert (response["ok"], response["request_id"]) == (True, "q")
    direct = await mqtt.wait_message("chargebridge/replies/inbox")
    assert direct.json() == response
    assert direct.properties.CorrelationData == b"corr-1"


async def test_read_params_and_raw_replies_are_decoded(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    await online(device)
    await request(mqtt, "read_params", {"request_id": "r", "which": "limits"})
    frame = await device.recv()
    assert frame.command == 0x92
    limits = p.ChargeLimits(max_charge_time=36000, overload_power=20000)
    await device.send(0x92, p.encode_payload(limits), message_id=frame.message_id)
    response = await mqtt.wait(f"{DEV}/response/read_params")
    assert response["ok"] is True
    assert response["max_charge_time"] == 36000 and response["overload_power"] == 20000

    await request(mqtt, "raw", {"request_id": "w", "command": 0x8D, "data_hex": "01"})
    frame = await device.recv()
    assert (frame.command, frame.data) == (0x8D, b"\x01")
    await device.send(0x8D, b"\x00", message_id=frame.message_id)
    response = await mqtt.wait(f"{DEV}/response/raw")
    assert response["ok"] is True and response["request_id"] == "w"


async def test_set_limits_and_set_params_frames(device: FakeDevice, mqtt: MqttCollector) -> None:
    await online(device)
    await request(
        mqtt,
        "set_limits",
        {
            "max_duration_s": 36000,
            "max_power_w": 2000,
            "over_voltage_v": 270,
            "under_voltage_v": 100,
        },
    )
    frame = await device.recv()
    limits = p.decode_payload(0x85, frame.data, p.Sender.SERVER)
    assert limits == p.ChargeLimits(36000, 20000, 2700, 1000)
    await device.send(0x85, b"\x01", message_id=frame.message_id)
    response = await mqtt.wait(f"{DEV}/response/set_limits")
    assert (response["ok"], response["code"]) == (False, 1)

    params = {
        "unplug_power": 3,
        "unplug_detection_s": 10,
        "float_percent": 20,
        "float_detection_s": 1800,
        "float_charge_s": 3600,
        "heartbeat_interval_s": 180,
    }
    await request(mqtt, "set_params", params)
    frame = await device.recv()
    assert frame.command == 0x83
    decoded = p.decode_payload(0x83, frame.data, p.Sender.SERVER)
    assert isinstance(decoded, p.RunningParams1) and decoded.heartbeat_interval == 180
    await device.send(0x83, b"\x00", message_id=frame.message_id)
    assert (await mqtt.wait(f"{DEV}/response/set_params"))["ok"] is True


@pytest.mark.gateway(card_policy="authorize", card_authorize_timeout_s=3)
async def test_card_authorized_over_mqtt(device: FakeDevice, mqtt: MqttCollector) -> None:
    swipe = p.CardSwipe(card_id=bytes.fromhex("0A0B0C0D"), card_type=0, port=0, balance=0)
    mid = await device.send(0x02, p.encode_payload(swipe))
    event = await mqtt.wait(f"{DEV}/event/order", lambda m: m["type"] == "card_swipe")
    assert event["awaiting_reply"] is True
    await request(
        mqtt,
        "card_reply",
        {"request_id": "c", "card_id": "0a0b0c0d", "account_status": 0, "balance_cents": 500},
    )
    frame = await device.recv()
    reply = p.decode_payload(0x02, frame.data, p.Sender.SERVER)
    assert frame.message_id == mid
    assert isinstance(reply, p.CardSwipeReply)
    assert (reply.account_status, reply.balance, reply.port) == (0, 500, 0)
    assert (await mqtt.wait(f"{DEV}/response/card_reply"))["ok"] is True


@pytest.mark.gateway(card_policy="authorize", card_authorize_timeout_s=0.5)
async def test_card_falls_back_when_nobody_authorizes(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    swipe = p.CardSwipe(card_id=bytes.fromhex("0A0B0C0D"), card_type=1, port=0, balance=0)
    await device.send(0x02, p.encode_payload(swipe))
    reply = p.decode_payload(0x02, (await device.recv()).data, p.Sender.SERVER)
    assert isinstance(reply, p.CardSwipeReply) and reply.account_status == 1
    await request(mqtt, "card_reply", {"request_id": "late", "card_id": "0A0B0C0D"})
    late = await mqtt.wait(f"{DEV}/response/card_reply")
    assert (late["ok"], late["result"]) == (False, "expired")


async def test_adjust_charging_frame_and_result_name(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    await online(device)
    await request(mqtt, "adjust_charging", {"port": 2, "mode": "energy", "energy_kwh": 1.5})
    frame = await device.recv()
    adjust = p.decode_payload(0x8A, frame.data, p.Sender.SERVER)
    assert adjust == p.AdjustCharging(mode=2, port=1, limit=150)
    await device.send(0x8A, b"\x01", message_id=frame.message_id)
    response = await mqtt.wait(f"{DEV}/response/adjust_charging")
    assert (response["ok"], response["code"], response["result"]) == (False, 1, "not_charging")
