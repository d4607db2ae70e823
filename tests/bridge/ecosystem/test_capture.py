"""Frame capture over MQTT, `decode --capture` and `replay`, with real sockets and broker."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import protocol as p
from bridge.app import GatewayApp
from bridge.commands.capture import CaptureFailed, capture
from bridge.commands.replay import CaptureFormatError, read_capture, replay
from bridge.config import CommonSettings, load_settings
from bridge.simulator.fleet import TcpTarget
from tests.bridge.ecosystem.support import register
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import (
    PID,
    TIMEOUT,
    FakeDevice,
    MqttCollector,
    gateway_settings,
    mqtt_collector,
    running_gateway,
    tcp_port,
)
from tests.broker import Mosquitto

DEVICE_ID = "04AB373B"
OTHER = 0x04000001


async def started(app: GatewayApp) -> None:
    assert app.capture is not None
    async with asyncio.timeout(TIMEOUT):
        await app.capture.mqtt.wait_connected()


def client_settings(broker: Mosquitto, base: str = B) -> CommonSettings:
    return load_settings(CommonSettings, {"mqtt": broker.url, "base_topic": base})


async def record(
    broker: Mosquitto, app: GatewayApp, device: str, seconds: float, traffic: Any
) -> tuple[int, list[dict[str, Any]]]:
    """Run `chargebridge capture` while `traffic()` runs; returns (frames, records)."""
    await started(app)
    out = io.StringIO()
    async with mqtt_collector(broker, f"{B}/bridge/response/capture") as responses:
        task = asyncio.create_task(capture(client_settings(broker), device, seconds, 1000, out))
        await responses.wait(f"{B}/bridge/response/capture")  # the capture is running
        await traffic()
        frames = await asyncio.wait_for(task, seconds + TIMEOUT)
    return frames, [json.loads(line) for line in out.getvalue().splitlines()]


async def test_capture_one_device_both_directions(
    broker: Mosquitto, gateway: GatewayApp, device: FakeDevice
) -> None:
    other = FakeDevice(OTHER)
    await other.connect(tcp_port(gateway))

    async def traffic() -> None:
        await register(device)
        await other.send(0x22)
        await other.recv()

    frames, records = await record(broker, gateway, DEVICE_ID, 1.0, traffic)
    await other.close()
    assert frames == len(records) == 4  # 0x20 and 0x21, each with its reply
    assert {r["device_id"] for r in records} == {DEVICE_ID}
    assert [(r["direction"], r["command"]) for r in records] == [
        ("device_to_server", 0x20),
        ("server_to_device", 0x20),
        ("device_to_server", 0x21),
        ("server_to_device", 0x21),
    ]
    for r in records:
        frame = p.decode_frame(bytes.fromhex(r["hex"]))
        assert (frame.physical_id, frame.command, frame.message_id) == (
            PID,
            r["command"],
            r["message_id"],
        )
        assert r["ts"].endswith("Z") and r["type"] == "frame"
    assert [r["t"] for r in records] == sorted(r["t"] for r in records)


async def test_capture_requests_are_validated_and_bounded(
    gateway: GatewayApp, mqtt: MqttCollector, broker: Mosquitto
) -> None:
    await started(gateway)
    topic = f"{B}/bridge/request/capture"
    await mqtt.client.publish(topic, b"not json", qos=1)
    bad = await mqtt.wait(f"{B}/bridge/response/capture")
    assert (bad["ok"], bad["result"]) == (False, "invalid")
    await mqtt.client.publish(topic, json.dumps({"request_id": "x", "seconds": 99999}), qos=1)
    bad = await mqtt.wait(f"{B}/bridge/response/capture")
    assert (bad["request_id"], bad["result"]) == ("x", "invalid") and "seconds" in bad["message"]
    for i in range(5):
        await mqtt.client.publish(topic, json.dumps({"request_id": str(i), "seconds": 30}), qos=1)
    answers = [await mqtt.wait(f"{B}/bridge/response/capture") for _ in range(5)]
    assert [a["result"] for a in answers] == ["ok"] * 4 + ["busy"]
    with pytest.raises(CaptureFailed, match="captures are running"):
        await capture(client_settings(broker), "all", 1, 10, io.StringIO())


async def test_capture_without_gateway_times_out(broker: Mosquitto) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(TIMEOUT):
            await capture(client_settings(broker), "all", 1, 10, io.StringIO(), 0.5)


async def test_decode_and_replay_a_capture(
    broker: Mosquitto, gateway: GatewayApp, device: FakeDevice, tmp_path: Path
) -> None:
    async def traffic() -> None:
        await register(device)

    _, records = await record(broker, gateway, "all", 0.5, traffic)
    capture_file = tmp_path / "capture.jsonl"
    capture_file.write_text("".join(json.dumps(r) + "\n" for r in records))

    for flags in (["--capture"], []):  # the flag, or detection of JSON lines
        decoded = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bridge", "decode", *flags],
            input=capture_file.read_text(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert decoded.returncode == 0, decoded.stderr
        lines = [json.loads(line) for line in decoded.stdout.splitlines()]
        assert [(d["command_name"], d["direction"]) for d in lines] == [
            ("registration", "device_to_server"),
            ("registration", "server_to_device"),
            ("heartbeat", "device_to_server"),
            ("heartbeat", "server_to_device"),
        ]
        assert lines[0]["ts"] == records[0]["ts"] and lines[0]["payload"]["port_count"] == 2

    # Replay against a second gateway (another base topic, inside the bridge user's ACL): it
    # sees the same charger.
    replayed = f"{B}/replayed"
    settings = gateway_settings(
        broker, tmp_path / "second", base_topic=replayed, gateway_id="replay-gw"
    )
    async with (
        mqtt_collector(broker, f"{replayed}/#") as seen,
        running_gateway(settings) as second,
    ):
        frames = read_capture(capture_file.read_text().splitlines())
        assert [f.device_id for f in frames] == [DEVICE_ID, DEVICE_ID]
        span = frames[-1].t - frames[0].t
        summary = await replay(frames, TcpTarget("127.0.0.1", tcp_port(second)), 2.0, 0.3)
        assert summary["frames_sent"] == 2 and summary["replies"] == 2
        assert summary["seconds"] >= span / 2
        event = await seen.wait(f"{replayed}/devices/{DEVICE_ID}/event/device", _register)
        assert event["port_count"] == 2


def _register(event: dict[str, Any]) -> bool:
    return event["type"] == "register"


def test_read_capture_refuses_other_files() -> None:
    with pytest.raises(CaptureFormatError, match="line 2"):
        read_capture(['{"type": "end", "frames": 0}', '{"direction": "device_to_server"}'])
    assert read_capture(['{"type": "end", "frames": 0}', ""]) == []


def test_replay_cli_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    for args, code, message in (
        ([str(bad), "--connect", "127.0.0.1:1"], 2, "line 1"),
        ([str(tmp_path / "missing"), "--connect", "127.0.0.1:1"], 2, "cannot read"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "bridge", "replay", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == code and message in run.stderr


async def test_a_capture_ending_at_its_limit_does_not_hide_frames_from_another(
    gateway: GatewayApp, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await started(gateway)
    topics = {}
    for name, limit in (("short", 1), ("long", 100)):
        body = {"request_id": name, "seconds": 2, "max_frames": limit}
        await mqtt.client.publish(f"{B}/bridge/request/capture", json.dumps(body), qos=1)
        answer = await mqtt.wait(
            f"{B}/bridge/response/capture", lambda r, n=name: r["request_id"] == n
        )
        topics[name] = answer["topic"]
    await device.send(0x22)
    await device.recv()
    short_end = await mqtt.wait(topics["short"], lambda r: r["type"] == "end")
    assert (short_end["frames"], short_end["reason"]) == (1, "limit")
    long_end = await mqtt.wait(topics["long"], lambda r: r["type"] == "end")
    assert (long_end["frames"], long_end["reason"]) == (2, "time")
    long_frames = [r for r in mqtt.all(topics["long"]) if r["type"] == "frame"]
    assert [r["direction"] for r in long_frames] == ["device_to_server", "server_to_device"]


async def test_capture_command_writes_a_file(
    broker: Mosquitto, gateway: GatewayApp, device: FakeDevice, tmp_path: Path
) -> None:
    await started(gateway)
    out = tmp_path / "cap.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "capture", "--mqtt", broker.url, "--base-topic", B,
        "--device", DEVICE_ID.lower(), "--seconds", "2", "--out", str(out),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            while b"capturing on" not in await proc.stderr.readline():
                pass  # log lines before it; the capture runs once it is printed
        await device.send(0x22)
        await device.recv()
        async with asyncio.timeout(TIMEOUT):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0, rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"capture ended (time): 2 frames" in rest
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["command"], r["direction"]) for r in records] == [
        (0x22, "device_to_server"),
        (0x22, "server_to_device"),
    ]
