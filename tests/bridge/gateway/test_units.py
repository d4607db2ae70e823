"""The gateway's units in memory: a fake publisher, fake links and an injected clock.

Fast and exact where the broker tests can only wait: what is written, what is published (and
retained), and when a settlement is acknowledged. No broker, no sockets, no sleeps.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import protocol as p
from bridge.gateway import commands
from bridge.gateway.commands import MAX_QUEUED_PER_DEVICE
from tests.bridge.gateway.fakes import DEVICE_ID, PID, FakeLink, gateway

ORDER = bytes(range(1, 17))


def heartbeat() -> bytes:
    return p.Heartbeat(voltage=2200, port_statuses=(0, 1), signal=9, temperature=90).encode()


def settlement() -> bytes:
    return p.Settlement(
        duration=3600,
        max_power=2342,
        energy=135,
        port=1,
        start_mode=1,
        card_id=b"\0\0\0\0",
        stop_reason=7,
        order_no=ORDER,
    ).encode()


def swipe() -> bytes:
    return p.CardSwipe(card_id=bytes.fromhex("A1B2C3D4"), card_type=0, port=0, balance=150).encode()


def decoded(frame: p.Frame) -> p.Payload:
    return p.decode_payload(frame.command, frame.data, p.Sender.SERVER)


async def test_heartbeat_is_answered_published_and_a_resend_only_answered(tmp_path: Path) -> None:
    gw, mqtt, _ = gateway(tmp_path)
    link = FakeLink(gw)
    mid = link.send(0x21, heartbeat())
    [reply] = link.new_frames()
    assert (reply.physical_id, reply.command, reply.message_id) == (PID, 0x21, mid)
    assert decoded(reply) == p.ResultReply(0)
    assert [e["type"] for e in mqtt.events("device", "online")] == ["online"]
    assert len(mqtt.events("device", "heartbeat")) == 1
    [state] = [m for m in mqtt.on(f"/devices/{DEVICE_ID}") if m.payload["online"]][-1:]
    assert state.retain
    ports = mqtt.on(f"/devices/{DEVICE_ID}/ports/2")
    assert ports[-1].retain and ports[-1].payload["status"] == "charging"
    published = len(mqtt.messages)

    link.send(0x21, heartbeat(), message_id=mid)  # the device did not get our reply
    assert link.new_frames() == [reply]
    assert len(mqtt.messages) == published and gw.stats.duplicates == 1


async def test_what_a_device_read_publishes_is_sent_at_the_end_of_that_read(
    tmp_path: Path,
) -> None:
    """One `send_queued` per read, after everything the read's frames published (0x06: the
    retained port state and the event), whether the link hands over bytes or decoded items."""
    gw, mqtt, _ = gateway(tmp_path)
    link = FakeLink(gw)
    link.send(0x21, heartbeat())
    assert mqtt.sent_at == [len(mqtt.messages)]
    report = p.PortPowerReport(
        0, 1, 60, 6, 1, 2300, 2500, 2100, 2300, bytes(16), 12, 2600, 2212, 1050, 90, 95,
        1_700_000_000, 0,
    )  # fmt: skip
    raw = b"".join(p.encode_frame(PID, 100 + i, 0x06, report.encode()) for i in range(2))
    before = len(mqtt.messages)
    gw.data_received(link.conn, raw)
    published = [m.topic.rsplit("/", 2)[-2:] for m in mqtt.messages[before:]]
    # two events; the state once, or twice when the two reports' `measured_at` (milliseconds)
    # fall in two milliseconds
    assert published.count(["event", "port"]) == 2
    assert 1 <= published.count(["ports", "1"]) == len(published) - 2 <= 2
    assert mqtt.sent_at[-1] == len(mqtt.messages) and len(mqtt.sent_at) == 2


async def test_registration_and_time_use_the_injected_clock(tmp_path: Path) -> None:
    gw, mqtt, clock = gateway(tmp_path)
    link = FakeLink(gw)
    reg = p.Registration(
        firmware=126,
        port_count=2,
        virtual_id=0,
        device_type=0x21,
        work_mode=0,
        power_board_version=0,
    )
    link.send(0x20, reg.encode())
    assert decoded(link.new_frames()[0]) == p.ResultReply(0)
    assert mqtt.events("device", "register")[0]["port_count"] == 2
    assert gw.registry.devices[PID].port_count == 2
    link.send(0x22)
    assert decoded(link.new_frames()[0]) == p.TimeReply(int(clock.unix))
    assert mqtt.events("device", "time_sync")[0]["unix_time"] == int(clock.unix)


async def test_settlement_is_acknowledged_only_after_the_broker_has_it(tmp_path: Path) -> None:
    gw, mqtt, _ = gateway(tmp_path)
    link = FakeLink(gw)
    link.send(0x21, heartbeat())
    link.new_frames()
    mqtt.hold = True
    mid = link.send(0x03, settlement())
    [settled] = [m for m in mqtt.messages if m.critical]
    assert settled.payload["type"] == "settled" and settled.key is not None
    assert link.new_frames() == []  # not before the broker acknowledged
    link.send(0x03, settlement(), message_id=mid)  # a resend meanwhile: still nothing
    assert link.new_frames() == []
    settled.future.set_result(None)
    await asyncio.sleep(0)  # the future's done-callbacks run on the next loop turn
    [ack] = link.new_frames()
    assert (ack.command, ack.message_id, decoded(ack)) == (0x03, mid, p.ResultReply(0))


async def test_settlement_the_broker_refused_is_not_acknowledged(tmp_path: Path) -> None:
    gw, mqtt, _ = gateway(tmp_path)
    link = FakeLink(gw)
    link.send(0x21, heartbeat())
    link.new_frames()
    mqtt.hold = True
    mid = link.send(0x03, settlement())
    [settled] = [m for m in mqtt.messages if m.critical]
    settled.future.set_exception(RuntimeError("PUBACK: not authorized"))
    await asyncio.sleep(0)  # let the done-callback run (no time passes)
    assert link.new_frames() == []
    link.send(0x03, settlement(), message_id=mid)  # the device resends: try again
    assert len([m for m in mqtt.messages if m.critical]) == 2
    mqtt.messages[-1].future.set_result(None)
    await asyncio.sleep(0)
    assert [f.message_id for f in link.new_frames()] == [mid]


@pytest.mark.parametrize(("policy", "status", "balance"), [("reject", 1, 0), ("accept", 0, 777)])
async def test_card_policy(tmp_path: Path, policy: str, status: int, balance: int) -> None:
    gw, mqtt, _ = gateway(tmp_path, card_policy=policy, card_balance_cents=777)
    link = FakeLink(gw)
    link.send(0x02, swipe())
    reply = decoded(link.new_frames()[0])
    assert isinstance(reply, p.CardSwipeReply)
    assert (reply.account_status, reply.balance, reply.card_id) == (
        status,
        balance,
        bytes.fromhex("A1B2C3D4"),
    )
    assert mqtt.events("order", "card_swipe")[0]["card_id"] == "A1B2C3D4"


async def test_card_authorize_waits_for_the_card_reply(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path, card_policy="authorize", card_authorize_timeout_s=10)
    link = FakeLink(gw)
    link.send(0x02, swipe())
    assert link.new_frames() == []
    body = b'{"request_id": "c", "card_id": "a1b2c3d4", "account_status": 0, "balance_cents": 5}'
    resp = await gw._request(DEVICE_ID, "card_reply", body)
    assert (resp.ok, resp.result) == (True, "ok")
    reply = decoded(link.new_frames()[0])
    assert isinstance(reply, p.CardSwipeReply) and reply.balance == 5
    again = await gw._request(DEVICE_ID, "card_reply", body)
    assert (again.ok, again.result) == (False, "expired")
    gw.flows.stop()


async def test_command_is_resent_once_with_the_same_bytes_then_times_out(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path, command_timeout_s=0.05)
    link = FakeLink(gw)
    link.send(0x21, heartbeat())
    link.new_frames()
    task = asyncio.create_task(
        gw._request(DEVICE_ID, "locate", b'{"request_id": "l", "seconds": 5}')
    )
    first = await link.next_frame()
    second = await link.next_frame()
    assert first == second and first.command == 0x96
    resp = await task
    assert (resp.ok, resp.result, resp.request_id) == (False, "timeout", "l")
    assert link.new_frames() == [] and gw.stats.command_timeouts == 1


async def test_reply_is_decoded_once_for_response_and_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = commands.decode_payload

    def counting(command: int, data: bytes, sender: p.Sender) -> p.Payload:
        calls.append(command)
        return real(command, data, sender)

    monkeypatch.setattr(commands, "decode_payload", counting)
    monkeypatch.setattr(p, "decode_payload", None)  # nothing else may decode it
    gw, mqtt, _ = gateway(tmp_path)
    link = FakeLink(gw)
    link.send(0x21, heartbeat())
    link.new_frames()
    order = ORDER.hex().upper()
    body = f'{{"request_id": "s", "port": 2, "mode": "full", "order_no": "{order}"}}'.encode()
    task = asyncio.create_task(gw._request(DEVICE_ID, "start_charging", body))
    sent = await link.next_frame()
    reply = p.ChargeControlReply(result=0, order_no=ORDER, port=1, waiting_ports=0)
    link.send(0x82, reply.encode(), message_id=sent.message_id)
    resp = await task
    assert (resp.ok, resp.result) == (True, "ok")
    assert mqtt.events("order", "started")[0]["order_no"] == order
    assert calls == [0x82]


async def test_taps_see_the_frames_written_without_decoding_them(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path)
    seen: list[tuple[p.Sender, p.Frame]] = []
    gw.taps.append(lambda sender, dev, frame: seen.append((sender, frame)))
    link = FakeLink(gw)
    link.send(0x21, heartbeat())
    [reply] = link.new_frames()
    assert [s for s, _ in seen] == [p.Sender.DEVICE, p.Sender.SERVER]
    assert seen[1][1] == reply


async def test_more_than_16_queued_commands_are_busy(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path, max_commands_per_minute=100)
    link = FakeLink(gw)
    link.send(0x21, heartbeat())
    link.new_frames()
    tasks = [
        asyncio.create_task(gw._request(DEVICE_ID, "reboot", b"{}"))
        for _ in range(MAX_QUEUED_PER_DEVICE)
    ]
    await link.next_frame()  # the first is in flight, the others wait their turn
    assert gw.registry.devices[PID].queued == MAX_QUEUED_PER_DEVICE
    seventeenth = asyncio.create_task(gw._request(DEVICE_ID, "reboot", b'{"request_id": "17"}'))
    await asyncio.sleep(0)  # one loop turn: a refusal needs no more, a queued command would
    assert seventeenth.done()
    busy = seventeenth.result()
    assert (busy.ok, busy.result, busy.request_id) == (False, "busy", "17")
    gw.connection_lost(link.conn)  # every queued one fails fast
    results = {r.result for r in await asyncio.gather(*tasks)}
    assert results == {"offline"}


async def test_serial_line_idle_marks_its_silent_devices_offline(tmp_path: Path) -> None:
    gw, mqtt, clock = gateway(tmp_path, idle_timeout=60)
    line = FakeLink(gw, kind="serial")
    line.send(0x21, heartbeat())
    clock.advance(59)
    gw.loops.sweep_idle()
    assert gw.registry.devices[PID].online and not mqtt.events("device", "offline")
    clock.advance(2)
    gw.loops.sweep_idle()
    assert not gw.registry.devices[PID].online
    assert mqtt.events("device", "offline")[0]["reason"] == "idle"
    assert mqtt.on(f"/devices/{DEVICE_ID}")[-1].payload["online"] is False
    assert not line.transport.closed  # the line stays open for the other devices


async def test_tcp_idle_closes_the_connection(tmp_path: Path) -> None:
    gw, _, clock = gateway(tmp_path, idle_timeout=60)
    link = FakeLink(gw)
    link.send(0x21, heartbeat())
    clock.advance(61)
    gw.loops.sweep_idle()
    assert link.transport.closed
    assert gw.registry.conns[link.conn.id].close_reason == "idle"


async def test_stats_are_published_only_when_they_changed(tmp_path: Path) -> None:
    gw, mqtt, _ = gateway(tmp_path)
    assert gw.loops.publish_stats() is True
    assert gw.loops.publish_stats() is False
    FakeLink(gw).send(0x21, heartbeat())
    assert gw.loops.publish_stats() is True
    stats = mqtt.on("/stats")[-1]
    assert stats.retain and stats.payload["frames_in"] == 1


async def test_resent_time_request_gets_the_current_time(tmp_path: Path) -> None:
    gw, mqtt, clock = gateway(tmp_path)
    link = FakeLink(gw)
    link.send(0x22, message_id=9)
    clock.advance(5)
    link.send(0x22, message_id=9)  # e.g. after a reboot message ids restart
    first, second = (decoded(f) for f in link.new_frames())
    assert isinstance(first, p.TimeReply) and isinstance(second, p.TimeReply)
    assert second.unix_time == first.unix_time + 5
    assert len(mqtt.events("device", "time_sync")) == 1  # the resend publishes nothing


async def test_offline_device_answers_without_waiting(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path)
    task = asyncio.create_task(gw._request("05000001", "reboot", b'{"request_id": "x"}'))
    await asyncio.sleep(0)  # one loop turn, no time
    assert task.done() and task.result().result == "offline"
