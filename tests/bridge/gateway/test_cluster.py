"""Two gateway processes and one charging service on one base topic (API.md v1.1 §5, §7;
docs/scaling.md): requests answered once, a charger handed over from one gateway to the
other without a stale `offline`, and a gateway killed with SIGKILL whose chargers the survivor
shows offline. Real Mosquitto, real processes, real TCP; scripted chargers where a test must
control every frame (tests/faults/system.py), the simulator's fleet where it needs many.

Silence is proven by ordering, never by waiting: a gateway's stats (`requests_left_to_peers`,
`chargers_handed_over`, `connections`) are published after the decision they count, on the
same MQTT connection as anything that gateway would have published instead, so once the
collector has those stats it has everything the gateway published before them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from protocol.ids import device_id
from tests.bridge.helpers import MqttCollector, lasting_collector
from tests.broker import Mosquitto, free_port
from tests.faults.system import KEEPALIVE_S, Charger, Ledger, Role

pytestmark = pytest.mark.slow

B = "chargebridge"
GW_A, GW_B = "gw-a", "gw-b"  # gw-a, the smaller id, is the elected responder while alive


class Cluster:
    """Gateways `gw-a` and `gw-b` (each its own TCP port and state dir) and one service."""

    def __init__(self, broker: Mosquitto, workdir: Path, mqtt: MqttCollector) -> None:
        self.broker = broker
        self.mqtt = mqtt
        self.ports = {GW_A: free_port(), GW_B: free_port()}
        common = ["--mqtt", broker.url, "--mqtt-keepalive-s", str(KEEPALIVE_S)]
        common += ["--stats-interval", "0.2"]
        self.gateways = {
            gid: Role(
                "gateway",
                [
                    *common,
                    "--gateway-id",
                    gid,
                    "--tcp",
                    f"127.0.0.1:{port}",
                    "--state-dir",
                    str(workdir / gid),
                    "--command-timeout-s",
                    "30",
                ],
                workdir / f"{gid}.log",
            )
            for gid, port in self.ports.items()
        }
        self.service = Role(
            "service",
            [
                *common,
                "--state-dir",
                str(workdir / "service"),
                "--service-client-id",
                "cluster-service",
                "--request-timeout-s",
                "40",
            ],
            workdir / "service.log",
        )

    def logs(self) -> str:
        return "\n".join(f"--- {gid}:\n{role.log()}" for gid, role in self.gateways.items())

    async def gateway_stats(self, gid: str, **at_least: int) -> dict[str, Any]:
        """The newest stats of `gid` with every counter at least as given (waits for it)."""
        stats: dict[str, Any] = await self.mqtt.latest(
            f"{B}/gateways/{gid}/stats",
            lambda m: all(m.get(k, 0) >= v for k, v in at_least.items()),
            timeout=30,
        )
        return stats

    async def request(self, device: str, command: str, body: dict[str, Any]) -> None:
        async with self.broker.client("operator") as op:
            await op.publish(f"{B}/devices/{device}/request/{command}", json.dumps(body), qos=1)

    def responses(self, device: str, command: str, request_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.mqtt.all(f"{B}/devices/{device}/response/{command}")
            if r.get("request_id") == request_id
        ]

    def states(self, device: str) -> list[dict[str, Any]]:
        return self.mqtt.all(f"{B}/devices/{device}")

    async def charger_on(self, gid: str, charger: Charger) -> dict[str, Any]:
        """`charger` connects to `gid`; returns the device state naming it there."""
        await charger.connect(self.ports[gid])
        await charger.online()
        state: dict[str, Any] = await self.mqtt.latest(
            f"{B}/devices/{charger.id}", lambda m: m["online"] and m["gateway_id"] == gid
        )
        return state


@asynccontextmanager
async def running_cluster(broker: Mosquitto, workdir: Path) -> AsyncIterator[Cluster]:
    async with lasting_collector(broker, f"{B}/#", client_id="cluster-watch") as mqtt:
        cluster = Cluster(broker, workdir, mqtt)
        roles = [*cluster.gateways.values(), cluster.service]
        for role in roles:
            role.start()
        try:
            for gid in cluster.gateways:
                await mqtt.wait(
                    f"{B}/gateways/{gid}/state", lambda m: m["state"] == "online", timeout=30
                )
            await mqtt.latest(f"{B}/charging/stats", lambda m: True, timeout=30)
            yield cluster
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            for role in roles:
                role.close()


async def test_each_request_is_answered_once(broker: Mosquitto, tmp_path: Path) -> None:
    """A request to a charger held by gw-b is answered by gw-b alone (gw-a, the elected
    responder, stays silent); one to a charger nobody holds is answered `offline` once,
    within 2 s, by gw-a alone. Mutation: every gateway answering (as before v1.1)."""
    async with running_cluster(broker, tmp_path) as cluster:
        charger = Charger(Ledger(), physical_id=0x04000101)
        await cluster.charger_on(GW_B, charger)
        await cluster.request(charger.id, "locate", {"request_id": "held", "seconds": 3})
        frame = await charger.recv()
        assert frame.command == 0x96
        await charger.send(0x96, b"\x00", message_id=frame.message_id)
        response = await cluster.mqtt.wait(
            f"{B}/devices/{charger.id}/response/locate", lambda m: m["request_id"] == "held"
        )
        assert response["ok"] is True

        nobody = "04000999"
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        await cluster.request(nobody, "locate", {"request_id": "unheld", "seconds": 3})
        response = await cluster.mqtt.wait(
            f"{B}/devices/{nobody}/response/locate", lambda m: m["request_id"] == "unheld"
        )
        assert (response["ok"], response["result"]) == (False, "offline")
        assert loop.time() - sent_at < 2.0  # API.md §5: within 2 s (the grace is 0.5 s)

        # gw-a left the first request to gw-b, gw-b the second to gw-a: once each has said
        # so, anything else it would have published for them has arrived before.
        await cluster.gateway_stats(GW_A, requests_left_to_peers=1)
        await cluster.gateway_stats(GW_B, requests_left_to_peers=1)
        assert len(cluster.responses(charger.id, "locate", "held")) == 1
        assert len(cluster.responses(nobody, "locate", "unheld")) == 1
        await charger.close()


async def test_a_charger_handed_over_keeps_one_state_and_one_settlement(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The charger moves from gw-a to gw-b (a new TCP connection, the old one left open as
    after a NAT change): its state names gw-b, gw-a closes the old socket and publishes no
    `offline` for it, a command in flight on the old connection is answered, and the
    settlement resent to gw-b is counted once."""
    async with running_cluster(broker, tmp_path) as cluster:
        ledger = Ledger()
        old = Charger(ledger, physical_id=0x04000202)
        await cluster.charger_on(GW_A, old)
        # a session through the charging service, settled on gw-a
        async with broker.client("operator") as op:
            body = {"request_id": "start-1", "device_id": old.id, "port": 1}
            await op.publish(f"{B}/charging/request/start", json.dumps(body), qos=1)
        order_no = (await old.accept_start()).hex().upper()
        await cluster.mqtt.wait(
            f"{B}/charging/response/start", lambda m: m["request_id"] == "start-1" and m["ok"]
        )
        settlement = old.settlement(order_no, 1, 250)
        ledger.settled[order_no] = 250
        settlement_id = await old.send(0x03, settlement)
        ack = await old.recv()
        assert (ack.command, ack.message_id) == (0x03, settlement_id)
        # ... whose acknowledgement the charger "lost": it will resend it from gw-b.
        await cluster.request(old.id, "locate", {"request_id": "inflight", "seconds": 3})
        assert (await old.recv()).command == 0x96  # in flight: the charger never replies

        new = Charger(ledger, physical_id=old.physical_id)
        await new.connect(cluster.ports[GW_B])
        loop = asyncio.get_running_loop()
        first_frame_at = loop.time()
        await new.online()
        state = await cluster.mqtt.latest(
            f"{B}/devices/{new.id}", lambda m: m["online"] and m["gateway_id"] == GW_B
        )
        assert loop.time() - first_frame_at < 1.0  # API.md §7: at once
        assert state["connected_at"] is not None
        await old.closed_by_peer(timeout=5)  # gw-a let go of the stale connection
        inflight = await cluster.mqtt.wait(
            f"{B}/devices/{old.id}/response/locate", lambda m: m["request_id"] == "inflight"
        )
        assert (inflight["ok"], inflight["result"]) == (False, "offline")
        assert f"handed over to gateway {GW_B}" in inflight["message"]

        # the settlement resent (same message id) through gw-b is acknowledged there ...
        await new.send(0x03, settlement, message_id=settlement_id)
        ack = await new.recv()
        assert (ack.command, ack.message_id) == (0x03, settlement_id)
        # ... and counted once by the service
        settled = [
            e
            for e in cluster.mqtt.all(f"{B}/devices/{new.id}/event/order")
            if e["type"] == "settled"
        ]
        stats = await cluster.mqtt.latest(
            f"{B}/charging/stats",
            lambda m: m["duplicate_events"] >= 1 and m["sessions_completed"] >= 1,
            timeout=30,
        )
        assert stats["sessions_completed"] == 1
        assert stats["total_energy_delivered_kwh"] == ledger.energy_kwh == 2.5
        assert {e["gateway_id"] for e in settled} <= {GW_A, GW_B}

        # gw-a has closed the connection (0 open) and counted the hand-over: whatever it
        # published about the charger has arrived, and none of it is state after the move.
        await cluster.gateway_stats(GW_A, chargers_handed_over=1)
        await cluster.mqtt.latest(f"{B}/gateways/{GW_A}/stats", lambda m: m["connections"] == 0)
        states = cluster.states(new.id)
        moved = max(i for i, s in enumerate(states) if s["gateway_id"] == GW_B)
        assert all(s["gateway_id"] == GW_B for s in states[moved:]), states
        assert not [s for s in states if s["gateway_id"] == GW_A and not s["online"]], states
        offline_events = [
            e
            for e in cluster.mqtt.all(f"{B}/devices/{new.id}/event/device")
            if e["type"] == "offline"
        ]
        assert offline_events == []
        await new.close()


async def test_the_chargers_of_a_killed_gateway_are_shown_offline_by_the_survivor(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """SIGKILL of gw-a: its will turns its presence `offline` and gw-b shows each charger gw-a
    held `online: false` (API.md §7: within the will's delay, 0 here, plus 10 s), except the
    one that had moved to gw-b before."""
    async with running_cluster(broker, tmp_path) as cluster:
        config = FleetConfig(devices=3, first_index=300, reconnect_min_s=0.2)
        async with Fleet(config, TcpTarget("127.0.0.1", cluster.ports[GW_A])) as fleet:
            ids = [device_id(dev.physical_id) for dev in fleet.devices]
            for dev in ids:
                await cluster.mqtt.latest(
                    f"{B}/devices/{dev}", lambda m: m["online"] and m["gateway_id"] == GW_A
                )
            moved = Charger(Ledger(), physical_id=0x04000303)
            await cluster.charger_on(GW_A, moved)
            await moved.close()
            again = Charger(Ledger(), physical_id=moved.physical_id)
            await cluster.charger_on(GW_B, again)

            await cluster.gateways[GW_A].kill()
            await cluster.mqtt.wait(
                f"{B}/gateways/{GW_A}/state", lambda m: m["state"] == "offline", timeout=10
            )
            for dev in ids:
                swept = await cluster.mqtt.latest(
                    f"{B}/devices/{dev}", lambda m: not m["online"], timeout=10
                )
                assert swept["gateway_id"] == GW_A
            stats = await cluster.gateway_stats(GW_B, chargers_swept_offline=len(ids))
            assert stats["chargers_swept_offline"] == len(ids)  # not the one that moved
        latest = cluster.states(again.id)[-1]
        assert (latest["gateway_id"], latest["online"]) == (GW_B, True)
        await again.close()
