"""Several gateways on one base topic, in memory (`bridge.gateway.peers`): who answers a
device request, the hand-over of a charger to a gateway with a newer connection, and the sweep
of a dead gateway's chargers. The presence and device state messages other gateways would
publish are fed to `Gateway.handle_request` as the MQTT client would; no broker, no sleeps
(the grace of an unheld request is shortened to keep the suite fast)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import protocol as p
from bridge.gateway.core import Gateway
from bridge.gateway.registry import Device
from tests.bridge.gateway.fakes import DEVICE_ID, PID, FakeLink, FakePublisher, gateway

B = "chargebridge"
OTHER = "04AB0001"


def presence(gw: Gateway, gateway_id: str, state: str) -> None:
    body = {"state": state, "gateway_id": gateway_id}
    assert gw.peers.observe(f"{B}/gateways/{gateway_id}/state", json.dumps(body).encode())


def device_state(gw: Gateway, device_id: str, holder: str, online: bool, at: str | None) -> None:
    body: dict[str, Any] = {
        "device_id": device_id,
        "device_number": 1,
        "device_kind": "dual_socket",
        "online": online,
        "iccid": None,
        "firmware": None,
        "port_count": 2,
        "voltage_v": None,
        "signal": None,
        "temperature_c": None,
        "last_seen": None,
        "gateway_id": holder,
        "connected_at": at,
    }
    assert gw.peers.observe(f"{B}/devices/{device_id}", json.dumps(body).encode())


def online_device(gw: Gateway) -> tuple[FakeLink, Device]:
    link = FakeLink(gw)
    link.send(0x22)  # a time request: the charger is bound to this connection
    link.new_frames()
    dev = gw.registry.devices[PID]
    assert dev.online and dev.connected_at is not None
    return link, dev


def device_states(mqtt: FakePublisher, device_id: str = DEVICE_ID) -> list[dict[str, Any]]:
    return [m.payload for m in mqtt.on(f"/devices/{device_id}")]


async def request(gw: Gateway, device_id: str, command: str = "locate") -> None:
    body = json.dumps({"request_id": "r", "seconds": 3}).encode()
    await gw.handle_request(f"{B}/devices/{device_id}/request/{command}", body)


def responses(mqtt: FakePublisher, device_id: str, command: str = "locate") -> list[Any]:
    return [m.payload for m in mqtt.on(f"/devices/{device_id}/response/{command}")]


# ---------------------------------------------------------------------------- who answers


async def test_a_gateway_alone_answers_offline_at_once(tmp_path: Path) -> None:
    gw, mqtt, _ = gateway(tmp_path)
    gw.peers.grace_s = 60.0  # would hang the test if a lone gateway waited for it
    await asyncio.wait_for(request(gw, OTHER), 5)
    [resp] = responses(mqtt, OTHER)
    assert (resp["ok"], resp["result"]) == (False, "offline")


async def test_a_charger_held_by_another_online_gateway_is_not_answered_here(
    tmp_path: Path,
) -> None:
    gw, mqtt, _ = gateway(tmp_path, gateway_id="a-gw")
    gw.peers.grace_s = 60.0  # the holder is known: no waiting
    presence(gw, "b-gw", "online")
    device_state(gw, OTHER, "b-gw", True, "2026-01-01T00:00:00.000Z")
    await asyncio.wait_for(request(gw, OTHER), 5)
    assert responses(mqtt, OTHER) == []
    # once its holder is gone, the elected responder (the smallest id, here) answers offline
    presence(gw, "b-gw", "offline")
    await asyncio.wait_for(request(gw, OTHER), 5)
    [resp] = responses(mqtt, OTHER)
    assert resp["result"] == "offline"


async def test_an_unheld_charger_is_answered_offline_by_the_elected_responder_only(
    tmp_path: Path,
) -> None:
    """The smallest online gateway id answers, after the grace; the others stay silent."""
    small, small_mqtt, _ = gateway(tmp_path / "a", gateway_id="a-gw")
    big, big_mqtt, _ = gateway(tmp_path / "b", gateway_id="b-gw")
    presence(small, "b-gw", "online")
    presence(big, "a-gw", "online")
    for gw in (small, big):
        gw.peers.grace_s = 0.05
    await asyncio.gather(request(small, OTHER), request(big, OTHER))
    assert [r["result"] for r in responses(small_mqtt, OTHER)] == ["offline"]
    assert responses(big_mqtt, OTHER) == []
    assert (small.stats.requests_left_to_peers, big.stats.requests_left_to_peers) == (0, 1)
    # a malformed request for it is answered once too (by the same rule), never twice
    await asyncio.gather(request(small, "nothex"), request(big, "nothex"))
    assert [r["result"] for r in responses(small_mqtt, "nothex")] == ["invalid"]
    assert responses(big_mqtt, "nothex") == []


async def test_the_holder_answers_even_when_it_is_not_the_elected_responder(
    tmp_path: Path,
) -> None:
    gw, mqtt, _ = gateway(tmp_path, gateway_id="z-gw")
    presence(gw, "a-gw", "online")
    gw.peers.grace_s = 60.0
    link, _dev = online_device(gw)
    task = asyncio.create_task(request(gw, DEVICE_ID))
    frame = await link.next_frame()
    assert frame.command == p.Locate.COMMAND
    link.send(frame.command, b"\x00", message_id=frame.message_id)
    await asyncio.wait_for(task, 5)
    [resp] = responses(mqtt, DEVICE_ID)
    assert resp["ok"] is True


async def test_a_charger_arriving_during_the_grace_is_served_by_its_new_holder(
    tmp_path: Path,
) -> None:
    """A hand-over in progress: the request came before the charger's first frame here."""
    gw, mqtt, _ = gateway(tmp_path, gateway_id="z-gw")
    presence(gw, "a-gw", "online")
    gw.peers.grace_s = 60.0
    task = asyncio.create_task(request(gw, DEVICE_ID))
    await asyncio.sleep(0)  # the request waits in its grace
    link, _dev = online_device(gw)
    gw.peers.observe(f"{B}/devices/{DEVICE_ID}", json.dumps(device_states(mqtt)[-1]).encode())
    frame = await link.next_frame()
    link.send(frame.command, b"\x00", message_id=frame.message_id)
    await asyncio.wait_for(task, 5)
    assert [r["ok"] for r in responses(mqtt, DEVICE_ID)] == [True]


# ---------------------------------------------------------------------------- hand-over


async def test_a_newer_connection_elsewhere_takes_the_charger_silently(tmp_path: Path) -> None:
    gw, mqtt, _ = gateway(tmp_path, gateway_id="a-gw")
    link, _dev = online_device(gw)
    # a command in flight on the old connection
    task = asyncio.create_task(gw._request(DEVICE_ID, "locate", b'{"seconds": 3}'))
    await link.next_frame()
    before = len(mqtt.messages)
    device_state(gw, DEVICE_ID, "b-gw", True, "2099-01-01T00:00:00.000Z")
    resp = await asyncio.wait_for(task, 5)
    assert (resp.ok, resp.result) == (False, "offline")
    assert "handed over to gateway b-gw" in resp.message
    assert link.transport.closed
    gw.connection_lost(link.conn)
    assert PID not in gw.registry.devices
    assert gw.stats.chargers_handed_over == 1
    gw.publishing.republish(gw.registry)  # as after an MQTT reconnect
    published = [m.topic for m in mqtt.messages[before:]]
    assert not [t for t in published if t.startswith(f"{B}/devices/{DEVICE_ID}")], published
    assert gw.peers.held_elsewhere(PID) is False  # b-gw's presence was never seen
    presence(gw, "b-gw", "online")
    assert gw.peers.held_elsewhere(PID)


async def test_an_older_claim_elsewhere_is_answered_with_our_state(tmp_path: Path) -> None:
    """Mutation: always handing over would let a late, stale publish steal the charger."""
    gw, mqtt, _ = gateway(tmp_path, gateway_id="a-gw")
    link, dev = online_device(gw)
    count = len(device_states(mqtt))
    device_state(gw, DEVICE_ID, "b-gw", True, "2001-01-01T00:00:00.000Z")
    assert dev.online and not link.transport.closed
    states = device_states(mqtt)
    assert len(states) == count + 1
    assert (states[-1]["gateway_id"], states[-1]["online"]) == ("a-gw", True)
    # a stale `offline` from the gateway it left, or one naming us, is overwritten too
    device_state(gw, DEVICE_ID, "b-gw", False, "2001-01-01T00:00:00.000Z")
    device_state(gw, DEVICE_ID, "a-gw", False, states[-1]["connected_at"])
    assert [s["online"] for s in device_states(mqtt)[count:]] == [True, True, True]


async def test_a_stale_offline_copy_is_forgotten_when_another_gateway_holds_it(
    tmp_path: Path,
) -> None:
    """Else a reconnect to the broker would republish it naming this gateway."""
    gw, _mqtt, _ = gateway(tmp_path, gateway_id="a-gw")
    link, dev = online_device(gw)
    gw.connection_lost(link.conn)
    assert not dev.online
    device_state(gw, DEVICE_ID, "b-gw", True, "2001-01-01T00:00:00.000Z")
    assert PID not in gw.registry.devices


# ---------------------------------------------------------------------------- dead gateways


def sweeping_gateway(tmp_path: Path, gateway_id: str) -> tuple[Gateway, FakePublisher, list[str]]:
    """A gateway already watching device states, whose replay requests are recorded."""
    gw, mqtt, _ = gateway(tmp_path, gateway_id=gateway_id)
    replays: list[str] = []

    async def resubscribe(topic: str) -> bool:
        replays.append(topic)
        return True

    gw.peers.resubscribe = resubscribe
    gw.peers.watching = True  # subscribed to the device states already
    return gw, mqtt, replays


async def test_the_elected_survivor_sweeps_a_dead_gateways_chargers(tmp_path: Path) -> None:
    gw, mqtt, replays = sweeping_gateway(tmp_path, "b-gw")
    presence(gw, "a-gw", "online")
    presence(gw, "c-gw", "online")
    device_state(gw, OTHER, "a-gw", True, "2026-01-01T00:00:00.000Z")
    assert gw.peers.held_elsewhere(int(OTHER, 16))
    presence(gw, "a-gw", "offline")
    assert gw.peers.holders == {}
    await asyncio.sleep(0)  # the replay task runs
    assert replays == [f"{B}/devices/+"]
    # the broker replays: the dead gateway's charger, one that moved on, one already offline
    device_state(gw, OTHER, "a-gw", True, "2026-01-01T00:00:00.000Z")
    device_state(gw, "04AB0002", "c-gw", True, "2026-01-01T00:00:00.000Z")
    device_state(gw, "04AB0003", "a-gw", False, "2026-01-01T00:00:00.000Z")
    [swept] = [m for m in mqtt.messages if m.topic.startswith(f"{B}/devices/")]
    assert swept.topic == f"{B}/devices/{OTHER}" and swept.retain
    assert (swept.payload["online"], swept.payload["gateway_id"]) == (False, "a-gw")
    assert swept.payload["port_count"] == 2  # the rest of the state is kept
    assert gw.stats.chargers_swept_offline == 1


async def test_only_the_elected_survivor_sweeps(tmp_path: Path) -> None:
    gw, mqtt, replays = sweeping_gateway(tmp_path, "c-gw")
    presence(gw, "a-gw", "online")
    presence(gw, "b-gw", "online")
    presence(gw, "a-gw", "offline")  # b-gw is the elected survivor
    await asyncio.sleep(0)
    device_state(gw, OTHER, "a-gw", True, "2026-01-01T00:00:00.000Z")
    assert replays == [] and gw.stats.chargers_swept_offline == 0
    assert not [m for m in mqtt.messages if m.topic.startswith(f"{B}/devices/")]


async def test_bad_presence_and_device_states_are_counted_not_fatal(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path)
    for topic, payload in (
        (f"{B}/gateways/x/state", b"not json"),
        (f"{B}/gateways/x/state", b"[1]"),
        (f"{B}/devices/{OTHER}", b"{}"),
        (f"{B}/devices/{OTHER}", b'{"gateway_id": 5, "online": true}'),
    ):
        assert gw.peers.observe(topic, payload)
    assert gw.stats.peer_states_unreadable == 4
    assert not gw.peers.online and not gw.peers.holders
    assert gw.peers.observe(f"{B}/gateways/x/stats", b"{}")  # someone else's counters
    assert not gw.peers.observe(f"{B}/devices/{OTHER}/request/locate", b"{}")


async def test_a_state_naming_this_gateway_for_a_charger_it_does_not_hold_is_corrected(
    tmp_path: Path,
) -> None:
    """After a crash and restart under the same id the broker still retains `online: true`
    naming this gateway for chargers that have not come back: it shows them offline."""
    gw, mqtt, _ = gateway(tmp_path, gateway_id="a-gw")
    device_state(gw, OTHER, "a-gw", True, "2026-01-01T00:00:00.000Z")
    [fixed] = device_states(mqtt, OTHER)
    assert (fixed["online"], fixed["gateway_id"], fixed["port_count"]) == (False, "a-gw", 2)


async def test_a_dead_gateways_claim_never_takes_a_charger(tmp_path: Path) -> None:
    """Even with a newer `connected_at` (clocks apart), a state of a gateway whose presence is
    `offline` is stale: the holder restores its own state instead of letting go."""
    gw, mqtt, _ = gateway(tmp_path, gateway_id="a-gw")
    presence(gw, "b-gw", "online")
    presence(gw, "b-gw", "offline")
    link, dev = online_device(gw)
    device_state(gw, DEVICE_ID, "b-gw", True, "2099-01-01T00:00:00.000Z")
    assert dev.online and not link.transport.closed
    assert (device_states(mqtt)[-1]["gateway_id"], device_states(mqtt)[-1]["online"]) == (
        "a-gw",
        True,
    )


async def test_a_charger_that_came_here_is_no_longer_taken_as_held_elsewhere(
    tmp_path: Path,
) -> None:
    """Its old holder lets go silently, so our own state (echoed back) is what says it moved;
    once it leaves us too, the elected responder answers for it again."""
    gw, mqtt, _ = gateway(tmp_path, gateway_id="a-gw")
    presence(gw, "b-gw", "online")
    device_state(gw, DEVICE_ID, "b-gw", True, "2001-01-01T00:00:00.000Z")
    assert gw.peers.held_elsewhere(PID)
    link, _dev = online_device(gw)
    ours = device_states(mqtt)[-1]
    assert gw.peers.observe(f"{B}/devices/{DEVICE_ID}", json.dumps(ours).encode())
    assert not gw.peers.held_elsewhere(PID)
    gw.connection_lost(link.conn)
    gw.peers.grace_s = 0.01
    await request(gw, DEVICE_ID)
    assert [r["result"] for r in responses(mqtt, DEVICE_ID)] == ["offline"]


async def test_device_states_are_subscribed_once_another_gateway_shows_up(tmp_path: Path) -> None:
    """A gateway alone subscribes to no device states (it costs nothing more than before)."""
    gw, _, _ = gateway(tmp_path, gateway_id="a-gw")
    subscribed: list[str] = []

    async def subscribe(topic: str) -> None:
        subscribed.append(topic)

    gw.peers.subscribe = subscribe
    assert gw.peers.observe(f"{B}/gateways/a-gw/state", b'{"state": "online"}')  # our own
    assert gw.peers.observe(f"{B}/gateways/old/state", b"")  # cleared: forgotten
    await asyncio.sleep(0)
    assert subscribed == [] and not gw.peers.watching
    presence(gw, "b-gw", "online")
    presence(gw, "c-gw", "online")
    await asyncio.sleep(0)
    assert subscribed == [f"{B}/devices/+"]
    await gw.peers.stop()
