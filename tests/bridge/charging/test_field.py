"""Chargers in the field, in memory: legacy piles (0x04 confirmations, 0x01 heartbeats with
per-port power, no 0x06), `energy_kwh_estimated` and the power window.

The service's units are driven batch by batch with the clock injected (as in
test_units.py); the real gateway and simulated legacy piles are in test_field_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bridge.charging import energy
from bridge.charging.energy import Sample
from bridge.charging.model import ChargingSession
from bridge.charging.service import ChargingService, service_subscriptions
from tests.bridge.charging.harness import (
    BASE,
    DEV,
    ORDER,
    TOPICS,
    confirmed_event,
    heartbeat_event,
    power_event,
    reply_event,
    settled_event,
)
from tests.bridge.charging.test_units import (
    T0,
    Clock,
    message,
    order_event,
    port_event,
    request,
    response,
    settle_tasks,
)

OTHER = "FEDCBA9876543210FEDCBA9876543210"


def device_event(body: dict[str, Any]) -> Any:
    return message(f"{BASE}/devices/{DEV}/event/device", body)


def kwh(watts: float, seconds: float) -> float:
    return watts * seconds / 3_600_000


def beat(service: ChargingService, clock: Clock, *ports: tuple[str, float | None]) -> None:
    """A 0x01 heartbeat now (gateway and service clocks agree)."""
    service.handle_batch([device_event(heartbeat_event(*ports, ts=clock.now))])


# --- legacy sessions -------------------------------------------------------------------


def test_the_service_subscribes_to_device_events() -> None:
    assert (TOPICS.all_device_events, 1) in service_subscriptions(TOPICS)


async def test_a_confirmation_creates_an_offline_session(make: Any, clock: Clock) -> None:
    service, client = make()
    service.handle_batch([order_event(confirmed_event(duration_s=30, ts=T0))])
    session = service.sessions[ORDER]
    assert (session.status, session.port, session.start_time) == ("charging", 1, T0 - 30)
    assert [e["type"] for e in session.records] == ["confirmed"]
    assert session.records[0]["start_mode"] == "offline"
    published = client.on(TOPICS.session(ORDER))[-1]
    assert published["status"] == "charging" and published["energy_kwh_estimated"] == 0.0
    stats = service.stats
    assert (stats.sessions_created, stats.charging_start_events) == (1, 1)
    assert stats.total_events_processed == 1


async def test_a_confirmation_before_the_start_reply_makes_the_start_charging(
    make: Any, clock: Clock
) -> None:
    service, client = make()
    service.handle_batch([request("start", {"request_id": "r", "device_id": DEV, "port": 1})])
    (order_no,) = service.sessions
    await settle_tasks(service)
    (command,) = client.commands("start_charging")
    # The reference warns that a legacy pile's 0x04 may come before its 0x82 reply.
    service.handle_batch([order_event(confirmed_event(order_no=order_no, ts=clock.now))])
    assert service.sessions[order_no].status == "charging"
    service.handle_batch([order_event(reply_event("started", order_no, 1))])
    service.handle_batch([response("start_charging", {"request_id": command["request_id"]})])
    await settle_tasks(service)
    (answer,) = client.on(TOPICS.charging_response("start"))
    assert answer["ok"] is True and answer["session"]["status"] == "charging"
    records = [e["type"] for e in service.sessions[order_no].records]
    assert records == ["start_requested", "confirmed"]  # `started` changed nothing
    assert service.stats.charging_start_events == 1


async def test_heartbeats_keep_a_legacy_session_alive_with_its_live_power(
    make: Any, clock: Clock
) -> None:
    service, client = make()
    service.handle_batch([order_event(confirmed_event(port=2, ts=clock.now))])
    for watts in (180.0, 210.0, 195.0, 205.0, 190.0, 200.0, 185.0):
        clock.now += 180
        beat(service, clock, ("idle", 0.0), ("charging", watts))
        service.cleanup()
        assert service.sessions[ORDER].status == "charging"
        assert service.sessions[ORDER].power_w == watts
    assert clock.now - T0 > 900  # past session_timeout_s
    published = client.on(TOPICS.session(ORDER))[-1]
    assert published["power_w"] == 185.0 and published["max_power_w"] == 210.0
    assert [e["type"] for e in published["events"]][-1] == "heartbeat"
    assert service.stats.power_update_events == 7
    assert service.stats.total_events_processed == 8

    # A port reported idle keeps nothing alive: the session times out ...
    clock.now += 450
    beat(service, clock, ("idle", 0.0), ("idle", 0.0))
    clock.now += 450
    service.cleanup()
    assert service.sessions[ORDER].status == "timeout"
    # ... and a heartbeat showing the port charging again revives it.
    clock.now += 180
    beat(service, clock, ("idle", 0.0), ("charging", 150.0))
    assert service.sessions[ORDER].status == "charging"
    assert service.sessions[ORDER].power_w == 150.0


async def test_a_0x21_heartbeat_keeps_alive_without_history_or_power(
    make: Any, clock: Clock
) -> None:
    service, _ = make()
    service.handle_batch([port_event(power_event(0.1, 180.0, ts=clock.now))])
    before = service.sessions[ORDER]
    clock.now += 800
    service.handle_batch(
        [device_event(heartbeat_event(("idle", None), ("charging", None), legacy=False))]
    )
    clock.now += 800
    service.cleanup()
    after = service.sessions[ORDER]
    assert after.status == "charging" and after.last_update == T0 + 800
    assert after.events == before.events and after.power_w == 180.0
    assert service.stats.power_update_events == 1


async def test_one_heartbeat_serves_every_port_and_counts_once(make: Any, clock: Clock) -> None:
    service, _ = make()
    service.handle_batch(
        [
            order_event(confirmed_event(port=1, ts=clock.now)),
            order_event(confirmed_event(order_no=OTHER, port=2, ts=clock.now)),
        ]
    )
    clock.now += 120
    beat(service, clock, ("charging", 100.0), ("float_charging", 40.0))
    assert (service.sessions[ORDER].power_w, service.sessions[OTHER].power_w) == (100.0, 40.0)
    assert service.stats.total_events_processed == 3
    # The same heartbeat redelivered is applied once.
    last = heartbeat_event(("charging", 90.0), ("charging", 30.0), ts=clock.now)
    service.handle_batch([device_event(last)])
    service.handle_batch([device_event(last)])
    assert service.stats.duplicate_events == 1
    assert len(service.sessions[ORDER].events) == 3


async def test_other_device_events_are_counted_and_bad_heartbeats_are_errors(
    make: Any,
) -> None:
    service, _ = make()
    online = {
        "type": "online",
        "ts": "2026-12-01T00:00:00.000Z",
        "device_id": DEV,
        "gateway_id": "gw",
        "command": None,
        "message_id": None,
        "peer": "tcp:1.2.3.4:5",
        "iccid": None,
    }
    service.handle_batch([device_event(online)])
    bad = heartbeat_event(("charging", 10.0))
    bad["ports"][0]["port"] = 0
    service.handle_batch([device_event(bad)])
    assert service.stats.total_events_processed == 1 and service.stats.processing_errors == 1
    assert service.sessions == {}


async def test_a_late_confirmation_does_not_bring_a_cleared_session_back(
    make: Any, clock: Clock
) -> None:
    service, _ = make(session_retention_s=60)
    service.handle_batch([order_event(confirmed_event(ts=clock.now))])
    service.handle_batch([order_event(settled_event(0.2, 600, port=1, ts=clock.now))])
    clock.now += 61
    service.cleanup()
    assert ORDER not in service.sessions
    service.handle_batch([order_event(confirmed_event(ts=clock.now))])
    assert ORDER not in service.sessions and service.stats.sessions_created == 1


# --- energy_kwh_estimated ----------------------------------------------------------------


def test_the_estimate_rule() -> None:
    w = 60.0
    first, anchor = energy.advance(0.0, None, Sample(1180.0, 200.0), w, start=1000.0)
    assert first == kwh(200, 180) and anchor == Sample(1180.0, 200.0)
    # Less than a window after the anchor: not integrated, the anchor stays.
    assert energy.advance(first, anchor, Sample(1200.0, 900.0), w, 0.0) == (first, anchor)
    # Out of order: ignored.
    assert energy.advance(first, anchor, Sample(1100.0, 900.0), w, 0.0) == (first, anchor)
    second, anchor2 = energy.advance(first, anchor, Sample(1360.0, 100.0), w, 0.0)
    assert second == pytest.approx(first + kwh(200, 180)) and anchor2 == Sample(1360.0, 100.0)
    # A silence counts for at most ten windows, at either end.
    gap, _ = energy.advance(second, anchor2, Sample(1360.0 + 3600, 50.0), w, 0.0)
    assert gap == pytest.approx(second + kwh(100, 600))
    assert energy.close(second, anchor2, 1360.0 + 3600, w) == pytest.approx(gap)
    assert energy.advance(0.0, None, Sample(5000.0, 100.0), w, 0.0)[0] == kwh(100, 600)
    assert energy.close(1.0, None, 9999.0, w) == 1.0


async def test_a_legacy_session_estimates_what_it_cannot_report(make: Any, clock: Clock) -> None:
    service, client = make()
    service.handle_batch([order_event(confirmed_event(port=1, ts=clock.now))])
    for dt, watts in ((180, 200.0), (180, 100.0), (30, 300.0), (150, 100.0)):
        clock.now += dt
        beat(service, clock, ("charging", watts))
    # 200 W from the start for 180 s, 200 W until the next sample, then 100 W for 180 s:
    # the 300 W sample came less than a window after its anchor and was not integrated.
    expected = kwh(200, 180) + kwh(200, 180) + kwh(100, 180)
    assert service.sessions[ORDER].energy_kwh_estimated == pytest.approx(expected)
    assert service.sessions[ORDER].energy_kwh == 0.0
    clock.now += 3600  # silent for an hour, then settled: the last 100 W counts 10 minutes
    service.handle_batch([order_event(settled_event(0.05, 4140, port=1, ts=clock.now))])
    final = client.on(TOPICS.session(ORDER))[-1]
    assert final["status"] == "completed" and final["energy_kwh"] == 0.05
    assert final["energy_kwh_estimated"] == pytest.approx(expected + kwh(100, 600))
    assert service.stats.total_energy_delivered_kwh == 0.05  # billing: the settled figure


async def test_0x06_reports_are_estimated_beside_the_reported_energy(
    make: Any, clock: Clock
) -> None:
    service, _ = make(energy_calculation_window_s=30)
    service.handle_batch([port_event(power_event(0.01, 180.0, duration_s=300, ts=clock.now))])
    clock.now += 300
    service.handle_batch([port_event(power_event(0.03, 240.0, duration_s=600, ts=clock.now))])
    session = service.sessions[ORDER]
    assert session.energy_kwh == 0.03
    assert session.energy_kwh_estimated == pytest.approx(kwh(180, 300) * 2)


async def test_the_estimate_continues_after_a_restart(make: Any, clock: Clock) -> None:
    service, _ = make()
    service.handle_batch([order_event(confirmed_event(port=1, ts=clock.now))])
    clock.now += 180
    beat(service, clock, ("charging", 200.0))
    service.store.close()
    again, _ = make()
    assert again.sessions[ORDER].energy_kwh_estimated == pytest.approx(kwh(200, 180))
    clock.now += 180
    beat(again, clock, ("charging", 100.0))
    assert again.sessions[ORDER].energy_kwh_estimated == pytest.approx(kwh(200, 360))


def test_a_payload_stored_before_the_estimate_reads_back_as_zero() -> None:
    payload = {
        "session_id": ORDER,
        "device_id": DEV,
        "port": 1,
        "order_no": ORDER,
        "status": "charging",
        "start_time": "2026-12-01T00:00:00.000Z",
        "end_time": None,
        "duration_s": 0,
        "energy_kwh": 0.0,
        "max_power_w": 0.0,
        "power_w": 0.0,
        "voltage_v": None,
        "current_a": None,
        "temperature_c": None,
        "stop_reason": None,
        "last_update": "2026-12-01T00:00:00.000Z",
        "events": [],
    }
    session = ChargingSession.from_payload(payload)
    assert session.energy_kwh_estimated == 0.0 and session.energy_anchor is None
    assert ChargingSession.from_payload(json.loads(session.to_json())) == session


# --- power_update_window_s ---------------------------------------------------------------


async def test_power_only_changes_wait_for_the_window_and_status_changes_do_not(
    make: Any, clock: Clock
) -> None:
    service, client = make(power_update_window_s=10)
    topic = TOPICS.session(ORDER)
    service.handle_batch([order_event(confirmed_event(port=1, ts=clock.now))])
    assert len(client.on(topic)) == 1  # created: at once
    for watts in (100.0, 110.0, 120.0):
        clock.now += 3
        beat(service, clock, ("charging", watts))
    assert len(client.on(topic)) == 1 and service.state.pending == {ORDER}
    # Stored and counted all the same.
    stored, _ = service.store.load()
    assert stored[ORDER].power_w == 120.0 and service.stats.power_update_events == 3
    clock.now += 1  # the window has ended: the cleanup pass publishes the newest state
    service.cleanup()
    assert client.on(topic)[-1]["power_w"] == 120.0 and len(client.on(topic)) == 2
    assert service.state.pending == set()
    clock.now += 2
    beat(service, clock, ("charging", 130.0))
    assert len(client.on(topic)) == 2
    clock.now += 1
    service.handle_batch([order_event(settled_event(0.2, 600, port=1, ts=clock.now))])
    states = client.on(topic)
    assert len(states) == 3 and states[-1]["status"] == "completed"
    assert [e["power_w"] for e in states[-1]["events"] if e["type"] == "heartbeat"][-1] == 130.0
    assert service.state.pending == set()


async def test_the_window_timer_publishes_the_last_update(make: Any, clock: Clock) -> None:
    service, client = make(power_update_window_s=0.05)
    topic = TOPICS.session(ORDER)
    service.handle_batch([port_event(power_event(0.1, 100.0, ts=clock.now))])
    service.handle_batch([port_event(power_event(0.2, 150.0, duration_s=600, ts=clock.now))])
    assert [s["power_w"] for s in client.on(topic)] == [100.0]
    published = asyncio.Event()
    submit = client.submit

    def signalling(*args: Any, **kw: Any) -> asyncio.Future[None]:
        published.set()
        return submit(*args, **kw)

    client.submit = signalling  # type: ignore[method-assign]
    async with asyncio.timeout(5):
        await published.wait()
    assert [s["power_w"] for s in client.on(topic)] == [100.0, 150.0]
    assert service.state.pending == set()


async def test_without_a_window_every_change_is_published(make: Any, clock: Clock) -> None:
    service, client = make()
    service.handle_batch([order_event(confirmed_event(port=1, ts=clock.now))])
    for watts in (100.0, 110.0):
        clock.now += 1
        beat(service, clock, ("charging", watts))
    assert [s["power_w"] for s in client.on(TOPICS.session(ORDER))] == [0.0, 100.0, 110.0]
