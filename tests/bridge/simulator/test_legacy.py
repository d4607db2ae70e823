"""The legacy simulated charger (pre-2019): 0x01 heartbeats with per-port power, 0x04 order
confirmations until answered, never 0x06, short settlements."""

from __future__ import annotations

import argparse

import pytest

from bridge.commands import simulate
from bridge.simulator.device import SimulatedDevice
from bridge.simulator.fleet import FleetConfig
from protocol import (
    Frame,
    LegacyHeartbeat,
    OrderConfirmation,
    OrderConfirmationReply,
    Registration,
    ResultReply,
    Settlement,
    TimeReply,
)
from tests.bridge.simulator.test_device import ORDER, answer, command, frames, payload, start


def legacy_online() -> SimulatedDevice:
    dev = SimulatedDevice.create(7, seed=1, legacy=True)
    dev.connect(0.0)
    for f in frames(dev):
        answer(dev, f, TimeReply(1_700_000_000) if f.command == 0x22 else ResultReply(0), 0.0)
    assert dev.registered and dev.time_synced and dev.online
    return dev


def run_legacy(dev: SimulatedDevice, until: float, confirm: bool = True) -> list[Frame]:
    """Tick to `until`, answering 0x01 and (if `confirm`) 0x04 at once."""
    out: list[Frame] = []
    while (t := dev.next_deadline()) <= until:
        dev.tick(t)
        for f in frames(dev):
            out.append(f)
            if f.command == 0x01:
                answer(dev, f, ResultReply(0), t)
            elif f.command == 0x04 and confirm:
                body = payload(f)
                assert isinstance(body, OrderConfirmation)
                answer(dev, f, OrderConfirmationReply(body.port, 0), t)
    return out


def test_connect_sends_short_registration_legacy_heartbeat_and_time_request() -> None:
    dev = SimulatedDevice.create(3, seed=5, legacy=True)
    dev.connect(0.0)
    sent = frames(dev)
    assert [f.command for f in sent] == [0x20, 0x01, 0x22]
    reg = payload(sent[0])
    assert isinstance(reg, Registration) and len(sent[0].data) == 5
    assert (reg.device_type, reg.firmware, reg.port_count) == (0x06, 226, 2)
    hb = payload(sent[1])
    assert isinstance(hb, LegacyHeartbeat)
    assert hb.port_statuses == (0, 0) and hb.powers == (0, 0) and hb.device_type == 0x06
    assert dev.physical_id >> 24 == 0x04


def test_heartbeat_reply_keeps_the_legacy_device_online() -> None:
    dev = legacy_online()
    beats = [f for f in run_legacy(dev, 3 * 180.0 + 1) if f.command in (0x01, 0x21)]
    assert [f.command for f in beats] == [0x01] * 3
    assert dev.online and dev.stats.heartbeats_acked == 4


def test_start_confirms_with_0x04_before_the_0x82_reply_and_never_sends_0x06() -> None:
    dev = legacy_online()
    dev.plug(1, 1.0)
    out = command(dev, 0x82, start(1), 10.0)
    assert [f.command for f in out] == [0x04, 0x82]  # the reference: 0x04 may come first
    confirmation = payload(out[0])
    assert confirmation == OrderConfirmation(1, 1, bytes(4), 0, ORDER)
    later = run_legacy(dev, 3600.0)
    assert not [f for f in later if f.command == 0x06]
    beats = [payload(f) for f in later if f.command == 0x01]
    assert all(isinstance(b, LegacyHeartbeat) for b in beats)
    charging = [b for b in beats if b.port_statuses[1] == 1]  # type: ignore[union-attr]
    assert charging, "a heartbeat while charging reports the port charging"
    for b in charging:
        assert isinstance(b, LegacyHeartbeat)
        assert b.powers[0] == 0 and 1000 < b.powers[1] < 4500  # 0.1 W: 100..450 W
        assert b.peak_powers[1] >= b.powers[1]


def test_unanswered_0x04_repeats_every_heartbeat_interval_with_the_same_id() -> None:
    dev = legacy_online()
    dev.plug(0, 1.0)
    [first, _] = command(dev, 0x82, start(0), 10.0)
    again = [f for f in run_legacy(dev, 10.0 + 3 * 180.0, confirm=False) if f.command == 0x04]
    assert [f.message_id for f in again] == [first.message_id] * 3
    durations = [payload(f).duration for f in again]  # type: ignore[attr-defined]
    assert durations == sorted(durations) and durations[-1] >= 540
    answer(dev, again[-1], OrderConfirmationReply(0, 0), 560.0)
    assert not [f for f in run_legacy(dev, 1500.0, confirm=False) if f.command == 0x04]


def test_unconfirmed_order_is_confirmed_again_after_a_reconnect() -> None:
    dev = legacy_online()
    dev.plug(0, 1.0)
    [first, _] = command(dev, 0x82, start(0), 10.0)
    dev.disconnect(20.0)
    dev.connect(30.0)
    assert first.message_id in [f.message_id for f in frames(dev) if f.command == 0x04]


def test_settlement_is_the_29_byte_form() -> None:
    dev = legacy_online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(0), 10.0)
    dev.unplug(0, 1200.0)
    settlements = [f for f in run_legacy(dev, 1300.0) if f.command == 0x03]
    assert settlements and len(settlements[0].data) == 29
    record = payload(settlements[0])
    assert isinstance(record, Settlement) and record.order_no == ORDER
    assert record.second_max_power is None and record.energy > 0


def test_fleet_kinds_with_legacy_devices() -> None:
    legacy = FleetConfig(kind="legacy")
    assert [legacy.ports_of(i) for i in range(3)] == [2, 2, 2]
    assert all(legacy.legacy_of(i) for i in range(3))
    mix = FleetConfig(kind="mixed-legacy")
    assert [mix.ports_of(i) for i in range(5)] == [2, 2, 2, 10, 16]
    assert [mix.legacy_of(i) for i in range(10)] == [False, False, True, False, False] * 2
    assert not any(FleetConfig(kind="mixed").legacy_of(i) for i in range(5))


def test_simulate_command_accepts_the_legacy_kinds() -> None:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    for kind in ("legacy", "mixed-legacy"):
        args = parser.parse_args(["--connect", "127.0.0.1:7054", "--kind", kind])
        assert args.kind == kind
    with pytest.raises(SystemExit):
        parser.parse_args(["--connect", "127.0.0.1:7054", "--kind", "ancient"])
