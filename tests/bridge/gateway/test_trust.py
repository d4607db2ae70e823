"""Trust on the device port in memory: pins, device_policy, the frame-rate limit, the
connection deadlines and the requests never executed. Fake links, an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest

import protocol as p
from bridge.config import ConfigError
from bridge.gateway.core import Gateway
from bridge.gateway.trust import PinStoreError, SqlitePinStore
from bridge.mqtt.topics import Topics
from protocol import Garbage
from tests.bridge.gateway.fakes import (
    DEVICE_ID,
    PID,
    FakeClock,
    FakeLink,
    FakePublisher,
    gateway,
    settings,
)

ICCID_A = "89860412345678901234"
ICCID_B = "8986041234567890ABCD"


def connect(gw: Gateway, iccid: str | None, kind: str = "tcp") -> FakeLink:
    """A new connection that sends its ICCID first, as a module does."""
    link = FakeLink(gw, kind)
    if iccid is not None:
        raw = iccid.encode()
        gw.items_received(link.conn, link._decoder.feed(raw), len(raw))
    return link


def answered(link: FakeLink) -> bool:
    """Send a time request (0x22); whether the gateway answered it."""
    link.send(0x22)
    return bool(link.new_frames())


def send_as(link: FakeLink, physical_id: int) -> bool:
    """A time request from another physical id on `link`; whether it was answered."""
    raw = p.encode_frame(physical_id, 1, 0x22)
    link.gateway.items_received(link.conn, link._decoder.feed(raw), len(raw))
    return bool(link.new_frames())


def security(mqtt: FakePublisher) -> list[dict[str, object]]:
    return mqtt.events("device", "security")


async def test_a_second_iccid_neither_replaces_the_pinned_connection_nor_is_served(
    tmp_path: Path,
) -> None:
    gw, mqtt, _ = gateway(tmp_path)
    real = connect(gw, ICCID_A)
    assert answered(real)
    dev = gw.registry.devices[PID]
    impostor = connect(gw, ICCID_B)
    impostor.send(0x03, b"\x00" * 20)  # not even a settlement is looked at
    assert not answered(impostor)
    silent = connect(gw, None)  # no ICCID at all, over TCP
    assert not answered(silent)
    assert dev.conn is real.conn and not real.transport.closed
    assert answered(real)
    assert not mqtt.events("order", "settled")
    [event] = security(mqtt)  # one event for the lot: they come within the interval
    assert (event["reason"], event["iccid"], event["frames"]) == ("pin_mismatch", ICCID_B, 1)
    assert event["device_id"] == DEVICE_ID and event["action"] == "dropped"
    assert gw.stats.frames_pin_mismatch == 3
    assert gw.stats.security_events_suppressed == 2
    assert len(mqtt.events("device", "online")) == 1


async def test_the_same_iccid_reconnecting_replaces_the_old_connection(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path)
    old = connect(gw, ICCID_A)
    assert answered(old)
    new = connect(gw, ICCID_A)
    assert answered(new)
    assert gw.registry.devices[PID].conn is new.conn and old.transport.closed


async def test_security_events_are_rate_limited_per_device_and_reason(tmp_path: Path) -> None:
    gw, mqtt, clock = gateway(tmp_path, security_event_interval_s=60)
    connect(gw, ICCID_A).send(0x22)
    impostor = connect(gw, ICCID_B)
    for _ in range(1000):
        impostor.send(0x22)
    assert len(security(mqtt)) == 1
    clock.advance(60)
    impostor.send(0x22)
    first, second = security(mqtt)
    assert (first["frames"], second["frames"]) == (1, 1000)  # 999 held back, then this one
    assert gw.stats.frames_pin_mismatch == 1001


async def test_serial_lines_carry_no_iccid_and_are_not_pinned(tmp_path: Path) -> None:
    gw, mqtt, _ = gateway(tmp_path)
    assert answered(connect(gw, ICCID_A))
    line = connect(gw, None, kind="serial")
    assert answered(line)
    assert not security(mqtt)


async def test_a_first_connection_without_iccid_pins_nothing(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path)
    assert answered(connect(gw, None))
    assert len(gw.trust.pins) == 0
    assert answered(connect(gw, ICCID_B))  # the first ICCID seen is pinned now
    assert gw.trust.pins.pins == {PID: ICCID_B}


async def test_open_policy_lets_anyone_replace_the_connection(tmp_path: Path) -> None:
    gw, mqtt, _ = gateway(tmp_path, device_policy="open")
    real = connect(gw, ICCID_A)
    assert answered(real)
    impostor = connect(gw, ICCID_B)
    assert answered(impostor)
    assert gw.registry.devices[PID].conn is impostor.conn and real.transport.closed
    assert not security(mqtt)


async def test_allowlist_serves_only_the_ids_and_iccids_listed(tmp_path: Path) -> None:
    listed = [DEVICE_ID, f"{PID + 1:08X}:{ICCID_A.lower()}"]
    gw, mqtt, _ = gateway(tmp_path, device_policy="allowlist", device_allowlist=listed)
    assert answered(connect(gw, ICCID_B))  # listed without an ICCID: any
    stranger = connect(gw, ICCID_A)
    stranger.send(0x22)
    other = FakeLink(gw)
    raw = ICCID_B.encode()
    gw.items_received(other.conn, other._decoder.feed(raw), 20)
    other.gateway.items_received(
        other.conn, other._decoder.feed(p.encode_frame(PID + 1, 1, 0x22)), 14
    )
    good = FakeLink(gw)
    raw = ICCID_A.encode()
    gw.items_received(good.conn, good._decoder.feed(raw), 20)
    gw.items_received(good.conn, good._decoder.feed(p.encode_frame(PID + 1, 1, 0x22)), 14)
    assert good.new_frames() and not other.new_frames()
    unlisted = FakeLink(gw)
    gw.items_received(
        unlisted.conn, unlisted._decoder.feed(p.encode_frame(0x05000001, 1, 0x22)), 14
    )
    assert not unlisted.new_frames()
    reasons = sorted(str(e["reason"]) for e in security(mqtt))
    assert reasons == ["not_allowed", "pin_mismatch"]
    assert gw.stats.frames_not_allowed == 1 and gw.stats.frames_pin_mismatch == 1


def test_allowlist_entries_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device_allowlist"):
        settings(tmp_path, device_allowlist=["04AB373B:1234"])
    with pytest.raises(ConfigError, match="device_allowlist"):
        settings(tmp_path, device_allowlist=["XYZ"])
    parsed = settings(tmp_path, device_allowlist="04ab373b, 04AB373C:" + ICCID_B.lower())
    assert parsed.allowlist == {PID: None, PID + 1: ICCID_B}


async def test_unpin_lets_a_charger_with_a_new_sim_in(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path)
    assert answered(connect(gw, ICCID_A))
    assert not answered(connect(gw, ICCID_B))
    resp = await gw._request(DEVICE_ID, "unpin", b'{"request_id": "u1"}')
    assert (resp.ok, resp.result, resp.request_id) == (True, "ok", "u1")
    assert resp.model_dump()["iccid"] == ICCID_A
    assert gw.stats.pins == 0
    new_sim = connect(gw, ICCID_B)
    assert answered(new_sim)
    assert gw.trust.pins.pins == {PID: ICCID_B}
    again = await gw._request("05000001", "unpin", b"{}")  # nothing pinned: still answered
    assert again.ok and again.model_dump()["iccid"] is None
    bad = await gw._request(DEVICE_ID, "unpin", b'{"port": 1}')
    assert bad.result == "invalid"


async def test_pins_survive_a_restart_and_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "pins.sqlite3"
    store = SqlitePinStore(path, max_pins=2)
    first = Gateway(settings(tmp_path), FakePublisher(), Topics("chargebridge"), pins=store)
    assert answered(connect(first, ICCID_A))
    store.close()
    store = SqlitePinStore(path, max_pins=2)
    clock = FakeClock()
    second = Gateway(
        settings(tmp_path), FakePublisher(), Topics("chargebridge"), clock=clock, pins=store
    )
    assert second.stats.pins == 1
    assert not answered(connect(second, ICCID_B))
    for pid in (PID + 1, PID + 2):  # the second fills the store; the third is served unpinned
        link = connect(second, ICCID_B)
        second.items_received(link.conn, link._decoder.feed(p.encode_frame(pid, 1, 0x22)), 14)
        assert link.new_frames()
    assert set(store.pins) == {PID, PID + 1}
    store.close()
    assert SqlitePinStore(path).pins == {PID: ICCID_A, PID + 1: ICCID_B}


async def test_workers_sharing_the_pin_file_act_on_each_others_pins(tmp_path: Path) -> None:
    """Two gateways on one shared pin file stand for two `--workers`: a charger pinned
    through one is refused another ICCID by the other, and an unpin through either holds."""
    path = tmp_path / "pins.sqlite3"
    SqlitePinStore(path, shared=True).close()  # the supervisor creates it
    stores = [SqlitePinStore(path, shared=True) for _ in range(2)]
    one, two = (
        Gateway(settings(tmp_path), FakePublisher(), Topics("chargebridge"), pins=s) for s in stores
    )
    try:
        assert answered(connect(one, ICCID_A))
        assert not answered(connect(two, ICCID_B))  # pinned by the other worker
        assert answered(connect(two, ICCID_A))  # the pinned SIM, reconnected to this one
        resp = await two._request(DEVICE_ID, "unpin", b"{}")
        assert resp.ok and resp.model_dump()["iccid"] == ICCID_A
        assert answered(connect(one, ICCID_B))  # one knew the old pin; the file says none
        assert not answered(connect(two, ICCID_A))
        assert stores[0].pins == stores[1].pins == {PID: ICCID_B}
    finally:
        for store in stores:
            store.close()


def test_a_shared_pin_file_is_read_again_only_after_some_worker_wrote_it(tmp_path: Path) -> None:
    """Every frame of a charger with no pin (one that sent no ICCID) used to cost each worker
    a SELECT; now the generation counter beside the file says when memory is still current,
    and a pin or unpin by another worker is still seen at once."""
    path = tmp_path / "pins.sqlite3"
    a, b = SqlitePinStore(path, shared=True), SqlitePinStore(path, shared=True)
    selects: list[str] = []
    b._db.set_trace_callback(lambda sql: selects.append(sql) if sql.startswith("SELECT") else None)
    try:
        for _ in range(50):
            assert b.fresh(PID) is None
        assert len(selects) == 1
        assert a.pin(PID, ICCID_A)
        assert b.fresh(PID) == ICCID_A and len(selects) == 2  # a's pin, at once
        assert b.fresh(PID) == ICCID_A and len(selects) == 2
        assert a.unpin(PID) == ICCID_A
        assert b.fresh(PID) is None and PID not in b.pins
    finally:
        a.close()
        b.close()


def test_a_full_shared_store_never_answers_from_memory_for_a_pin_it_could_not_keep(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pins.sqlite3"
    a = SqlitePinStore(path, shared=True)
    small = SqlitePinStore(path, max_pins=1, shared=True)
    try:
        assert a.pin(PID, ICCID_A) and a.pin(PID + 1, ICCID_B)
        assert small.fresh(PID) == ICCID_A  # kept: the one place it has
        for _ in range(3):  # not kept in memory, so read each time, never "no pin"
            assert small.fresh(PID + 1) == ICCID_B
    finally:
        a.close()
        small.close()


def test_an_unusable_pin_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "pins.sqlite3"
    path.write_bytes(b"this is no database" * 100)
    with pytest.raises(PinStoreError, match="move it away"):
        SqlitePinStore(path)


async def test_frames_over_the_rate_limit_are_dropped_and_a_flooding_link_closed(
    tmp_path: Path,
) -> None:
    gw, mqtt, clock = gateway(
        tmp_path, frame_rate_limit=20, frame_rate_burst=60, security_event_interval_s=10
    )
    link = connect(gw, ICCID_A)
    replies = 0
    for _ in range(61):
        link.send(0x22)
        replies += len(link.new_frames())
    assert replies == 60 and gw.stats.frames_rate_limited == 1
    [event] = security(mqtt)
    assert (event["reason"], event["action"]) == ("rate_limited", "dropped")
    clock.advance(1.0)  # 20 new tokens
    for _ in range(20):
        assert answered(link)
    assert not answered(link)
    assert not link.transport.closed
    for _ in range(60):  # more than a burst dropped within one interval
        link.send(0x22)
    assert link.transport.closed
    assert gw.stats.connections_closed_rate_limited == 1
    gw.connection_lost(link.conn)
    offline = mqtt.events("device", "offline")
    assert offline[-1]["reason"] == "rate_limited"


async def test_a_connection_without_a_valid_frame_is_closed_after_the_first_frame_deadline(
    tmp_path: Path,
) -> None:
    gw, _, clock = gateway(tmp_path, first_frame_timeout_s=30, idle_timeout=300)
    link = FakeLink(gw)
    gw.items_received(link.conn, link._decoder.feed(b"link" + ICCID_A.encode()), 24)
    clock.advance(29)
    gw.loops.sweep_idle()
    assert not link.transport.closed
    clock.advance(2)
    gw.loops.sweep_idle()
    assert link.transport.closed
    assert gw.stats.connections_closed_no_frame == 1


async def test_only_valid_frames_keep_a_connection_alive(tmp_path: Path) -> None:
    """A slow peer trickling garbage or half a frame is idle; a `link` keepalive is not."""
    gw, _, clock = gateway(tmp_path, idle_timeout=300)
    trickler, keeper = FakeLink(gw), FakeLink(gw)
    assert answered(trickler) and send_as(keeper, PID + 1)
    half = p.encode_frame(PID, 9, 0x22)[:-1]
    for second in range(301):
        clock.advance(1)
        gw.items_received(trickler.conn, [Garbage(b"x")], 1)
        if second < len(half):
            gw.items_received(trickler.conn, trickler._decoder.feed(half[second : second + 1]), 1)
        if second % 30 == 0:
            gw.items_received(keeper.conn, keeper._decoder.feed(b"link"), 4)
        gw.loops.sweep_idle()
    assert trickler.transport.closed
    assert not keeper.transport.closed


@pytest.mark.parametrize(("payload", "retain"), [(b"{}", True), (b"", False), (b"", True)])
async def test_retained_and_empty_requests_are_ignored_and_counted(
    tmp_path: Path, payload: bytes, retain: bool
) -> None:
    gw, mqtt, _ = gateway(tmp_path)
    link = connect(gw, ICCID_A)
    assert answered(link)
    topic = f"chargebridge/devices/{DEVICE_ID}/request/reboot"
    await gw.handle_request(topic, payload, retain=retain)
    assert not link.new_frames()  # no 0x87
    assert not mqtt.on("/response/reboot")
    assert gw.stats.requests_ignored == 1
