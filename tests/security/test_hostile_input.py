"""Hostile input: fuzzed codec and requests, oversized MQTT payloads, connection floods.

The long fuzz runs are `bench/fuzz_codec.py` (docs/reliability.md); CI runs a short one here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.charging.messages import RequestError, parse_json_object, parse_request
from bridge.config import GatewaySettings
from bridge.gateway.core import Gateway
from bridge.mqtt.client import MqttClient, MqttSettings
from bridge.mqtt.payloads import CHARGING_REQUESTS, DEVICE_COMMAND_REQUESTS, MAX_REQUEST_BYTES
from bridge.mqtt.topics import Topics
from tests.bridge.charging.harness import running_service, settings_for, watcher
from tests.bridge.helpers import FakeDevice, gateway_settings, mqtt_collector, running_gateway
from tests.broker import Mosquitto, free_port
from tests.faults.system import Role

ROOT = Path(__file__).resolve().parents[2]
B = "chargebridge"


def test_codec_fuzz_short_run() -> None:
    """20,000 inputs of bench/fuzz_codec.py: stream decoder and every payload decoder."""
    spec = importlib.util.spec_from_file_location("fuzz_codec", ROOT / "bench" / "fuzz_codec.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.fuzz(20_000, seed=int.from_bytes(os.urandom(2), "big"))
    assert report["failures"] == 0, report["examples"]
    assert report["stream_items"]["Frame"] > 5_000  # the mutations still reach the decoders


# --- requests: any JSON gets an answer, never an exception ---------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
KEYS = sorted(
    {
        name
        for m in (*DEVICE_COMMAND_REQUESTS.values(), *CHARGING_REQUESTS.values())
        for name in m.model_fields
    }
)
request_bodies = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_values)


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.sampled_from([*DEVICE_COMMAND_REQUESTS, "nope"]),
    body=request_bodies | json_values,
    raw=st.binary(max_size=64),
)
def test_gateway_answers_any_request(command: str, body: Any, raw: bytes) -> None:
    """No device is connected: a valid request answers `offline` (or `expired` for a card
    reply; `ok` for `unpin`, which the gateway serves itself), everything else `invalid` with
    a message; nothing raises."""

    async def answer(payload: bytes) -> Any:
        settings_ = GatewaySettings(gateway_id="fuzz", tcp=[])
        gateway = Gateway(settings_, MqttClient(MqttSettings()), Topics(B))
        return await gateway._request("04AB373B", command, payload)

    for payload in (encode(body), raw):
        resp = asyncio.run(answer(payload))
        valid = ("ok",) if command == "unpin" else ("offline", "expired")
        assert resp.result == "invalid" or resp.result in valid, resp
        assert resp.message
        if resp.result == "invalid":
            assert resp.ok is False


@settings(max_examples=600, deadline=None)
@given(action=st.sampled_from([*CHARGING_REQUESTS, "nope"]), body=request_bodies | json_values)
def test_charging_service_parses_any_request(action: str, body: Any) -> None:
    try:
        parse_request(action, parse_json_object(encode(body)))
    except RequestError as exc:
        assert str(exc)


# --- oversized payloads ----------------------------------------------------------------


def oversized_body() -> bytes:
    return json.dumps({"request_id": "big", "pad": "x" * MAX_REQUEST_BYTES}).encode()


async def test_gateway_refuses_oversized_requests(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        mqtt_collector(broker, f"{B}/#") as mqtt,
        running_gateway(gateway_settings(broker, tmp_path)),
    ):
        await mqtt.wait(f"{B}/gateways/test-gw/state", lambda m: m["state"] == "online")
        await mqtt.client.publish(f"{B}/devices/04AB373B/request/reboot", oversized_body(), qos=1)
        response = await mqtt.wait(f"{B}/devices/04AB373B/response/reboot")
        assert (response["ok"], response["result"]) == (False, "invalid")
        assert f"limited to {MAX_REQUEST_BYTES} bytes" in response["message"]


async def test_service_refuses_oversized_requests_and_events(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        watcher(broker) as w,
        broker.client() as app,
    ):
        await app.publish(f"{B}/charging/request/start", oversized_body(), qos=1)
        # answered with its request id, read from the raw bytes (issue 15)
        reply = await w.until(lambda: w.responses.get("start:big"))
        assert reply["ok"] is False and f"limited to {MAX_REQUEST_BYTES}" in reply["message"]
        assert reply["message"].startswith("invalid")
        await app.publish(f"{B}/devices/04AB373B/event/port", oversized_body(), qos=1)
        await w.stats_where(processing_errors=1)


async def test_broker_refuses_packets_above_max_packet_size(broker: Mosquitto) -> None:
    """mosquitto.conf sets max_packet_size 262144: a bigger publish costs the sender its
    connection and reaches nobody."""
    async with mqtt_collector(broker, f"{B}/big/#") as seen:
        with pytest.raises(aiomqtt.MqttError):
            async with broker.client(protocol=aiomqtt.ProtocolVersion.V311, timeout=3) as sender:
                await sender.publish(f"{B}/big/1", b"x" * 300_000, qos=1)
                await sender.publish(f"{B}/big/2", b"after", qos=1)
        async with broker.client() as sender:
            await sender.publish(f"{B}/big/3", b"fence", qos=1)
        await seen.wait_message(f"{B}/big/3")
        assert [m.topic for m in seen.messages] == [f"{B}/big/3"]


# --- connection floods -------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_flood_of_silent_and_junk_connections(broker: Mosquitto, tmp_path: Path) -> None:
    """3,300 connections from three addresses (1,100 each: 100 over the per-address limit),
    two thirds silent, one third sending junk: the gateway process grows by less than 32 MB
    (about 7 MB measured), keeps 3,000
    and still serves a real device from a fourth address."""
    port = free_port()
    args = ["--mqtt", broker.url, "--tcp", f"0.0.0.0:{port}", "--state-dir", str(tmp_path)]
    args += ["--gateway-id", "flood-gw"]
    gateway = Role("gateway", [*args, "--stats-interval", "0.2"], tmp_path / "gateway.log")
    gateway.start()
    assert gateway.proc is not None
    pid = gateway.proc.pid
    writers: list[asyncio.StreamWriter] = []
    try:
        async with mqtt_collector(broker, f"{B}/gateways/flood-gw/#") as mqtt:
            await mqtt.wait(
                f"{B}/gateways/flood-gw/state", lambda m: m["state"] == "online", timeout=20
            )
            before = rss_kib(pid)
            junk = os.urandom(2048) + b"DNY\xff\xff" + b"DN"

            async def connect(source: str, i: int) -> None:
                _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
                writers.append(writer)
                if i % 3 == 0:
                    writer.write(junk)
                    await writer.drain()

            for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                for batch in range(0, 1100, 100):
                    await asyncio.gather(*(connect(source, batch + i) for i in range(100)))
            device = FakeDevice()
            await device.connect(port, host="127.0.0.5")
            mid = await device.send(0x22)
            assert (await device.recv()).message_id == mid
            stats = await mqtt.wait(
                f"{B}/gateways/flood-gw/stats",
                lambda m: m["connections"] == 3001 and m["devices_online"] == 1,
                timeout=30,
            )
            assert stats["garbage_bytes"] >= 900 * 2048
            grown_kib = rss_kib(pid) - before
            assert grown_kib < 32 * 1024, f"gateway grew by {grown_kib} KiB"
            await device.close()
    finally:
        for writer in writers:
            writer.close()
        gateway.close()
