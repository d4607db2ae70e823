"""The durable outbox with real processes: a gateway SIGKILLed during a broker outage loses
nothing it had received, a settlement is acknowledged to the device only once published (also
across a restart, and never published twice), and the outbox stays within its bound."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

import protocol as p
from bridge.app import OUTBOX_FILENAME, GatewayApp
from bridge.mqtt.outbox import SqliteOutbox
from tests.bridge.gateway.conftest import B
from tests.bridge.gateway.test_events import DEV, settlement
from tests.bridge.gateway.test_process import start_gateway, wait_exit
from tests.bridge.helpers import FakeDevice, MqttCollector, mqtt_collector
from tests.broker import Mosquitto, free_port

EVENTS = f"{B}/devices/+/event/#"


def heartbeat() -> bytes:
    return p.encode_payload(
        p.Heartbeat(voltage=2200, port_statuses=(0, 1), signal=9, temperature=90)
    )


async def wait_log(proc: subprocess.Popen[bytes], text: str, timeout: float = 20) -> None:
    """Read the gateway's stderr until a line contains `text` (its logs are the only sign of
    readiness while the broker is down)."""
    assert proc.stderr is not None
    stderr = proc.stderr

    def scan() -> None:
        for line in stderr:
            if text.encode() in line:
                return
        raise AssertionError(f"gateway exited before logging {text!r}")

    await asyncio.wait_for(asyncio.to_thread(scan), timeout)


class GatewayProcess:
    """`python -m bridge gateway` on a fixed port and state dir, restartable."""

    def __init__(self, broker: Mosquitto, state_dir: Path) -> None:
        self.port = free_port()
        self.args = (
            *("--mqtt", broker.url, "--tcp", f"127.0.0.1:{self.port}"),
            *("--state-dir", str(state_dir), "--gateway-id", "proc-gw"),
        )
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = start_gateway(*self.args)
        await wait_log(self.proc, "gateway running")

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await wait_exit(self.proc)

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


async def test_events_queued_during_an_outage_survive_a_gateway_kill_exactly_once_in_order(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with mqtt_collector(broker, EVENTS, persistent_id="outbox-watch"):
        pass  # the broker now queues our events for this session, across its restart
    gw = GatewayProcess(broker, tmp_path)
    try:
        await gw.start()
        device = FakeDevice()
        await device.connect(gw.port)
        broker.stop()
        mids = []
        for _ in range(30):
            mids.append(await device.send(0x22))
            await device.recv()  # answered while the broker is down
        # A resend publishes nothing; its reply comes after the loop turn that wrote the
        # events above to SQLite, so all 30 are on disk when we kill.
        await device.send(0x22, message_id=mids[-1])
        await device.recv()
        await gw.kill()
        await device.close()
        broker.start()
        await gw.start()
        async with mqtt_collector(broker, EVENTS, persistent_id="outbox-watch") as watcher:
            after = FakeDevice()
            await after.connect(gw.port)
            await after.send(0x22, message_id=1000)
            await after.recv()
            await watcher.wait(
                f"{DEV}/event/device",
                lambda m: m["type"] == "time_sync" and m["message_id"] == 1000,
            )
            syncs = [
                m["message_id"]
                for m in watcher.all(f"{DEV}/event/device")
                if m["type"] == "time_sync"
            ]
            assert syncs == [*mids, 1000]  # each once, in order, before the new ones
            await after.close()
    finally:
        gw.cleanup()


async def test_settlement_waits_for_the_broker_across_a_restart_and_is_published_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with mqtt_collector(broker, EVENTS, persistent_id="settle-watch"):
        pass
    gw = GatewayProcess(broker, tmp_path)
    try:
        await gw.start()
        device = FakeDevice()
        await device.connect(gw.port)
        broker.stop()
        await device.send(0x03, settlement())
        await device.expect_silence(1.5)  # not acknowledged: the broker does not have it
        await gw.kill()
        await device.close()

        await gw.start()  # the broker is still down
        device = FakeDevice()
        await device.connect(gw.port)
        await device.send(0x03, settlement())  # the device resends what was not acknowledged
        await device.expect_silence(1.5)
        broker.start()
        mid = await device.send(0x03, settlement())  # and again, with a new message id
        replies = {(await device.recv(timeout=40)).message_id for _ in range(2)}
        assert mid in replies  # both waiting resends answered once the event is published
        async with mqtt_collector(broker, EVENTS, persistent_id="settle-watch") as watcher:
            await watcher.wait(f"{DEV}/event/order", lambda m: m["type"] == "settled")
            # acknowledged resends after publication, also by a restarted gateway
            await device.send(0x03, settlement())
            await device.recv()
            await gw.kill()
            await device.close()
            await gw.start()
            device = FakeDevice()
            await device.connect(gw.port)
            await device.send(0x03, settlement())
            reply = await device.recv()
            assert (reply.command, reply.data) == (0x03, b"\x00")
            fence = await device.send(0x22)
            await device.recv()
            await watcher.wait(
                f"{DEV}/event/device",
                lambda m: m["type"] == "time_sync" and m["message_id"] == fence,
            )
            settled = [m for m in watcher.all(f"{DEV}/event/order") if m["type"] == "settled"]
            assert len(settled) == 1
            await device.close()
    finally:
        gw.cleanup()


# A flood on purpose: not the frame-rate limit's test (test_trust.py is).
@pytest.mark.gateway(max_queued_messages=20, frame_rate_limit=1e6, frame_rate_burst=10**9)
async def test_a_heartbeat_flood_keeps_the_outbox_at_its_bound_and_the_settlement(
    broker: Mosquitto, gateway: GatewayApp, device: FakeDevice, mqtt: MqttCollector
) -> None:
    client = gateway.mqtt
    assert client is not None
    await device.send(0x22)
    await device.recv()
    await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "time_sync")
    async with mqtt_collector(broker, EVENTS, persistent_id="bound-watch"):
        pass
    broker.stop()
    async with asyncio.timeout(10):
        await client.disconnected.wait()
    order = bytes.fromhex("AB" * 16)
    for i in range(200):
        await device.send(0x21, heartbeat())
        await device.recv()
        if i == 50:
            await device.send(0x03, settlement(order))
        assert client.queued <= 20
    assert client.queued == 20
    outbox = client.outbox
    assert isinstance(outbox, SqliteOutbox)
    outbox.flush()
    assert outbox.stored_count() == 20
    dropped = client.dropped
    assert dropped >= 200 * 3 - 20  # 2 port events and a heartbeat event per heartbeat
    broker.start()
    reply = await device.recv(timeout=40)  # the settlement survived the flood
    assert (reply.command, reply.data) == (0x03, b"\x00")
    async with mqtt_collector(broker, EVENTS, persistent_id="bound-watch") as watcher:
        event = await watcher.wait(f"{DEV}/event/order", lambda m: m["type"] == "settled")
        assert event["order_no"] == order.hex().upper()
    async with mqtt_collector(broker, f"{B}/gateways/test-gw/stats") as stats:
        # (the republished states after the reconnect may push a few more out)
        counted = await stats.wait(
            f"{B}/gateways/test-gw/stats", lambda m: m["events_dropped"] >= dropped
        )
        assert counted["events_dropped"] <= client.dropped
    assert (gateway.settings.state_dir / OUTBOX_FILENAME).exists()


async def test_a_second_gateway_on_the_same_state_dir_stops_with_one_line(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gw = GatewayProcess(broker, tmp_path)
    try:
        await gw.start()
        second = start_gateway(
            *("--mqtt", broker.url, "--tcp", "127.0.0.1:0", "--state-dir", str(tmp_path))
        )
        assert await wait_exit(second) == 1
        assert second.stderr is not None
        err = second.stderr.read().decode()
        assert "in use by another process" in err and "Traceback" not in err
    finally:
        gw.cleanup()
