"""The simulated charger as a pure state machine: frames in, time ticks, frames out."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.simulator.device import DeviceTiming, SimulatedDevice, UserBehaviour
from bridge.simulator.session import (
    STOP_BY_SERVER,
    STOP_FULL,
    STOP_PRESET_TIME,
    STOP_UNPLUGGED,
)
from protocol import (
    AdjustCharging,
    CardSwipe,
    CardSwipeReply,
    ChargeControl,
    ChargeControlReply,
    ChargeLimits,
    Empty,
    Frame,
    Heartbeat,
    Locate,
    PortPowerReport,
    Registration,
    ResultReply,
    RunningParams1,
    Sender,
    Settlement,
    TimeReply,
    decode_frame,
    decode_payload,
    encode_payload,
)

ORDER = bytes.fromhex("12345678123456781234567812345678")
ORDER2 = bytes(range(16))
SERVER_ID = 0x4242


def frames(dev: SimulatedDevice) -> list[Frame]:
    return [decode_frame(b) for b in dev.take_output() if b.startswith(b"DNY")]


def payload(frame: Frame) -> object:
    return decode_payload(frame.command, frame.data, Sender.DEVICE)


def answer(dev: SimulatedDevice, frame: Frame, reply: object, now: float) -> None:
    data = encode_payload(reply)  # type: ignore[arg-type]
    dev.receive(Frame(dev.physical_id, frame.message_id, frame.command, data), now)


def command(dev: SimulatedDevice, cmd: int, body: object, now: float) -> list[Frame]:
    """Send a server command; return the frames the device wrote in response."""
    data = encode_payload(body)  # type: ignore[arg-type]
    dev.receive(Frame(dev.physical_id, SERVER_ID, cmd, data), now)
    return frames(dev)


def start(port: int = 0, order: bytes = ORDER, **kw: int) -> ChargeControl:
    return ChargeControl(0, 356, port, 1, kw.pop("duration", 0), order, **kw)


def stop(port: int = 0, order: bytes = ORDER) -> ChargeControl:
    return ChargeControl(0, 0, port, 0, 0, order)


def online(ports: int = 2, users: UserBehaviour | None = None) -> SimulatedDevice:
    """A device connected at t=0 whose registration, heartbeat and time request were answered."""
    dev = SimulatedDevice.create(7, ports=ports, seed=1, users=users)
    dev.connect(0.0)
    for f in frames(dev):
        answer(dev, f, TimeReply(1_700_000_000) if f.command == 0x22 else ResultReply(0), 0.0)
    assert dev.registered and dev.time_synced and dev.online
    return dev


def run(dev: SimulatedDevice, until: float, ack: tuple[int, ...] = (0x21,)) -> list[Frame]:
    """Tick at each deadline up to `until`, answering the commands in `ack` at once."""
    out: list[Frame] = []
    while (t := dev.next_deadline()) <= until:
        dev.tick(t)
        for f in frames(dev):
            out.append(f)
            if f.command in ack:
                answer(dev, f, ResultReply(0), t)
    return out


def test_connect_sends_iccid_first_then_registration_heartbeat_and_time_request() -> None:
    dev = SimulatedDevice.create(3, ports=10, seed=5)
    dev.connect(0.0)
    out = dev.take_output()
    iccid = out[0].decode()
    assert len(iccid) == 20 and iccid.startswith("8986") and iccid.isdigit()
    sent = [decode_frame(b) for b in out[1:]]
    assert [f.command for f in sent] == [0x20, 0x21, 0x22]
    assert all(f.physical_id == dev.physical_id for f in sent)
    assert dev.physical_id >> 24 == 0x05
    reg = payload(sent[0])
    assert isinstance(reg, Registration) and reg.port_count == 10
    hb = payload(sent[1])
    assert isinstance(hb, Heartbeat)
    assert hb.port_statuses == (0,) * 10 and 200 < hb.voltage_v < 240
    assert hb.temperature_c is not None and 15 < hb.temperature_c < 40


@pytest.mark.parametrize(("ports", "kind"), [(2, 0x04), (10, 0x05), (16, 0x06)])
def test_kinds_carry_their_code_in_the_top_byte(ports: int, kind: int) -> None:
    assert SimulatedDevice.create(0, ports=ports).physical_id >> 24 == kind


def test_registration_is_resent_every_heartbeat_interval_until_answered() -> None:
    dev = SimulatedDevice.create(1, seed=2)
    dev.connect(0.0)
    first = next(f for f in frames(dev) if f.command == 0x20)
    regs = [f for f in run(dev, 3 * 180.0 + 1) if f.command == 0x20]
    assert len(regs) == 3
    assert {f.message_id for f in regs} == {first.message_id}  # a resend keeps its ID
    answer(dev, regs[-1], ResultReply(0), 541.0)
    assert dev.registered
    assert not [f for f in run(dev, 2000.0) if f.command == 0x20]


def test_time_request_repeats_until_answered_then_every_12_hours() -> None:
    dev = SimulatedDevice.create(1, seed=2)
    dev.connect(0.0)
    first = next(f for f in frames(dev) if f.command == 0x22)
    again = [f for f in run(dev, 400.0) if f.command == 0x22]
    assert [f.message_id for f in again] == [first.message_id] * 2
    answer(dev, again[-1], TimeReply(1_700_000_000), 400.0)
    assert dev.unix_time(410.0) == 1_700_000_010
    later = [f for f in run(dev, 400.0 + 12 * 3600 + 1) if f.command == 0x22]
    assert len(later) == 1


def test_heartbeats_every_interval_and_two_missed_replies_make_the_device_offline() -> None:
    dev = online()
    beats = [f for f in run(dev, 3 * 180.0 + 1) if f.command == 0x21]
    assert len(beats) == 3 and len({f.message_id for f in beats}) == 3
    assert dev.stats.heartbeats_acked == 4 and dev.stats.latencies_s[0] == 0.0
    run(dev, 4 * 180.0 + 1, ack=())
    assert dev.online
    run(dev, 5 * 180.0 + 1, ack=())
    run(dev, 6 * 180.0 + 1, ack=())
    assert not dev.online


def test_link_keepalive_after_30_seconds_without_traffic() -> None:
    dev = online()
    dev.tick(29.0)
    assert dev.take_output() == []
    dev.tick(30.0)
    assert dev.take_output() == [b"link"]
    assert dev.next_deadline() == 60.0


def test_frames_for_other_devices_are_ignored() -> None:
    dev = online()
    dev.plug(0, 1.0)
    dev.receive(Frame(dev.physical_id + 1, 1, 0x82, encode_payload(start())), 1.0)
    assert dev.take_output() == [] and dev.ports[0].session is None


@pytest.mark.parametrize(
    ("plugged", "port", "result"),
    [(False, 0, 1), (True, 0, 0), (True, 5, 4), (True, 0xFF, 0)],
)
def test_start_results(plugged: bool, port: int, result: int) -> None:
    dev = online()
    if plugged:
        dev.plug(1 if port == 0xFF else 0, 5.0)
    [reply] = command(dev, 0x82, start(port), 10.0)
    body = payload(reply)
    assert reply.message_id == SERVER_ID
    assert isinstance(body, ChargeControlReply)
    assert body.result == result and body.order_no == ORDER
    assert body.port == (1 if port == 0xFF else port)
    assert dev.stats.sessions_started == (result == 0)


def test_auto_port_without_any_plugged_charger_is_refused() -> None:
    dev = online()
    [reply] = command(dev, 0x82, start(0xFF), 10.0)
    body = payload(reply)
    assert isinstance(body, ChargeControlReply) and body.result == 1


def test_start_twice_is_refused_and_stop_needs_the_running_order() -> None:
    dev = online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(), 10.0)
    assert [payload(f).result for f in command(dev, 0x82, start(), 11.0)] == [2]  # type: ignore[attr-defined]
    assert [payload(f).result for f in command(dev, 0x82, stop(order=ORDER2), 12.0)] == [2]  # type: ignore[attr-defined]
    assert dev.ports[0].session is not None
    assert [payload(f).result for f in command(dev, 0x82, stop(), 13.0)] == [0]  # type: ignore[attr-defined]
    assert dev.ports[0].session is None and dev.ports[0].status == 2


def test_power_reports_every_5_minutes_with_monotonic_energy_then_settlement() -> None:
    dev = online()
    dev.plug(1, 1.0)
    command(dev, 0x82, start(1), 100.0)
    reports = [payload(f) for f in run(dev, 100.0 + 3600.0) if f.command == 0x06]
    assert len(reports) == 12
    assert all(isinstance(r, PortPowerReport) for r in reports)
    assert [r.duration for r in reports] == [300 * k for k in range(1, 13)]  # type: ignore[attr-defined]
    energies = [r.energy for r in reports]  # type: ignore[attr-defined]
    assert energies == sorted(energies) and energies[-1] > 0
    for r in reports:
        assert isinstance(r, PortPowerReport)
        assert r.port == 1 and r.order_no == ORDER and r.start_mode == 1 and r.status == 1
        assert 180 <= r.power_w <= 440 and r.min_power <= r.average_power <= r.max_power
    [ack] = command(dev, 0x82, stop(1), 100.0 + 3700.0)
    assert payload(ack).result == 0  # type: ignore[attr-defined]
    # The record follows ~2 s after the power is cut.
    assert [f for f in run(dev, 3801.0) if f.command == 0x03] == []
    [record] = [f for f in run(dev, 3803.0) if f.command == 0x03]
    s = payload(record)
    assert isinstance(s, Settlement)
    assert s.stop_reason == STOP_BY_SERVER and s.order_no == ORDER and s.port == 1
    assert s.duration == 3700 and s.energy >= energies[-1]
    # 100 s more charging at <= 440 W adds at most 0.02 kWh (1.22 Wh rounding included).
    assert s.energy - energies[-1] <= 2


def test_settlement_is_resent_every_30_minutes_until_acked_then_the_next_follows() -> None:
    dev = online(ports=10)
    for port, order in ((0, ORDER), (3, ORDER2)):
        dev.plug(port, 1.0)
        command(dev, 0x82, start(port, order), 10.0)
    command(dev, 0x82, stop(0, ORDER), 600.0)
    command(dev, 0x82, stop(3, ORDER2), 601.0)
    sent = [f for f in run(dev, 602.0 + 2 * 1800.0 + 1) if f.command == 0x03]
    assert len(sent) == 3 and len({f.message_id for f in sent}) == 1
    assert {payload(f).order_no for f in sent} == {ORDER}  # type: ignore[attr-defined]
    answer(dev, sent[-1], ResultReply(0), 4300.0)
    assert dev.stats.settlements_acked == 1
    assert [f for f in run(dev, 4359.0) if f.command == 0x03] == []
    [nxt] = [f for f in run(dev, 4361.0) if f.command == 0x03]
    assert payload(nxt).order_no == ORDER2 and nxt.message_id != sent[0].message_id  # type: ignore[attr-defined]
    answer(dev, nxt, ResultReply(0), 4361.0)
    assert not dev.settlements and dev.next_deadline() < math.inf


def test_a_session_runs_to_full_with_energy_matching_the_power_curve() -> None:
    dev = online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(), 0.0)
    curve = dev.ports[0].session.curve  # type: ignore[union-attr]
    out = run(dev, 8 * 3600.0, ack=(0x21, 0x03))
    reports = [payload(f) for f in out if f.command == 0x06]
    [s] = [payload(f) for f in out if f.command == 0x03]
    assert isinstance(s, Settlement) and s.stop_reason == STOP_FULL
    assert s.duration == int(curve.full_at_s)
    # Noise-free integral of the curve (bulk, then exponential taper): within 2 %.
    taper = curve.bulk_w * curve.taper_tau_s * (1 - curve.full_w / curve.bulk_w)
    expected_wh = (curve.bulk_w * curve.bulk_s + taper) / 3600.0
    assert s.energy * 10 == pytest.approx(expected_wh, rel=0.02, abs=10)
    assert s.energy >= reports[-1].energy  # type: ignore[attr-defined]
    assert len(reports) == int(curve.full_at_s // 300)
    assert s.max_power >= max(r.max_power for r in reports)  # type: ignore[attr-defined]
    # The battery is full and the charger still plugged in.
    assert dev.ports[0].status == 3
    assert dev.stats.settlements_acked == 1 and dev.stats.energy_reported_wh == s.energy * 10


def test_unplugging_ends_the_session_with_reason_5() -> None:
    dev = online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(), 0.0)
    run(dev, 900.0)
    dev.unplug(0, 1000.0)
    [s] = [payload(f) for f in run(dev, 1003.0) if f.command == 0x03]
    assert isinstance(s, Settlement) and s.stop_reason == STOP_UNPLUGGED and s.duration == 1000
    assert dev.ports[0].status == 0


def test_time_mode_start_stops_at_the_preset_time_without_auto_stop() -> None:
    dev = online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(duration=1200), 0.0)
    [s] = [payload(f) for f in run(dev, 1203.0) if f.command == 0x03]
    assert isinstance(s, Settlement) and s.stop_reason == STOP_PRESET_TIME and s.duration == 1200


def test_adjust_lowers_the_time_limit_and_the_session_stops() -> None:
    dev = online()
    [r] = command(dev, 0x8A, AdjustCharging(0, 0, 600), 5.0)
    assert payload(r) == ResultReply(1)  # not charging
    [r] = command(dev, 0x8A, AdjustCharging(7, 0, 600), 5.0)
    assert payload(r) == ResultReply(3)  # no such mode
    dev.plug(0, 1.0)
    command(dev, 0x82, start(), 10.0)
    run(dev, 1000.0)
    [r] = command(dev, 0x8A, AdjustCharging(1, 0, 900), 1000.0)
    assert payload(r) == ResultReply(0)
    [s] = [payload(f) for f in run(dev, 1003.0) if f.command == 0x03]
    assert isinstance(s, Settlement) and s.stop_reason == STOP_PRESET_TIME


def test_query_resends_registration_and_heartbeat_without_a_reply() -> None:
    dev = online()
    out = command(dev, 0x81, Empty(), 50.0)
    assert [f.command for f in out] == [0x20, 0x21]
    assert all(f.message_id != SERVER_ID for f in out)


def test_locate_and_parameters_are_answered() -> None:
    dev = online()
    assert [payload(f) for f in command(dev, 0x96, Locate(10), 5.0)] == [ResultReply(0)]
    limits = ChargeLimits(7200, 15000, 2600, 1100)
    assert [payload(f) for f in command(dev, 0x85, limits, 6.0)] == [ResultReply(0)]
    [r] = command(dev, 0x92, Empty(), 7.0)
    assert r.message_id == SERVER_ID
    assert decode_payload(0x92, r.data, Sender.DEVICE) == limits


def test_reboot_replies_then_powers_on_with_an_unset_clock() -> None:
    dev = online()
    [r] = command(dev, 0x87, Empty(), 100.0)
    assert payload(r) == ResultReply(0)
    assert dev.reboot_at == 100.0 + DeviceTiming().reboot_s
    dev.disconnect(100.0)
    dev.connect(115.0)
    out = dev.take_output()
    assert len(out[0]) == 20
    assert [decode_frame(b).command for b in out[1:]] == [0x20, 0x21, 0x22]
    assert not dev.time_synced and dev.unix_time(120.0) == 5


def test_card_swipe_online_waits_for_the_server_and_offline_starts_locally() -> None:
    dev = online(users=UserBehaviour(plug_mean_s=1e9))
    dev.plug(0, 1.0)
    dev.swipe_card(0, 2.0, card_id=b"\x01\x02\x03\x04")
    [swipe] = frames(dev)
    body = payload(swipe)
    assert isinstance(body, CardSwipe) and body.port == 0 and body.card_id == b"\x01\x02\x03\x04"
    answer(dev, swipe, CardSwipeReply(b"\x01\x02\x03\x04", 0, 0, 1000, 0), 2.5)
    assert frames(dev) == [] and dev.ports[0].session is None
    dev.online = False  # two missed heartbeats
    dev.plug(1, 3.0)
    dev.swipe_card(1, 4.0, card_id=b"\xaa\xbb\xcc\xdd")
    session = dev.ports[1].session
    assert session is not None and session.start_mode == 0
    assert session.order_no[7:11] == b"\xaa\xbb\xcc\xdd" and len(session.order_no) == 16


def test_same_seed_gives_the_same_bytes() -> None:
    def trace() -> list[bytes]:
        dev = online()
        dev.plug(0, 1.0)
        command(dev, 0x82, start(), 0.0)
        run(dev, 4000.0)
        dev.unplug(0, 4000.0)
        dev.take_output()
        dev.tick(4002.0)
        return dev.take_output()

    assert trace() == trace()


def test_simulated_users_plug_charge_and_leave() -> None:
    dev = SimulatedDevice.create(9, ports=16, seed=3, users=UserBehaviour(card_share=1.0))
    dev.connect(0.0)
    for f in frames(dev):
        answer(dev, f, TimeReply(1_700_000_000) if f.command == 0x22 else ResultReply(0), 0.0)
    swipes = 0
    t = 0.0
    while t < 24 * 3600:
        t = dev.next_deadline()
        dev.tick(t)
        for f in frames(dev):
            if f.command == 0x02:
                swipes += 1
                card = payload(f)
                assert isinstance(card, CardSwipe)
                answer(dev, f, CardSwipeReply(card.card_id, 0, 0, 500, card.port), t)
                order = swipes.to_bytes(16, "big")
                command(dev, 0x82, start(card.port, order), t)
            elif f.command in (0x21, 0x03):
                answer(dev, f, ResultReply(0), t)
    assert swipes > 20
    assert dev.stats.sessions_completed > 10
    assert dev.stats.settlements_acked >= dev.stats.sessions_completed - 2


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), stop_at=st.floats(60.0, 30_000.0))
def test_reported_energy_is_monotonic_and_the_settlement_adds_only_the_remainder(
    seed: int, stop_at: float
) -> None:
    dev = SimulatedDevice.create(seed, ports=2, seed=seed)
    dev.connect(0.0)
    dev.plug(0, 0.0)
    command(dev, 0x82, start(), 0.0)
    session = dev.ports[0].session
    assert session is not None
    out = run(dev, stop_at, ack=(0x03,))
    if dev.ports[0].session is not None:
        command(dev, 0x82, stop(), stop_at)
    out += run(dev, stop_at + 3.0, ack=(0x03,))
    reports = [payload(f) for f in out if f.command == 0x06]
    [record] = [payload(f) for f in out if f.command == 0x03]
    assert isinstance(record, Settlement)
    energies = [r.energy for r in reports]  # type: ignore[attr-defined]
    assert energies == sorted(energies)
    # The record's energy is the same running sum, floored to 0.01 kWh.
    assert record.energy == int(session.energy_wh // 10)
    last = energies[-1] if energies else 0
    # Between the last report and the end: at most 300 s at <= 1.2 x 400 W (= 4 units).
    assert last <= record.energy <= last + 5
    assert record.duration == int(session.elapsed_s)
    assert record.max_power >= max((r.peak_power for r in reports), default=0)  # type: ignore[attr-defined]


def test_overload_power_beyond_the_device_limit_is_refused() -> None:
    dev = online()
    too_much = ChargeLimits(36000, 20001)
    assert [payload(f) for f in command(dev, 0x85, too_much, 1.0)] == [ResultReply(1)]
    [r] = command(dev, 0x92, Empty(), 2.0)
    assert decode_payload(0x92, r.data, Sender.DEVICE) != too_much


def test_running_parameters_change_the_heartbeat_interval() -> None:
    dev = online()
    params = RunningParams1(3, 10, 20, 1800, 3600, 60)
    assert [payload(f) for f in command(dev, 0x83, params, 0.0)] == [ResultReply(0)]
    [r] = command(dev, 0x90, Empty(), 0.0)
    assert decode_payload(0x90, r.data, Sender.DEVICE) == params
    # The next heartbeat is still due at 180 s; from then on every 60 s.
    beats = [f for f in run(dev, 180.0 + 3 * 60 + 1) if f.command == 0x21]
    assert len(beats) == 4
