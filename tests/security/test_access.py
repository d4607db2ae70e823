"""The shipped broker security: passwords, the ACL and TLS, with the real gateway and service.

The broker runs from mosquitto.conf with deploy/mosquitto/chargebridge.acl and users made by
deploy/mosquitto/make-users.sh (tests/broker.py). A denied publish is dropped silently by
Mosquitto, so each "not delivered" check is fenced: a later permitted message from the same or
a later client arrives, and the denied one did not arrive before it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import protocol as p
from bridge.mqtt.topics import Topics
from tests.bridge.charging.harness import running_service, settings_for
from tests.bridge.helpers import (
    FakeDevice,
    gateway_settings,
    mqtt_collector,
    running_gateway,
    tcp_port,
)
from tests.broker import DEPLOY, USERS, Mosquitto

B = "chargebridge"
DEV = "04AB373B"


async def test_anonymous_and_wrong_passwords_are_refused(broker: Mosquitto) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with broker.client(None):
            pass
    for user in USERS:
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, username=user, password="not-" + USERS[user]
            ):
                pass
    async with broker.client("monitor"):
        pass  # the right password gets in


async def test_monitor_reads_only_and_operator_starts_charging(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        mqtt_collector(broker, f"{B}/#") as seen,
        running_gateway(gateway_settings(broker, tmp_path / "gw")) as gateway,
        running_service(settings_for(broker, tmp_path / "svc")),
        broker.client("monitor") as monitor,
        broker.client("operator") as operator,
    ):
        device = FakeDevice()
        await device.connect(tcp_port(gateway))
        await device.send(0x22)
        await device.recv()
        await seen.wait(f"{B}/devices/{DEV}", lambda m: m["online"])

        # the monitor reads everything under the base topic (here: retained state) ...
        await monitor.subscribe(f"{B}/#", qos=1)
        async with asyncio.timeout(10):
            async for message in monitor.messages:
                if str(message.topic) == f"{B}/gateways/test-gw/state":
                    break
        # ... and writes nothing: commands, charging requests, forged state
        start = {"request_id": "monitor", "device_id": DEV, "port": 1}
        await monitor.publish(f"{B}/charging/request/start", json.dumps(start), qos=1)
        direct = {"request_id": "monitor-direct", "port": 1, "mode": "full"}
        await monitor.publish(f"{B}/devices/{DEV}/request/start_charging", json.dumps(direct))
        await monitor.publish(
            f"{B}/gateways/test-gw/state", b'{"state":"offline"}', qos=1, retain=True
        )

        # the operator starts a session through the charging service
        start = {"request_id": "operator", "device_id": DEV, "port": 1}
        await operator.publish(f"{B}/charging/request/start", json.dumps(start), qos=1)
        frame = await device.recv()  # the first frame the device gets is the operator's start
        control = p.decode_payload(0x82, frame.data, p.Sender.SERVER)
        assert isinstance(control, p.ChargeControl) and control.port == 0
        reply = p.ChargeControlReply(0, control.order_no, control.port, 0)
        await device.send(0x82, p.encode_payload(reply), message_id=frame.message_id)
        response = await seen.wait(f"{B}/charging/response/start")
        assert (response["request_id"], response["ok"]) == ("operator", True)
        session = await seen.wait(
            f"{B}/sessions/{control.order_no.hex().upper()}", lambda m: m["status"] == "charging"
        )
        assert session["device_id"] == DEV

        # the operator may command devices directly, but not forge state
        await operator.publish(f"{B}/sessions/FORGED", b'{"status":"completed"}', retain=True)
        await operator.publish(f"{B}/devices/{DEV}/request/query_status", b"{}", qos=1)
        assert (await device.recv()).command == 0x81  # not the monitor's start
        await seen.wait(f"{B}/devices/{DEV}/response/query_status")

        request_ids = {m.json().get("request_id") for m in seen.messages if "/request/" in m.topic}
        assert "operator" in request_ids
        assert not request_ids & {"monitor", "monitor-direct"}
        assert not any(m.topic == f"{B}/sessions/FORGED" for m in seen.messages)
        states = [m.json() for m in seen.messages if m.topic == f"{B}/gateways/test-gw/state"]
        assert {"state": "offline"} not in states
        await device.close()


async def test_bridge_connects_over_tls_with_the_test_ca(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", tls=True)
    broker.start()
    try:
        settings = gateway_settings(
            broker, tmp_path / "gw", mqtt=broker.tls_url, mqtt_ca_file=str(broker.ca_file)
        )
        async with (
            mqtt_collector(broker, f"{B}/gateways/test-gw/state") as seen,
            running_gateway(settings) as gateway,
        ):
            await seen.wait(f"{B}/gateways/test-gw/state", lambda m: m["state"] == "online")
            assert gateway.gateway is not None
            assert gateway.gateway.mqtt.settings.tls
        # without the CA the certificate is not trusted; plain MQTT is not spoken there
        untrusted = ssl.create_default_context()
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", broker.tls_port or 0, tls_context=untrusted, timeout=5
            ):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.tls_port or 0,
                username="chargebridge",
                password=USERS["chargebridge"],
                timeout=5,
            ):
                pass
    finally:
        broker.close()


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("chargebridge/replies/app-1", True),
        ("elsewhere/inbox", True),  # outside the base topic the broker's ACL decides
        ("chargebridge/sessions/0123", False),
        ("chargebridge/devices/04AB373B", False),
        ("chargebridge/replies/#", False),
        ("chargebridge/replies", False),
        ("", False),
    ],
)
def test_allowed_response_topics(topic: str, allowed: bool) -> None:
    assert Topics(B).allowed_response_topic(topic) is allowed


async def test_operator_cannot_use_the_bridge_to_write_state(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """A v5 response topic under the base topic (outside `replies/`) is not honoured: the
    operator, who may not write sessions, cannot make the bridge write one for it."""
    async with (
        mqtt_collector(broker, f"{B}/#") as seen,
        running_gateway(gateway_settings(broker, tmp_path, command_spacing_s=0)) as gateway,
        broker.client("operator", protocol=aiomqtt.ProtocolVersion.V5) as operator,
    ):
        device = FakeDevice()
        await device.connect(tcp_port(gateway))
        await device.send(0x22)
        await device.recv()
        for rid, target in (("forge", f"{B}/sessions/FORGED"), ("ok", f"{B}/replies/op")):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = target
            body = json.dumps({"request_id": rid}).encode()
            await operator.publish(
                f"{B}/devices/{DEV}/request/query_status", body, qos=1, properties=props
            )
            assert (await device.recv()).command == 0x81
            response = await seen.wait(f"{B}/devices/{DEV}/response/query_status")
            assert response["request_id"] == rid
        assert (await seen.wait(f"{B}/replies/op"))["request_id"] == "ok"
        assert not [m for m in seen.messages if m.topic == f"{B}/sessions/FORGED"]
        await device.close()


async def test_homeassistant_user_presses_only_its_buttons(broker: Mosquitto) -> None:
    """The optional `homeassistant` user: its discovery prefix, and the four requests its
    buttons send; a device start_charging request is dropped (fenced by its later, permitted
    requests)."""
    allowed = [
        f"{B}/devices/{DEV}/request/reboot",
        f"{B}/devices/{DEV}/request/locate",
        f"{B}/charging/request/start",
        f"{B}/charging/request/stop",
        "homeassistant/status",
    ]
    denied = [f"{B}/devices/{DEV}/request/start_charging", f"{B}/devices/{DEV}/request/raw"]
    async with (
        mqtt_collector(broker, f"{B}/#", "homeassistant/#") as seen,
        broker.client("homeassistant") as ha,
    ):
        for topic in [*denied, *allowed]:
            await ha.publish(topic, b"{}", qos=1)
        await seen.wait_message("homeassistant/status")
        assert [m.topic for m in seen.messages] == allowed


async def test_make_users_generates_passwords_the_broker_accepts(tmp_path: Path) -> None:
    """deploy/mosquitto/make-users.sh: given passwords kept, missing ones generated and
    printed once; the file holds only hashes and is private."""
    passwd = tmp_path / "passwd"
    made = await asyncio.to_thread(
        subprocess.run,
        [DEPLOY / "make-users.sh", passwd, "chargebridge:given-secret", "monitor"],
        check=True,
        capture_output=True,
        text=True,
    )
    user, _, generated = made.stdout.strip().partition(":")
    assert user == "monitor" and len(generated) >= 20
    content = passwd.read_text()
    assert "given-secret" not in content and generated not in content
    assert [line.split(":")[0] for line in content.splitlines()] == ["chargebridge", "monitor"]
    assert passwd.stat().st_mode & 0o077 == 0
    broker = Mosquitto(tmp_path / "broker", passwd=passwd)
    broker.start()
    try:
        for name, password in (("chargebridge", "given-secret"), ("monitor", generated)):
            async with aiomqtt.Client("127.0.0.1", broker.port, username=name, password=password):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", broker.port, username="operator", password="x"):
                pass
    finally:
        broker.close()
