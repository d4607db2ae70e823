"""Promises of the gateway that a mutation check found unguarded, tested through behaviour only.

Each test drives the real gateway (`running_gateway`) on a real Mosquitto with hand-written DNY
bytes over a TCP socket or a pseudo-terminal and watches MQTT, so it survives any reshaping of
the gateway's insides. Each one fails on the deliberate bug named in its docstring
(scripts/mutation.py applies them; docs/testing.md).
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from tests.bridge.helpers import (
    FakeDevice,
    PtyLine,
    gateway_settings,
    mqtt_collector,
    running_gateway,
    tcp_port,
)
from tests.broker import ACL, Mosquitto
from tests.protocol.test_reference_fixtures import (
    ORDER,
    POWER_PREFIX,
    POWER_TAIL,
    SETTLEMENT_PREFIX,
    SETTLEMENT_TAIL,
)

B = "chargebridge"
PID_A = 0x04AB373B
PID_B = 0x0500000A
DEV_A = "04AB373B"
DEV_B = "0500000A"
SETTLEMENT = SETTLEMENT_PREFIX + SETTLEMENT_TAIL
GRACE_S = 2.0  # how long a reply that must not come is waited for, after a fence


async def _hello(device: FakeDevice) -> None:
    """A time request and its reply: the device is known and online."""
    await device.send(0x22)
    reply = await device.recv()
    assert reply.command == 0x22


async def _no_settlement_reply(device: FakeDevice, seconds: float) -> None:
    try:
        while True:
            frame = await device.recv(timeout=seconds)
            assert frame.command != 0x03, f"settlement acknowledged: {frame}"
    except TimeoutError:
        pass


async def test_hand_written_frames_become_the_documented_events(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """0x06 and 0x03 bytes typed from the reference's tables, as the API.md events: a layout
    or unit slip anywhere between the socket and MQTT shows in one of these fields."""
    async with (
        mqtt_collector(broker, f"{B}/#") as seen,
        running_gateway(gateway_settings(broker, tmp_path)) as gateway,
    ):
        device = FakeDevice(PID_A)
        await device.connect(tcp_port(gateway))
        await device.send(0x06, POWER_PREFIX + POWER_TAIL)
        power = await seen.wait(f"{B}/devices/{DEV_A}/event/port", lambda m: m["type"] == "power")
        expected_power = {
            "port": 1,
            "status": "charging",
            "order_no": ORDER.hex().upper(),
            "duration_s": 300,
            "start_mode": "online",
        }
        assert {k: power[k] for k in expected_power} == expected_power
        for key, value in (
            ("energy_kwh", 0.27),
            ("power_w", 180.3),
            ("max_power_w", 185.6),
            ("min_power_w", 175.0),
            ("avg_power_w", 180.0),
            ("peak_power_w", 201.1),
            ("voltage_v", 229.8),
            ("current_a", 0.785),
            ("temperature_c", 28.0),
        ):
            assert power[key] == pytest.approx(value), key
        assert power["port_temperature_c"] is None

        message_id = await device.send(0x03, SETTLEMENT)
        reply = await device.recv()
        assert (reply.command, reply.message_id, reply.data) == (0x03, message_id, b"\x00")
        settled = await seen.wait(f"{B}/devices/{DEV_A}/event/order")
        expected_settled = {
            "type": "settled",
            "port": 2,
            "order_no": ORDER.hex().upper(),
            "duration_s": 3600,
            "start_mode": "code",
            "card_id": "A1B2C3D4",
            "stop_reason_code": 5,
            "occupied_minutes": 7,
            "device_time": "2018-03-01T00:58:32.000Z",
        }
        assert {k: settled[k] for k in expected_settled} == expected_settled
        assert settled["energy_kwh"] == pytest.approx(1.35)
        assert settled["max_power_w"] == pytest.approx(234.5)
        assert settled["second_max_power_w"] == pytest.approx(221.0)
        await device.close()


def _acl(deny_settlements_of: str | None) -> str:
    """The shipped ACL; optionally the bridge user may not publish one device's order
    events (a misconfigured ACL, the way a broker refuses a publish)."""
    text = ACL.read_text()
    if deny_settlements_of is None:
        return text
    deny = f"topic deny {B}/devices/{deny_settlements_of}/event/order\n"
    head, sep, tail = text.partition("user chargebridge\n")
    assert sep, "the shipped ACL has no `user chargebridge` section"
    return head + sep + deny + tail


async def test_a_settlement_the_broker_refuses_is_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API.md 7: the 0x03 reply only after the broker accepted the `settled` event. The broker
    (MQTT v5, the gateway's default) refuses device A's order events with reason 135; device
    B's go through. Mutation: the gateway answers whatever the PUBACK said.

    The fence: A's settlement is handed to the broker before B's (A's time request after it
    is answered first, and frames of one connection are handled in order), and PUBACKs come
    back in order, so when B has its reply A's refusal has been handled; a reply for A would
    have been written before B's. Then the ACL is mended (SIGHUP reloads it) and A's resend
    is answered, with one `settled` event."""
    acl = tmp_path / "chargebridge.acl"
    acl.write_text(_acl(deny_settlements_of=DEV_A))
    monkeypatch.setattr("tests.broker.ACL", acl)
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        async with (
            mqtt_collector(broker, f"{B}/#") as seen,
            running_gateway(gateway_settings(broker, tmp_path / "gw")) as gateway,
        ):
            a, b = FakeDevice(PID_A), FakeDevice(PID_B)
            for device in (a, b):
                await device.connect(tcp_port(gateway))
                await _hello(device)

            a_id = await a.send(0x03, SETTLEMENT)
            await _hello(a)  # A's settlement has been submitted
            b_id = await b.send(0x03, SETTLEMENT)
            reply = await b.recv()
            assert (reply.command, reply.message_id, reply.data) == (0x03, b_id, b"\x00")
            settled_b = await seen.wait(f"{B}/devices/{DEV_B}/event/order")
            assert settled_b["type"] == "settled"
            await _no_settlement_reply(a, GRACE_S)

            # Mended: the device's resend (same message id) is answered, once published.
            acl.write_text(_acl(deny_settlements_of=None))
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(20):
                while True:
                    await a.send(0x03, SETTLEMENT, message_id=a_id)
                    try:
                        reply = await a.recv(timeout=1.0)
                    except TimeoutError:
                        continue  # the broker had not reloaded its ACL yet
                    assert (reply.command, reply.message_id) == (0x03, a_id)
                    break
            settled_a = await seen.wait(f"{B}/devices/{DEV_A}/event/order")
            assert settled_a["type"] == "settled" and settled_a["energy_kwh"] == pytest.approx(1.35)
            await a.close()
            await b.close()
    finally:
        broker.close()


async def test_a_silent_device_on_a_serial_line_goes_offline(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """API.md 7: nothing from a device for `idle_timeout` -> `online: false`. On an RS-485
    line the line stays open (other devices share it), so the device alone is marked offline
    and comes back when it speaks again. Mutation: the serial branch of the idle check is off."""
    line = PtyLine()
    settings = gateway_settings(
        broker, tmp_path, tcp=["none"], serial=[line.path], idle_timeout=0.5
    )
    try:
        async with (
            mqtt_collector(broker, f"{B}/#") as seen,
            running_gateway(settings),
        ):
            await _serial_hello(line, message_id=1)
            state = f"{B}/devices/{DEV_A}"
            await seen.wait(state, lambda m: m["online"] is True)
            offline = await seen.wait(state, lambda m: m["online"] is False)
            assert offline["device_id"] == DEV_A
            event = await seen.wait(f"{state}/event/device", lambda m: m["type"] == "offline")
            assert event["reason"] == "idle"
            await _serial_hello(line, message_id=2)  # the line itself was kept open
            await seen.wait(state, lambda m: m["online"] is True)
    finally:
        line.close()


async def _serial_hello(line: PtyLine, message_id: int) -> None:
    """A time request on the line until it is answered (the gateway opens the line in the
    background and a fresh open discards what was already written)."""
    async with asyncio.timeout(20):
        while True:
            line.send(PID_A, message_id, 0x22)
            try:
                frame = await line.recv(timeout=1.0)
            except TimeoutError:
                continue
            if (frame.command, frame.message_id) == (0x22, message_id):
                return


async def test_commands_beyond_sixteen_queued_for_one_device_are_busy(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """docs/gateway.md: more than 16 commands queued for one device are answered `busy` at
    once. The charger never replies, and the command timeout is long, so the first 16 stay
    queued while the rest arrive. Mutation: the limit is removed."""
    settings = gateway_settings(broker, tmp_path, command_timeout_s=60.0)
    async with (
        mqtt_collector(broker, f"{B}/devices/{DEV_A}/response/locate") as seen,
        running_gateway(settings) as gateway,
        broker.client() as operator,
    ):
        device = FakeDevice(PID_A)
        await device.connect(tcp_port(gateway))
        await _hello(device)
        total = 20
        for i in range(total):
            body = json.dumps({"request_id": f"r{i}", "seconds": 3})
            await operator.publish(f"{B}/devices/{DEV_A}/request/locate", body, qos=1)
        topic = f"{B}/devices/{DEV_A}/response/locate"
        busy = [await seen.wait(topic) for _ in range(total - 16)]
        assert {r["request_id"] for r in busy} == {f"r{i}" for i in range(16, total)}
        assert all(r["ok"] is False and r["result"] == "busy" for r in busy)
        first = await device.recv()  # the first command went out; the charger stays silent
        assert first.command == 0x96
        await device.close()
