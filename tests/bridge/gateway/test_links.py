"""Links: RS-485 over a real pseudo-terminal, connection replacement, idle timeout, junk."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

import protocol as p
from bridge.app import GatewayApp
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import (
    PID,
    FakeDevice,
    MqttCollector,
    PtyLine,
    gateway_settings,
    running_gateway,
    tcp_port,
)
from tests.broker import Mosquitto

DEV = f"{B}/devices/04AB373B"
PID_B = 0x0500000A  # a ten-port pile on the same bus


async def test_two_devices_on_one_serial_line(
    broker: Mosquitto, tmp_path: Path, mqtt: MqttCollector
) -> None:
    line = PtyLine()
    settings = gateway_settings(broker, tmp_path, tcp=["none"], serial=[line.path])
    try:
        async with running_gateway(settings) as app:
            await mqtt.wait(f"{B}/gateways/test-gw/state", lambda m: m["state"] == "online")
            async with asyncio.timeout(10):
                await app.serial_links[0].connected.wait()
            line.send(PID, 5, 0x22)
            line.send(PID_B, 5, 0x22)
            replies = {
                (f.physical_id, f.message_id, f.command)
                for f in [await line.recv(), await line.recv()]
            }
            assert replies == {(PID, 5, 0x22), (PID_B, 5, 0x22)}
            a = await mqtt.wait(DEV, lambda m: m["online"])
            b = await mqtt.wait(f"{B}/devices/0500000A", lambda m: m["online"])
            assert (a["device_kind"], b["device_kind"]) == ("dual_socket", "ten_port")
            # a command to one of them goes out on the line with its physical id
            await mqtt.client.publish(
                f"{B}/devices/0500000A/request/locate", b'{"seconds": 3}', qos=1
            )
            frame = await line.recv()
            assert (frame.physical_id, frame.command, frame.data) == (PID_B, 0x96, b"\x03")
            line.send(PID_B, frame.message_id, 0x96, b"\x00")
            response = await mqtt.wait(f"{B}/devices/0500000A/response/locate")
            assert response["ok"] is True
        # stopping the gateway publishes both devices offline, for the right reason
        for device in ("04AB373B", "0500000A"):
            event = await mqtt.wait(
                f"{B}/devices/{device}/event/device", lambda m: m["type"] == "offline"
            )
            assert event["reason"] == "shutdown"
    finally:
        line.close()


async def test_second_connection_replaces_the_first(
    gateway: GatewayApp, mqtt: MqttCollector
) -> None:
    old, new = FakeDevice(), FakeDevice()
    await old.connect(tcp_port(gateway))
    await old.send(0x22)
    await old.recv()
    await new.connect(tcp_port(gateway))
    await new.send(0x22)
    await new.recv()
    await old.closed_by_peer()  # the stale connection is dropped
    await mqtt.client.publish(f"{DEV}/request/query_status", b"{}", qos=1)
    assert (await new.recv()).command == 0x81
    assert (await mqtt.wait(f"{DEV}/response/query_status"))["ok"] is True
    devents = [m["type"] for m in mqtt.all(f"{DEV}/event/device")]
    assert devents.count("online") == 1 and "offline" not in devents
    await new.close()


@pytest.mark.gateway(idle_timeout=0.5)
async def test_idle_connection_is_closed_and_device_offline(
    device: FakeDevice, mqtt: MqttCollector
) -> None:
    await device.send(0x22)
    await device.recv()
    await device.closed_by_peer(timeout=5)
    event = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "offline")
    assert event["reason"] == "idle"
    assert (await mqtt.wait(DEV, lambda m: not m["online"]))["online"] is False


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_junk_and_a_flood_of_junk_connections(
    gateway: GatewayApp, mqtt: MqttCollector
) -> None:
    port = tcp_port(gateway)
    junk = os.urandom(64_000) + b"DNY\x0a\x00" + bytes(9) + b"DNY\xff\xff" + b"DN"
    writers: list[asyncio.StreamWriter] = []

    async def junk_client(i: int) -> None:
        # random bytes, a frame with a bad checksum, an absurd length, half a header
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(5):
            writer.write(junk)
            await writer.drain()
        if i % 2:
            writers.append(writer)  # stays open, mid-frame
        else:
            writer.close()

    before = rss_bytes()
    await asyncio.gather(*(junk_client(i) for i in range(200)))  # 64 MB of junk
    device = FakeDevice()
    await device.connect(port)
    mid = await device.send(0x22)
    assert (await device.recv()).message_id == mid
    # the 100 closed junk connections are gone, the 100 open ones and the device remain
    stats = await mqtt.wait(
        f"{B}/gateways/test-gw/stats",
        lambda m: m["garbage_bytes"] > 60_000_000 and m["connections"] == 101 and m["frames_in"],
    )
    assert stats["decode_errors"] >= 200  # each junk client sent bad frames
    # nothing of the junk is kept: far less memory than the 64 MB received
    assert rss_bytes() - before < 32_000_000
    for w in writers:
        w.close()
    await device.close()


# A flood on purpose: not the frame-rate limit's test (test_trust.py is).
@pytest.mark.gateway(max_write_buffer=4096, frame_rate_limit=1e6, frame_rate_burst=10**9)
async def test_peer_that_never_reads_is_dropped(gateway: GatewayApp, mqtt: MqttCollector) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", tcp_port(gateway)))
    _, writer = await asyncio.open_connection(sock=sock)
    # One resent frame: each copy is answered again but publishes nothing.
    burst = p.encode_frame(PID, 1, 0x22) * 20_000
    try:
        async with asyncio.timeout(20):
            for _ in range(50):  # up to 14 MB of time requests, replies never read
                writer.write(burst)
                await writer.drain()
    except (ConnectionError, OSError):
        pass  # dropped while we were still writing
    stats = await mqtt.wait(f"{B}/gateways/test-gw/stats", lambda m: m["connections_dropped"] >= 1)
    assert stats["connections_dropped"] >= 1
    writer.close()


@pytest.mark.gateway(max_connections_per_ip=3)
async def test_connections_per_ip_are_limited(gateway: GatewayApp, mqtt: MqttCollector) -> None:
    devices = [FakeDevice(PID + i) for i in range(5)]
    for d in devices:
        await d.connect(tcp_port(gateway))
    stats = await mqtt.wait(f"{B}/gateways/test-gw/stats", lambda m: m["connections_dropped"] == 2)
    assert stats["connections"] == 3
    for d in devices:
        await d.close()


async def test_serial_link_reopens_a_port_that_disappears_and_returns(
    broker: Mosquitto, tmp_path: Path, mqtt: MqttCollector
) -> None:
    # A stable name (like /dev/serial/by-id/...) pointing at whichever pty currently exists.
    link_path = tmp_path / "ttyRS485"
    first = PtyLine()
    link_path.symlink_to(first.path)
    settings = gateway_settings(broker, tmp_path, tcp=["none"], serial=[str(link_path)])
    second: PtyLine | None = None
    try:
        async with running_gateway(settings) as app:
            serial = app.serial_links[0]
            async with asyncio.timeout(10):
                await serial.connected.wait()
            first.send(PID, 1, 0x22)
            await first.recv()
            await mqtt.wait(DEV, lambda m: m["online"])
            first.close()  # the adapter is unplugged
            event = await mqtt.wait(f"{DEV}/event/device", lambda m: m["type"] == "offline")
            assert event["reason"] == "closed"
            second = PtyLine()  # ... and plugged in again
            link_path.unlink()
            link_path.symlink_to(second.path)
            await mqtt.wait(DEV, lambda m: not m["online"])
            assert not serial.connected.is_set()  # cleared as the line went away
            async with asyncio.timeout(15):
                await serial.connected.wait()  # set again once reopened (back-off 1 s)
            second.send(PID, 2, 0x22)
            reply = await second.recv()
            assert (reply.physical_id, reply.message_id) == (PID, 2)
            await mqtt.wait(DEV, lambda m: m["online"])
    finally:
        first.close()
        if second is not None:
            second.close()


async def test_one_connection_cannot_claim_unbounded_physical_ids(
    gateway: GatewayApp, mqtt: MqttCollector
) -> None:
    device = FakeDevice()
    await device.connect(tcp_port(gateway))
    for i in range(300):
        await device.send(0x22, physical_id=0x04000000 + i, message_id=1)
    answered = {(await device.recv()).physical_id for _ in range(256)}
    assert len(answered) == 256
    await device.expect_silence(0.5)  # ids beyond the 256th were ignored
    stats = await mqtt.wait(f"{B}/gateways/test-gw/stats", lambda m: m["frames_in"] == 300)
    assert stats["devices_online"] == 256
    await device.close()
