"""Power limits: the simulated charger never reports live power above its order's 0x82
overload power nor the device's per-port overload power (0x85), which takes effect at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ChargeLimits, LegacyHeartbeat, PortPowerReport, ResultReply, Settlement
from tests.bridge.simulator.test_device import command, online, payload, run, start
from tests.bridge.simulator.test_legacy import legacy_online, run_legacy


def live_powers(frames: list, port: int = 0) -> list[int]:  # type: ignore[type-arg]
    """Live power (0.1 W) of `port` in every 0x06 and charging 0x01 heartbeat, in order."""
    out = []
    for f in frames:
        body = payload(f)
        if isinstance(body, PortPowerReport) and body.port == port:
            out.append(body.power)
        elif isinstance(body, LegacyHeartbeat) and body.port_statuses[port] in (1, 5):
            out.append(body.powers[port])
    return out


def limits(overload: int) -> ChargeLimits:
    return ChargeLimits(max_charge_time=36000, overload_power=overload)


def test_order_limit_caps_power_reports_and_settlement() -> None:
    dev = online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(0, max_charge_time=0, overload_power=1500), 10.0)  # 150.0 W
    out = run(dev, 7200.0)
    powers = live_powers(out)
    assert len(powers) >= 20 and max(powers) <= 1500 and max(powers) >= 1400
    dev.unplug(0, 7300.0)
    record = next(payload(f) for f in run(dev, 7400.0, ack=(0x21, 0x03)) if f.command == 0x03)
    assert isinstance(record, Settlement) and record.max_power <= 1500


def test_device_limit_lowers_a_running_order_at_once_and_can_raise_it_again() -> None:
    dev = legacy_online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(0), 10.0)
    before = live_powers(run_legacy(dev, 1000.0))
    assert min(before) > 1000  # bulk phase: 200..400 W
    [reply] = command(dev, 0x85, limits(1000), 1000.0)  # 100.0 W per port
    assert payload(reply) == ResultReply(0)
    assert dev.ports[0].session is not None and dev.ports[0].session.power_w <= 100.0
    capped = live_powers(run_legacy(dev, 2000.0))
    assert capped and max(capped) <= 1000
    command(dev, 0x85, limits(20000), 2000.0)
    raised = live_powers(run_legacy(dev, 3000.0))
    assert raised and max(raised) > 1000


def test_device_limit_bounds_an_order_with_a_higher_limit() -> None:
    dev = online()
    dev.plug(1, 1.0)
    command(dev, 0x82, start(1, max_charge_time=0, overload_power=5000), 10.0)
    command(dev, 0x85, limits(1200), 20.0)
    powers = live_powers(run(dev, 3600.0), port=1)
    assert powers and max(powers) <= 1200


def test_limit_beyond_the_device_maximum_is_refused_and_changes_nothing() -> None:
    dev = online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(0), 10.0)
    [reply] = command(dev, 0x85, limits(20001), 20.0)
    assert payload(reply) == ResultReply(1)
    assert dev.ports[0].session is not None and dev.ports[0].session.device_limit_w == 2000.0


@settings(max_examples=25, deadline=None)
@given(
    order=st.integers(0, 5000),
    device=st.integers(1, 20000),
    at=st.floats(0.0, 3000.0),
    legacy=st.booleans(),
)
def test_live_power_never_exceeds_the_limits(
    order: int, device: int, at: float, legacy: bool
) -> None:
    dev = legacy_online() if legacy else online()
    dev.plug(0, 1.0)
    command(dev, 0x82, start(0, max_charge_time=0, overload_power=order), 10.0)
    ticker = run_legacy if legacy else run
    ticker(dev, 10.0 + at)
    command(dev, 0x85, limits(device), 10.0 + at)
    powers = live_powers(ticker(dev, 4000.0))
    bound = min(device, order or device)
    assert all(p <= bound for p in powers)
