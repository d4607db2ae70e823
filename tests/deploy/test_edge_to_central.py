"""Edge to central (docs/scaling.md): gateway -> site Mosquitto -> bridge -> central Mosquitto
-> charging service, two real brokers started from the shipped configuration.

The site broker runs mosquitto.conf plus deploy/mosquitto/site-bridge.conf, the central broker
mosquitto.conf plus tls.conf with the ACL's `site-bridge` user; only addresses, ports, paths
and the bridge's reconnect timings are rewritten. The uplink is a TCP relay between the
bridge and the central broker's TLS listener, so it can be cut while both brokers, the
gateway and the service stay up, as when a site's line goes down. Simulated chargers settle
sessions during a 30 s cut; afterwards the central charging service has every settlement
exactly once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.demo.driver import DemoDriver
from bridge.mqtt.client import MqttClient, MqttSettings
from bridge.mqtt.topics import Topics
from bridge.simulator.device import UserBehaviour
from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from protocol.ids import device_id
from tests.bridge.helpers import MqttCollector, lasting_collector
from tests.broker import DEPLOY, USERS, Mosquitto, _set, certificates, free_port
from tests.faults.system import Role

pytestmark = pytest.mark.slow

SITE_BRIDGE = DEPLOY / "site-bridge.conf"
UPLINK_USER = "site-bridge"
UPLINK_PASSWORD = "site-bridge-test-password"
CUT_S = 30.0  # the outage issue 13 asks for
T = Topics()


def render_site_bridge(uplink_port: int) -> str:
    """The shipped bridge configuration aimed at the test's uplink, with the test CA and
    password, and reconnects within 2 s (the shipped 2-30 s back-off would eat the time
    budget after a 30 s cut)."""
    text = SITE_BRIDGE.read_text()
    for key, value in (
        ("address", f"127.0.0.1:{uplink_port}"),
        ("bridge_cafile", str(certificates() / "ca.crt")),
        ("remote_password", UPLINK_PASSWORD),
        ("restart_timeout", "1 2"),
        ("keepalive_interval", "5"),
    ):
        assert f"\n{key} " in text, f"site-bridge.conf has no {key} line"
        text = _set(text, key, value)
    return text


def central_passwords(path: Path) -> Path:
    """The test users plus the bridge's user, made with the shipped make-users.sh."""
    specs = [f"{user}:{password}" for user, password in USERS.items()]
    specs.append(f"{UPLINK_USER}:{UPLINK_PASSWORD}")
    subprocess.run([DEPLOY / "make-users.sh", path, *specs], check=True, capture_output=True)
    return path


class Uplink:
    """The site's line to the central broker: a TCP relay that can be cut (every connection
    dropped, new ones refused) and restored on the same port."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = {writer, up_writer}
        self._writers |= pair

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= pair


@dataclass
class Edge:
    site: Mosquitto
    central: Mosquitto
    uplink_port: int  # where site-bridge.conf points; the test runs the relay there


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    """The site broker bridging to the central broker through an uplink not yet started."""
    central = Mosquitto(
        tmp_path / "central", tls=True, passwd=central_passwords(tmp_path / "central.passwd")
    )
    uplink_port = free_port()
    site = Mosquitto(tmp_path / "site", extra_conf=render_site_bridge(uplink_port))
    central.start()
    try:
        site.start()
        try:
            yield Edge(site, central, uplink_port)
        finally:
            site.close()
    finally:
        central.close()


def settled_orders(mqtt: MqttCollector) -> list[str]:
    """The order numbers of every `settled` event received, duplicates included."""
    return [
        m.json()["order_no"]
        for m in mqtt.messages
        if m.topic.endswith("/event/order") and m.payload and m.json()["type"] == "settled"
    ]


def latest_sessions(mqtt: MqttCollector) -> dict[str, dict[str, Any]]:
    """Each session's state with the highest `version` seen."""
    latest: dict[str, dict[str, Any]] = {}
    for m in mqtt.messages:
        if m.topic.startswith(f"{T.base}/sessions/") and m.payload:
            session = m.json()
            known = latest.get(session["session_id"])
            if known is None or session.get("version", 0) >= known.get("version", 0):
                latest[session["session_id"]] = session
    return latest


@asynccontextmanager
async def driving(central: Mosquitto) -> AsyncIterator[DemoDriver]:
    """The demo's operator at the central broker: starts a session through the charging
    service wherever a user plugged in."""
    mqtt = MqttClient(MqttSettings(url=central.url, client_id=""))
    driver = DemoDriver(mqtt, T)
    mqtt.subscriptions = driver.subscriptions
    async with mqtt:
        task = asyncio.create_task(driver.run())
        try:
            yield driver
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


async def v5_reply_round_trip(central: Mosquitto, device: str) -> aiomqtt.Message:
    """A device command from the central broker with an MQTT v5 response topic and
    correlation data; the gateway's answer, as it arrives at the central broker."""
    reply_topic = f"{T.base}/replies/edge-test"
    async with central.client("operator", protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(reply_topic, qos=1)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = reply_topic
        properties.CorrelationData = b"edge-42"
        await client.publish(
            T.device_request(device, "query_status"),
            json.dumps({"request_id": "edge-v5"}),
            qos=1,
            properties=properties,
        )
        async with asyncio.timeout(20):
            return await anext(client.messages)


@pytest.mark.timeout(300)  # a 30 s cut and 40 s waits: ~60 s idle, ~85 s on a loaded box
async def test_settlements_during_a_30s_uplink_cut_reach_the_central_service_once(
    edge: Edge, tmp_path: Path
) -> None:
    began = time.monotonic()
    site, central = edge.site, edge.central
    assert central.tls_port is not None
    uplink = Uplink(edge.uplink_port, central.tls_port)
    await uplink.start()
    tcp_port = free_port()
    gateway = Role(
        "gateway",
        [
            *("--mqtt", site.url, "--tcp", f"127.0.0.1:{tcp_port}"),
            *("--state-dir", str(tmp_path / "gateway"), "--gateway-id", "edge-gw"),
            *("--stats-interval", "1", "--log-level", "warning"),
        ],
        tmp_path / "gateway.log",
    )
    service = Role(
        "service",
        [
            *("--mqtt", central.url, "--state-dir", str(tmp_path / "service")),
            *("--service-client-id", "edge-service", "--stats-interval", "0.2"),
            *("--log-level", "warning"),
        ],
        tmp_path / "service.log",
    )
    config = FleetConfig(
        devices=8,
        kind="2",
        speed=2000,
        seed=13,
        auto_plug=True,
        users=UserBehaviour(plug_mean_s=300.0, patience_s=3600.0, card_share=0.0),
    )
    gateway.start()
    service.start()
    try:
        async with lasting_collector(central, f"{T.base}/#", client_id="edge-watch") as watch:
            await watch.latest(T.charging_stats, lambda s: True, timeout=30)  # service current
            async with Fleet(config, TcpTarget("127.0.0.1", tcp_port)) as fleet:
                async with driving(central):
                    # Every charger's state crossed the bridge.
                    chargers = {device_id(dev.physical_id) for dev in fleet.devices}
                    for dev in fleet.devices:
                        await watch.wait(
                            T.device(device_id(dev.physical_id)), lambda d: d["online"], timeout=30
                        )
                    reply = await v5_reply_round_trip(
                        central, device_id(fleet.devices[0].physical_id)
                    )
                    assert json.loads(reply.payload)["request_id"] == "edge-v5"
                    assert reply.properties.CorrelationData == b"edge-42"  # type: ignore[union-attr]

                    # Load: sessions started from the central broker, charging at the site.
                    async with asyncio.timeout(40):
                        await fleet.wait_until(
                            lambda s: (
                                s.settlements_acked >= 3
                                and s.sessions_started - s.sessions_completed >= 4
                            )
                        )
                    await uplink.cut()
                    cut_at = time.monotonic()
                    acked_at_cut = fleet.stats.settlements_acked
                    # Settlements the chargers had sent but not yet seen answered at the cut may
                    # have crossed the uplink before it went down (the answer follows the PUBACK).
                    unanswered_at_cut = sum(len(dev.settlements) for dev in fleet.devices)
                    # The running sessions settle; the site broker acknowledges (the chargers are
                    # answered) and queues the events for the central broker.
                    async with asyncio.timeout(CUT_S):
                        await fleet.wait_until(lambda s: s.settlements_acked >= acked_at_cut + 4)
                    await asyncio.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))  # the outage
                    settled_during_cut = fleet.stats.settlements_acked - acked_at_cut
                    # Settlements acknowledged before the cut may still have been on their way;
                    # none of those made during it can have arrived.
                    crossed = len(set(settled_orders(watch)))
                    assert crossed <= acked_at_cut + unanswered_at_cut, "the cut leaked"
                    reconnects = uplink.connections
                    await uplink.start()

                    # Back up: the queue drains and sessions start from the centre again (the
                    # start requests queued for the site meanwhile, then new ones).
                    started_at_restore = fleet.stats.sessions_started
                    async with asyncio.timeout(40):
                        await fleet.wait_until(
                            lambda s: s.sessions_started >= started_at_restore + 3
                        )
                    assert uplink.connections > reconnects
                # No new starts: wait until every session the chargers started is settled and
                # acknowledged, then stop them, so that no settlement is on its way meanwhile.
                async with asyncio.timeout(40):
                    await fleet.wait_until(lambda s: s.sessions_started == s.settlements_acked)
                await fleet.stop()
                reported = fleet.snapshot()

            settlements = reported["settlements_acked"]
            energy_kwh = reported["energy_reported_kwh"]
            try:
                stats = await watch.latest(
                    T.charging_stats,
                    lambda s: s["sessions_completed"] >= settlements,
                    timeout=30,
                )
            except TimeoutError:
                raise AssertionError(
                    f"stats {watch.all(T.charging_stats)[-1:]} never counted {settlements}\n"
                    f"service log:\n{service.log()}\ngateway log:\n{gateway.log()}"
                ) from None
            sessions = latest_sessions(watch)
            # ... and is retained there, for whoever subscribes later.
            async with central.client("monitor") as late:
                await late.subscribe(T.device("+"), qos=1)
                retained: set[str] = set()
                async with asyncio.timeout(10):
                    async for message in late.messages:
                        assert message.retain, message.topic
                        retained.add(str(message.topic).rsplit("/", 1)[1])
                        if retained >= chargers:
                            break
    finally:
        gateway.close()
        service.close()

    completed = {k: s for k, s in sessions.items() if s["status"] == "completed"}
    orders = settled_orders(watch)
    print(
        f"edge-to-central: {settlements} settlements ({settled_during_cut} during the cut), "
        f"{len(completed)} sessions completed, {len(orders)} settled events "
        f"({len(orders) - len(set(orders))} redelivered), {energy_kwh} kWh, "
        f"{time.monotonic() - began:.1f} s"
    )
    assert stats["sessions_completed"] == settlements
    assert abs(stats["total_energy_delivered_kwh"] - energy_kwh) < 1e-6
    assert stats["processing_errors"] == 0
    assert len(completed) == settlements
    assert set(completed) == set(orders)
    assert abs(round(sum(s["energy_kwh"] for s in completed.values()), 3) - energy_kwh) < 1e-6
