"""`chargebridge run` on its embedded broker and `chargebridge demo`, as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt

from protocol import (
    ChargeControl,
    ChargeControlReply,
    Registration,
    ResultReply,
    Sender,
    decode_payload,
    encode_payload,
)
from tests.bridge.helpers import FakeDevice, MqttCollector
from tests.broker import free_port

DEVICE_ID = "04AB373B"


async def read_until(stream: asyncio.StreamReader, *needles: str, timeout: float = 30) -> str:
    """Read lines until every needle has been seen; returns what was read."""
    seen, text = set(), ""
    async with asyncio.timeout(timeout):
        while len(seen) < len(needles):
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"stream ended before {needles}; got:\n{text}")
            text += line
            seen |= {n for n in needles if n in line}
    return text


@asynccontextmanager
async def chargebridge(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_run_starts_the_embedded_broker_and_charges_through_it(tmp_path: Path) -> None:
    broker_port, device_port = free_port(), free_port()
    async with chargebridge(
        "run",
        "--broker-port",
        str(broker_port),
        "--tcp",
        f"127.0.0.1:{device_port}",
        "--state-dir",
        str(tmp_path),
        "--gateway-id",
        "t",
    ) as proc:
        assert proc.stderr is not None
        startup = await read_until(
            proc.stderr, "embedded MQTT broker", "gateway running", "charging service ready"
        )
        assert f"mosquitto_sub -h 127.0.0.1 -p {broker_port} -t 'chargebridge/#' -v" in startup

        async with aiomqtt.Client("127.0.0.1", broker_port) as client:
            mqtt = MqttCollector(client)
            await client.subscribe("chargebridge/#", qos=1)
            pump = asyncio.create_task(mqtt._pump())
            device = FakeDevice()
            await device.connect(device_port)
            mid = await device.send(0x20, encode_payload(Registration(126, 2, 0, 0x21)))
            reply = await device.recv()
            assert (reply.command, reply.message_id) == (0x20, mid)
            assert decode_payload(0x20, reply.data, Sender.SERVER) == ResultReply(0)
            state = await mqtt.wait(
                f"chargebridge/devices/{DEVICE_ID}", lambda d: d["port_count"] == 2
            )
            assert state["online"] is True and state["firmware"] is not None

            request = {"request_id": "r1", "device_id": DEVICE_ID, "port": 2}
            await client.publish("chargebridge/charging/request/start", json.dumps(request), 1)
            frame = await device.recv()
            start = decode_payload(0x82, frame.data, Sender.SERVER)
            assert isinstance(start, ChargeControl)
            assert (start.port, start.command) == (1, 1)  # wire port 1 is port 2
            accept = ChargeControlReply(0, start.order_no, 1, 0)
            await device.send(0x82, encode_payload(accept), message_id=frame.message_id)
            response = await mqtt.wait("chargebridge/charging/response/start")
            assert response["ok"] is True and response["request_id"] == "r1"
            session = response["session"]
            assert session["status"] == "charging"
            assert session["order_no"] == start.order_no.hex().upper()
            await device.close()
            pump.cancel()

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0


async def test_demo_shows_completed_sessions_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    async with chargebridge(
        "demo",
        "--devices",
        "3",
        "--speed",
        "1500",
        "--broker-port",
        str(free_port()),
        "--state-dir",
        str(tmp_path),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        # Not a terminal: plain lines, one per completed session plus a periodic summary.
        shown = await read_until(proc.stdout, "chargebridge demo: 3 simulated chargers")
        shown += await read_until(proc.stdout, "completed: device", timeout=60)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            rest, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    out = shown + rest.decode()
    assert "Traceback" not in err.decode()
    assert " ERROR " not in err.decode(), err.decode()
    assert "chargers 3/3 online" in out
    assert "sessions completed" in out
    completed = [line for line in out.splitlines() if "completed: device" in line]
    assert completed and all(" kWh in " in line for line in completed)


async def test_demo_at_full_speed_keeps_up_with_its_chargers(tmp_path: Path) -> None:
    """The README's `demo` (5 chargers, x600) on the embedded broker: every settlement the
    simulator sent is acknowledged and the service completes what the simulator did. The
    amqtt broker once fell behind (amqtt spent event-loop turns per message in the shared
    loop): PUBACKs trickled, so settlements went unacknowledged (1 of 38) and the view froze.
    Only the last few frames can be in transit when the demo stops: one per charger."""
    devices = 5
    async with chargebridge(
        "demo",
        "--devices",
        str(devices),
        "--duration",
        "30",
        "--broker-port",
        str(free_port()),
        "--state-dir",
        str(tmp_path),
    ) as proc:
        async with asyncio.timeout(180):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert " ERROR " not in err.decode(), err.decode()
    assert "could not flush" not in err.decode(), err.decode()
    # The simulated chargers run x600: a real charger's frame-rate limit must not throttle them.
    assert "rate_limited" not in err.decode() and "frame rate" not in err.decode(), err.decode()
    match = re.search(
        r"simulator: (\d+)/(\d+) chargers registered, (\d+) sessions completed, "
        r"(\d+)/(\d+) settlement frames acknowledged",
        text,
    )
    assert match, text
    registered, _, simulated, acked, sent = map(int, match.groups())
    assert registered == devices
    assert sent >= 10, text  # the demo ran long enough to mean something
    assert acked >= sent - devices, text
    completed = sum("completed: device" in line for line in text.splitlines())
    assert completed >= simulated - devices, text
