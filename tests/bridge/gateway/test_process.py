"""The gateway as a separate process: the MQTT will on a crash, orderly SIGTERM, bad options."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import FakeDevice, MqttCollector, mqtt_collector
from tests.broker import Mosquitto, free_port


def start_gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "gateway", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)


async def test_will_marks_the_gateway_offline_when_the_process_is_killed(
    broker: Mosquitto, tmp_path: Path
) -> None:
    state = f"{B}/gateways/killed-gw/state"
    proc = start_gateway(
        *("--mqtt", broker.url, "--tcp", "127.0.0.1:0", "--state-dir", str(tmp_path)),
        *("--gateway-id", "killed-gw"),
    )
    try:
        async with mqtt_collector(broker, f"{B}/#") as mqtt:
            online = await mqtt.wait(state, lambda m: m["state"] == "online", timeout=20)
            assert online["gateway_id"] == "killed-gw" and online["since"].endswith("Z")
            await mqtt.wait(f"{B}/gateways/killed-gw/stats", lambda m: m["uptime_s"] >= 0)
            proc.send_signal(signal.SIGKILL)
            await wait_exit(proc)
            await mqtt.wait(state, lambda m: m["state"] == "offline")
            # the gateway publishes nothing on the v1 topics any more
            assert not any("/bridge/" in m.topic for m in mqtt.messages)
        # and it stays so for whoever looks later (retained)
        async with mqtt_collector(broker, state) as late:
            message = await late.wait_message(state)
            assert message.retain
            assert message.json() == {"state": "offline", "gateway_id": "killed-gw"}
    finally:
        proc.kill()
        proc.wait()


async def test_sigterm_publishes_devices_and_the_gateway_offline(
    broker: Mosquitto, tmp_path: Path, mqtt: MqttCollector
) -> None:
    port = free_port()
    proc = start_gateway(
        "--mqtt",
        broker.url,
        "--tcp",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(tmp_path),
        env={"CHARGEBRIDGE_GATEWAY_ID": "proc-gw"},
    )
    try:
        await mqtt.wait(f"{B}/gateways/proc-gw/state", lambda m: m["state"] == "online", timeout=20)
        device = FakeDevice()
        await device.connect(port)
        await device.send(0x22)
        await device.recv()
        await mqtt.wait(f"{B}/devices/04AB373B", lambda m: m["online"])
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0
        event = await mqtt.wait(
            f"{B}/devices/04AB373B/event/device", lambda m: m["type"] == "offline"
        )
        assert (event["reason"], event["gateway_id"]) == ("shutdown", "proc-gw")
        await mqtt.wait(f"{B}/devices/04AB373B", lambda m: not m["online"])
        await mqtt.wait(
            f"{B}/gateways/proc-gw/state",
            lambda m: m == {"state": "offline", "gateway_id": "proc-gw"},
        )
        await device.closed_by_peer()
    finally:
        proc.kill()
        proc.wait()


async def test_bad_option_stops_with_one_line() -> None:
    proc = start_gateway("--idle-timeout", "-5")
    assert await wait_exit(proc) == 2
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert err.count("\n") == 1 and "idle_timeout" in err and "Traceback" not in err


async def test_bad_environment_value_names_the_option() -> None:
    proc = start_gateway(env={"CHARGEBRIDGE_CARD_POLICY": "maybe"})
    assert await wait_exit(proc) == 2
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert err.count("\n") == 1 and "card_policy" in err
