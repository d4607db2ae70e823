"""Simulated devices over real TCP sockets and a real pseudo-terminal, against fake servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tty
from collections.abc import Iterator

import pytest

from bridge.simulator.fleet import Fleet, FleetConfig, SerialTarget, TcpTarget
from bridge.simulator.stats import FleetStats
from protocol import (
    ChargeControl,
    ChargeControlReply,
    Empty,
    Frame,
    Iccid,
    Locate,
    PortPowerReport,
    ResultReply,
    Sender,
    Settlement,
    StreamDecoder,
    decode_payload,
    encode_frame,
    encode_payload,
)
from tests.bridge.simulator.fake_server import FakeServer

ORDER = bytes.fromhex("0102030405060708090A0B0C0D0E0F10")


async def until(fleet: Fleet, predicate, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(within):
        await fleet.wait_until(predicate)


async def test_iccid_first_then_registration_heartbeat_and_time() -> None:
    async with FakeServer() as server:
        target = TcpTarget.parse(server.target)
        async with Fleet(FleetConfig(devices=1), target) as fleet:
            await until(fleet, lambda s: s.registered == 1 and s.heartbeats_acked == 1)
            await server.wait_for(lambda: server.of(0x22))
            assert fleet.devices[0].time_synced
        [conn] = server.connections
        assert conn.first.startswith(b"8986") and len(conn.first) == 20
        assert isinstance(conn.items[0], Iccid) and conn.iccid == fleet.devices[0].iccid
        frames = [item for item in conn.items if isinstance(item, Frame)]
        assert [f.command for f in frames[:3]] == [0x20, 0x21, 0x22]
        assert fleet.snapshot()["ack_latency_s"]["count"] >= 1


async def test_a_full_session_over_tcp_ends_with_an_acknowledged_settlement() -> None:
    async with FakeServer() as server:
        target = TcpTarget.parse(server.target)
        async with Fleet(FleetConfig(devices=1, speed=20_000), target) as fleet:
            await until(fleet, lambda s: s.registered == 1)
            pid = fleet.devices[0].physical_id
            fleet.plug(0, 1)
            server.send(pid, 77, 0x82, ChargeControl(0, 500, 1, 1, 0, ORDER))
            await until(fleet, lambda s: s.settlements_acked == 1, within=30)
        [reply] = server.of(0x82, pid)
        body = decode_payload(0x82, reply.data, Sender.DEVICE)
        assert isinstance(body, ChargeControlReply)
        assert (reply.message_id, body.result, body.port, body.order_no) == (77, 0, 1, ORDER)
        reports = [decode_payload(0x06, f.data, Sender.DEVICE) for f in server.of(0x06, pid)]
        [record] = {decode_payload(0x03, f.data, Sender.DEVICE) for f in server.of(0x03, pid)}
        assert isinstance(record, Settlement) and record.stop_reason == 1
        assert record.order_no == ORDER and record.port == 1
        assert reports and all(isinstance(r, PortPowerReport) for r in reports)
        energies = [r.energy for r in reports]  # type: ignore[attr-defined]
        assert energies == sorted(energies) and record.energy >= energies[-1] > 0
        assert fleet.stats.energy_reported_wh == record.energy * 10


async def test_one_thousand_devices_in_one_process_all_register() -> None:
    async with FakeServer() as server:
        target = TcpTarget.parse(server.target)
        config = FleetConfig(devices=1000, kind="mixed", ramp_per_s=10_000)
        async with Fleet(config, target) as fleet:
            await until(fleet, lambda s: s.registered == 1000, within=60)
            assert fleet.stats.connected == 1000
        assert len(server.registered) == 1000
        assert {pid >> 24 for pid in server.registered} == {0x04, 0x05, 0x06}


async def test_devices_reconnect_and_register_again_after_the_server_drops_them() -> None:
    async with FakeServer() as server:
        target = TcpTarget.parse(server.target)
        async with Fleet(FleetConfig(devices=3, reconnect_min_s=0.05), target) as fleet:
            await until(fleet, lambda s: s.registered == 3)
            for conn in server.connections:
                conn.writer.close()
            await until(fleet, lambda s: s.disconnects == 3)
            await until(fleet, lambda s: s.connects == 6 and s.registered == 3)
        assert len(server.of(0x20)) == 6


async def test_reconnects_with_back_off_while_nothing_listens() -> None:
    async with FakeServer() as server:
        port = server.port
    config = FleetConfig(devices=2, reconnect_min_s=0.01, reconnect_max_s=0.05)
    async with Fleet(config, TcpTarget("127.0.0.1", port)) as fleet:
        await until(fleet, lambda s: s.connect_failures >= 10)
        assert fleet.stats.connected == 0


async def test_reboot_answers_then_reconnects() -> None:
    async with FakeServer() as server:
        target = TcpTarget.parse(server.target)
        async with Fleet(FleetConfig(devices=1, speed=100), target) as fleet:
            await until(fleet, lambda s: s.registered == 1)
            pid = fleet.devices[0].physical_id
            server.send(pid, 9, 0x87, Empty())
            await until(fleet, lambda s: s.connects == 2 and s.registered == 1)
        [reply] = server.of(0x87)
        assert decode_payload(0x87, reply.data, Sender.DEVICE) == ResultReply(0)
        assert len(server.connections) == 2 and server.connections[1].iccid is not None


def test_stats_report_wall_clock_latency_percentiles() -> None:
    stats = FleetStats()
    for ms in range(1, 101):
        stats.ack_latency(ms * 600 / 1000)  # device seconds at speed 600
    report = stats.as_dict(time_scale=600)
    assert report["ack_latency_s"]["count"] == 100
    assert report["ack_latency_s"]["p50"] == pytest.approx(0.050, abs=0.002)
    assert report["ack_latency_s"]["max"] == pytest.approx(0.1)


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


class Bus:
    """The gateway's end of a pseudo-terminal: decodes what the devices write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.decoder = StreamDecoder()
        self.items: list[object] = []
        self.arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        self.items.extend(self.decoder.feed(os.read(self.fd, 4096)))
        self.arrived.set()

    def frames(self, command: int) -> list[Frame]:
        return [i for i in self.items if isinstance(i, Frame) and i.command == command]

    async def wait_for(self, predicate) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(10):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()

    def send(self, pid: int, mid: int, command: int, payload: object) -> None:
        os.write(self.fd, encode_frame(pid, mid, command, encode_payload(payload)))  # type: ignore[arg-type]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)


async def test_devices_share_one_serial_line_and_answer_only_their_own_frames(
    pty_pair: tuple[int, str],
) -> None:
    master, path = pty_pair
    bus = Bus(master)
    try:
        config = FleetConfig(devices=3, kind="10")
        async with Fleet(config, SerialTarget(path)) as fleet:
            pids = [d.physical_id for d in fleet.devices]
            await bus.wait_for(lambda: {f.physical_id for f in bus.frames(0x20)} == set(pids))
            assert not any(isinstance(i, Iccid) for i in bus.items)  # no SIM on the bus
            for f in bus.frames(0x20):
                bus.send(f.physical_id, f.message_id, 0x20, ResultReply(0))
            await until(fleet, lambda s: s.registered == 3)
            bus.send(pids[1], 5, 0x96, Locate(3))
            await bus.wait_for(lambda: bus.frames(0x96))
            assert [f.physical_id for f in bus.frames(0x96)] == [pids[1]]
    finally:
        bus.close()


async def test_simulate_command_prints_a_json_summary() -> None:
    async with FakeServer() as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "simulate",
            "--devices",
            "20",
            "--connect",
            server.target,
            "--speed",
            "600",
            "--duration",
            "1.5",
            "--kind",
            "mixed",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["devices"] == 20 and summary["registered"] == 20
    assert summary["heartbeats_acked"] >= 20
    assert b"registered" in err  # progress lines go to stderr


async def test_simulate_command_rejects_a_bad_target() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "simulate",
        "--connect",
        "nowhere",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2 and b"HOST:PORT" in err


def _interruptible() -> None:
    """In the child: SIGINT as a terminal's Ctrl-C finds it. A suite run in the background
    of a non-interactive shell (`bash .ci/run &`) inherits SIGINT ignored, and Python keeps
    an ignored SIGINT ignored, so the simulator would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_stops_cleanly_and_still_prints_the_summary() -> None:
    async with FakeServer() as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "simulate",
            "--devices",
            "3",
            "--connect",
            server.target,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_interruptible,
        )
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"registered 3" not in await proc.stderr.readline():
                pass
            proc.send_signal(signal.SIGINT)
            out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    summary = json.loads(out)
    assert summary["registered"] == 3 and summary["connected"] == 3


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:7054", "127.0.0.1", 7054),
        ("[::1]:9", "::1", 9),
        ("gw.example:1", "gw.example", 1),
    ],
)
def test_tcp_target_parses_host_and_port(text: str, host: str, port: int) -> None:
    assert TcpTarget.parse(text) == TcpTarget(host, port)


@pytest.mark.parametrize("text", ["7054", "host:", ":7054", "host:0", "host:70000", "host:x"])
def test_tcp_target_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        TcpTarget.parse(text)


def test_fleet_config_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        FleetConfig(kind="12")
    assert [FleetConfig(kind="mixed").ports_of(i) for i in range(5)] == [2, 2, 2, 10, 16]


async def test_devices_connect_from_the_given_source_addresses() -> None:
    async with FakeServer() as server:
        config = FleetConfig(devices=4, local_hosts=("127.0.0.2", "127.0.0.3"))
        async with Fleet(config, TcpTarget.parse(server.target)) as fleet:
            await until(fleet, lambda s: s.registered == 4)
        peers = [c.writer.get_extra_info("peername")[0] for c in server.connections]
        assert sorted(peers) == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]


async def test_a_server_that_drops_at_once_does_not_cause_a_reconnect_storm() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = FleetConfig(devices=5, reconnect_min_s=0.02, reconnect_max_s=10.0)
    try:
        async with Fleet(config, TcpTarget("127.0.0.1", port)) as fleet:
            await until(fleet, lambda s: s.disconnects >= 5 * 6)
            # Exponential back-off: 6 rounds wait >= (1 + 2 + 4 + 8 + 16) x 0.02 x 0.5 s (jitter);
            # restarting the back-off on every accepted connection would take about 0.1 s.
            assert fleet.snapshot()["elapsed_s"] >= 0.31
    finally:
        server.close()
        await server.wait_closed()
