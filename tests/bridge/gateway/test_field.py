"""Frames seen in the field (issue 16) through the real gateway and Mosquitto: named events for
0x05, 0x17, 0x35, 0x41-0x44, the replies 0x15 and 0x3B require, device and host type names,
ports checked against the charger, and `port_status_on_change_only`."""

from __future__ import annotations

import json

import pytest

import protocol as p
from bridge.app import GatewayApp
from protocol.commands.field import HostUpgradeRequest
from protocol.commands.host import ExtensionVersion
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import FakeDevice, MqttCollector, tcp_port
from tests.broker import Mosquitto

DEV = f"{B}/devices/04AB373B"
HOST = 0x09D62684
HOST_DEV = f"{B}/devices/09D62684"
ORDER = bytes.fromhex("12345678" * 4)


def registration(device_type: int = 0x21, ports: int = 2) -> bytes:
    return p.encode_payload(
        p.Registration(
            firmware=126, port_count=ports, virtual_id=0, device_type=device_type, work_mode=0
        )
    )


def heartbeat(*statuses: int) -> bytes:
    return p.encode_payload(
        p.Heartbeat(voltage=2300, port_statuses=statuses, signal=3, temperature=0)
    )


async def device_event(mqtt: MqttCollector, kind: str, topic: str = DEV) -> dict[str, object]:
    event: dict[str, object] = await mqtt.wait(f"{topic}/event/device", lambda m: m["type"] == kind)
    return event


async def test_named_events_instead_of_unknown_and_no_reply(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    frames: list[tuple[int, p.Payload]] = [
        (0x05, p.UpgradeRequest(device_type=0x21, firmware=215, package_type=3)),
        (0x05, p.LegacyUpgradeRequest(b"\x01")),
        (
            0x17,
            p.HostStatus(
                breaker_state=1,
                temperature=90,
                voltage=2205,
                current=1234,
                energy=123456,
                meter_current=1200,
                meter_energy=120000,
                smoke_alarm=0,
                alarm_relay=1,
                leakage_current=12,
                live_temperature=95,
                neutral_temperature=94,
                breaker_lock=0,
                breaker_model=1,
            ),
        ),
        (0x35, p.ExtensionVersions((ExtensionVersion(0x21, 0, 215, 0x04AB373B),))),
        (0x41, p.CabinetHeartbeat(port_count=10, doors=0b101, fans=1 << 9)),
        (
            0x43,
            p.ChargeFinished(
                duration=3600,
                max_power=2342,
                energy=135,
                port=1,
                start_mode=1,
                card_id=bytes(4),
                stop_reason=1,
                order_no=ORDER,
            ),
        ),
        (0x44, p.PortPush(push_type=1, port=3, order_no=ORDER)),
    ]
    for command, payload in frames:
        await device.send(command, p.encode_payload(payload))
    new = await device_event(mqtt, "upgrade_request")
    assert (new["device_type"], new["firmware"], new["package_type"]) == (
        "new_485_dual_mode",
        "2.15",
        3,
    )
    legacy = await device_event(mqtt, "upgrade_request")
    assert (legacy["device_type"], legacy["data_hex"]) == (None, "01")
    host = await device_event(mqtt, "host_status")
    assert host["breaker_closed"] is True and host["voltage_v"] == 220.5
    assert (host["current_a"], host["energy_kwh"], host["temperature_c"]) == (12.34, 1234.56, 25.0)
    assert (host["leakage_current_ma"], host["alarm_relay"], host["smoke_alarm"]) == (
        12,
        True,
        False,
    )
    versions = await device_event(mqtt, "extension_versions")
    assert versions["extensions"] == [
        {
            "extension_type": "new_485_dual_mode",
            "extension_type_code": 0x21,
            "lowest_firmware": "2.15",
            "device_id": "04AB373B",
        }
    ]
    cabinet = await device_event(mqtt, "cabinet_heartbeat")
    assert (cabinet["doors_open"], cabinet["fans_on"]) == ([1, 3], [10])
    finished = await device_event(mqtt, "charge_finished")
    assert (finished["port"], finished["energy_kwh"], finished["stop_reason_code"]) == (2, 1.35, 1)
    assert finished["order_no"] == ORDER.hex().upper()
    push = await device_event(mqtt, "port_push")
    assert (push["port"], push["push"], push["push_code"]) == (4, "door_not_closed", 1)
    await device.expect_silence(0.5)  # none of these is answered
    types = {m["type"] for m in mqtt.all(f"{DEV}/event/device")}
    assert "unknown" not in types


async def test_0x15_is_answered_with_0_and_published(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    mid = await device.send(0x15, p.encode_payload(HostUpgradeRequest()))
    reply = await device.recv()
    assert (reply.command, reply.message_id, reply.data) == (0x15, mid, b"\x00")
    event = await device_event(mqtt, "upgrade_request")
    assert event["command"] == 0x15


async def test_0x3b_is_answered_by_a_0x3a_naming_the_hosts_extensions(
    gateway: GatewayApp, mqtt: MqttCollector
) -> None:
    host = FakeDevice(HOST)
    await host.connect(tcp_port(gateway))
    try:
        # Two extensions behind the host, on its connection.
        for ext in (0x04000002, 0x04000001):
            await host.send(0x21, heartbeat(0, 0), physical_id=ext)
            assert (await host.recv()).physical_id == ext
        mid = await host.send(0x3B, p.encode_payload(p.FskParamsRequest(470)))
        answer = await host.recv()
        assert (answer.command, answer.message_id, answer.physical_id) == (0x3A, mid, HOST)
        params = p.decode_payload(0x3A, answer.data, p.Sender.SERVER)
        assert params == p.FskParams(470, bytes(3), (0x04000001, 0x04000002))
        event = await device_event(mqtt, "fsk_params", HOST_DEV)
        assert event["extension_ids"] == ["04000001", "04000002"]
        # A resend of the 0x3B gets the same 0x3A; the host's 0x3A result is no `unknown`.
        await host.send(0x3B, p.encode_payload(p.FskParamsRequest(470)), message_id=mid)
        assert (await host.recv()).encode() == answer.encode()
        await host.send(0x3A, b"\x00", message_id=mid)
        result = await device_event(mqtt, "frame", HOST_DEV)
        assert (result["command_name"], result["fields"]) == ("set_fsk_params", {"result": 0})
    finally:
        await host.close()


async def test_field_device_and_host_types_are_named_in_device_state(
    gateway: GatewayApp, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await device.send(0x20, registration(device_type=0x31))
    await device.recv()
    state = await mqtt.wait(DEV, lambda m: m["device_type_code"] == 0x31)
    assert state["device_type"] == "field_device_31"
    host = FakeDevice(HOST)
    await host.connect(tcp_port(gateway))
    try:
        hb = p.HostHeartbeat(
            firmware=300,
            rtc_module=1,
            host_time=0,
            signal=20,
            module_type=3,
            iccid="89860412345678901234",
            host_type=0x55,
            frequency=0,
        )
        await host.send(0x11, p.encode_payload(hb))
        host_state = await mqtt.wait(HOST_DEV, lambda m: m["host_type_code"] == 0x55)
        assert host_state["host_type"] == "field_host_55"
    finally:
        await host.close()


async def request(broker: Mosquitto, command: str, body: dict[str, object]) -> None:
    async with broker.client() as client:
        await client.publish(f"{DEV}/request/{command}", json.dumps(body), qos=1)


async def test_port_beyond_the_chargers_port_count_is_invalid_and_never_sent(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await device.send(0x20, registration(ports=2))
    await device.recv()
    await mqtt.wait(DEV, lambda m: m["port_count"] == 2)
    cases = [
        ("start_charging", {"port": 99, "mode": "full"}),
        ("stop_charging", {"port": 3, "order_no": ORDER.hex()}),
        ("adjust_charging", {"port": 3, "mode": "time", "duration_s": 60}),
        ("adjust_power", {"port": 3, "order_no": ORDER.hex(), "max_power_w": 100}),
    ]
    for command, body in cases:
        await request(broker, command, {**body, "request_id": command})
        resp = await mqtt.wait(f"{DEV}/response/{command}")
        assert resp["ok"] is False and resp["result"] == "invalid", resp
        assert resp["message"] == "port: this charger has 2 ports"
    await device.expect_silence(0.5)


async def test_validation_messages_are_readable(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await request(broker, "start_charging", {"port": "x", "mode": "full"})
    resp = await mqtt.wait(f"{DEV}/response/start_charging")
    assert resp["message"] == 'port: must be an integer from 1 to 254 or "auto"'


@pytest.mark.gateway(port_status_on_change_only=True)
async def test_status_events_only_on_change_but_state_and_stats_still_kept(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    for statuses in ((0, 1), (0, 1), (0, 3)):
        await device.send(0x21, heartbeat(*statuses))
        await device.recv()
    await mqtt.wait(f"{DEV}/ports/2", lambda m: m["status"] == "plugged_full")
    stats = await mqtt.latest(
        f"{B}/gateways/test-gw/stats", lambda m: m["status_events_suppressed"] == 3
    )
    assert stats["frames_in"] >= 3
    events = [(e["port"], e["status"]) for e in mqtt.all(f"{DEV}/event/port")]
    # First heartbeat: both ports; second: nothing; third: port 2 only.
    assert events == [(1, "idle"), (2, "charging"), (2, "plugged_full")]
