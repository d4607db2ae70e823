"""The pure session state machine and the statistics: no broker, no clock."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.charging.model import (
    IGNORED,
    MAX_EVENTS,
    ChargingSession,
    ChargingStats,
    Effect,
    Event,
    PowerReported,
    Settled,
    StartAccepted,
    StartRefused,
    StartRequested,
    StopAccepted,
    StopRefused,
    StopRequested,
    Tick,
    iso,
    parse_iso,
    transition,
)

ORDER = "0123456789ABCDEF0123456789ABCDEF"
DEV = "04AB373B"
T0 = 1_790_000_000.0


def power(ts: float, energy: float = 0.1, watts: float = 200.0, **kw: object) -> PowerReported:
    fields: dict[str, object] = {
        "order_no": ORDER,
        "device_id": DEV,
        "port": 2,
        "power_w": watts,
        "energy_kwh": energy,
        "duration_s": int(ts - T0),
        "max_power_w": watts + 10,
        "voltage_v": 230.1,
        "current_a": 0.87,
        "temperature_c": 31.0,
    }
    fields.update(kw)
    return PowerReported(ts=ts, **fields)  # type: ignore[arg-type]


def settled(ts: float, energy: float = 0.5, duration: int = 3600) -> Settled:
    return Settled(
        ts=ts,
        order_no=ORDER,
        device_id=DEV,
        port=2,
        energy_kwh=energy,
        duration_s=duration,
        max_power_w=250.0,
        stop_reason="battery_full",
    )


def run(events: list[Event], session: ChargingSession | None = None):  # type: ignore[no-untyped-def]
    """Apply events in order; returns the last session and every step's effects."""
    steps = []
    for event in events:
        session, effects = transition(session, event)
        steps.append(effects)
    return session, steps


def requested(ts: float = T0, port: int | None = 2) -> StartRequested:
    return StartRequested(ts=ts, order_no=ORDER, device_id=DEV, port=port)


def test_server_start_lifecycle() -> None:
    s, steps = run(
        [
            requested(),
            StartAccepted(ts=T0 + 1, port=2),
            power(T0 + 300, energy=0.05),
            power(T0 + 600, energy=0.12, watts=180.0),
            settled(T0 + 700, energy=0.13, duration=699),
        ]
    )
    assert s is not None
    assert s.status == "completed"
    assert (s.energy_kwh, s.duration_s, s.max_power_w) == (0.13, 699, 250.0)
    assert s.start_time == T0 and s.end_time == T0 + 700
    assert s.stop_reason == "battery_full"
    assert [e["type"] for e in s.records] == [
        "start_requested",
        "started",
        "power",
        "power",
        "settled",
    ]
    assert steps[0] == {Effect.CREATED, Effect.CHANGED}
    assert steps[1] == {Effect.CHARGING_STARTED, Effect.CHANGED}
    assert steps[2] == {Effect.POWER_APPLIED, Effect.CHANGED}
    assert steps[4] == {Effect.COMPLETED, Effect.STOP_APPLIED, Effect.CHANGED}


def test_power_updates_every_measure_and_keeps_the_peak() -> None:
    s, _ = run([requested(), power(T0 + 300, watts=300.0), power(T0 + 600, watts=100.0)])
    assert s is not None and s.status == "charging"
    assert s.power_w == 100.0
    assert s.max_power_w == 310.0  # the earlier period maximum survives a lower report
    assert (s.voltage_v, s.current_a, s.temperature_c) == (230.1, 0.87, 31.0)
    assert s.duration_s == 600 and s.last_update == T0 + 600


def test_first_power_of_a_start_makes_it_charging() -> None:
    s, steps = run([requested(), power(T0 + 5)])
    assert s is not None and s.status == "charging"
    assert Effect.CHARGING_STARTED in steps[1]


def test_unknown_order_is_created_by_power_or_settlement() -> None:
    s, effects = transition(None, power(T0 + 300))
    assert s is not None and s.status == "charging" and s.port == 2
    assert effects == {
        Effect.CREATED,
        Effect.CHARGING_STARTED,
        Effect.POWER_APPLIED,
        Effect.CHANGED,
    }
    s, effects = transition(None, settled(T0 + 3600, duration=3600))
    assert s is not None and s.status == "completed"
    assert s.start_time == T0  # the settlement says how long it lasted
    assert Effect.CREATED in effects and Effect.COMPLETED in effects


def test_events_without_a_session_are_ignored() -> None:
    for event in (StartAccepted(ts=T0), StopAccepted(ts=T0), Tick(ts=T0)):
        assert transition(None, event) == (None, {Effect.IGNORED})


def test_resent_settlement_changes_nothing() -> None:
    s, _ = run([requested(), power(T0 + 300), settled(T0 + 400, energy=0.2)])
    again, effects = transition(s, settled(T0 + 2200, energy=0.9, duration=9))
    assert effects == {Effect.DUPLICATE}
    assert again is s


def test_refused_start_fails_with_the_reason() -> None:
    s, steps = run([requested(), StartRefused(ts=T0 + 1, reason="no charger plugged in")])
    assert s is not None and s.status == "failed"
    assert s.stop_reason == "no charger plugged in" and s.end_time == T0 + 1
    assert steps[1] == {Effect.CHANGED}
    assert s.records[-1] == {
        "ts": iso(T0 + 1),
        "type": "start_failed",
        "reason": "no charger plugged in",
    }


def test_power_after_a_failed_start_proves_it_charges() -> None:
    s, steps = run([requested(), StartRefused(ts=T0 + 1, reason="timeout"), power(T0 + 300)])
    assert s is not None and s.status == "charging"
    assert s.end_time is None and s.stop_reason is None
    assert Effect.CHARGING_STARTED in steps[2]


def test_stop_then_settlement() -> None:
    s, steps = run(
        [
            requested(),
            StartAccepted(ts=T0 + 1),
            StopRequested(ts=T0 + 50),
            StopAccepted(ts=T0 + 51),
            power(T0 + 52),
            settled(T0 + 53, duration=52),
        ]
    )
    assert s is not None and s.status == "completed"
    assert steps[2] == {Effect.CHANGED}
    assert steps[3] == {Effect.STOP_APPLIED, Effect.CHANGED}
    assert [e["type"] for e in s.records][2:] == ["stop_requested", "stopped", "power", "settled"]


def test_refused_stop_returns_to_charging() -> None:
    s, _ = run(
        [requested(), StartAccepted(ts=T0 + 1), StopRequested(ts=T0 + 2), StopRefused(ts=T0 + 3)]
    )
    assert s is not None and s.status == "charging"


def test_stop_is_ignored_when_the_session_is_over() -> None:
    s, _ = run([requested(), settled(T0 + 10)])
    assert transition(s, StopRequested(ts=T0 + 20)) == (s, {Effect.IGNORED})


def test_timeout_then_late_settlement_completes() -> None:
    tick = Tick(ts=T0 + 1000, session_timeout=900)
    s, steps = run([requested(), power(T0 + 60), tick])
    assert s is not None and s.status == "timeout"
    assert steps[2] == {Effect.TIMED_OUT, Effect.CHANGED}
    s, effects = transition(s, settled(T0 + 5000, energy=0.4))
    assert s is not None and s.status == "completed" and s.energy_kwh == 0.4
    assert Effect.COMPLETED in effects


def test_no_timeout_before_the_limit() -> None:
    s, _ = run([requested(), power(T0 + 60)])
    assert transition(s, Tick(ts=T0 + 959, session_timeout=900)) == (s, frozenset())


def test_finished_sessions_expire_after_retention() -> None:
    s, _ = run([requested(), settled(T0 + 10)])
    assert transition(s, Tick(ts=T0 + 10 + 99, retention=100))[1] == frozenset()
    assert transition(s, Tick(ts=T0 + 10 + 100, retention=100)) == (None, {Effect.EXPIRED})
    active, _ = run([requested()])
    assert transition(active, Tick(ts=T0 + 10**6, retention=100))[0] is active


def test_history_is_bounded_newest_last() -> None:
    events: list[Event] = [requested()]
    events += [power(T0 + i, energy=i / 1000) for i in range(1, 80)]
    s, _ = run(events)
    assert s is not None and len(s.events) == MAX_EVENTS
    assert s.records[-1]["energy_kwh"] == 0.079
    assert s.records[0]["ts"] == iso(T0 + 30)


def test_auto_port_learns_the_device_choice() -> None:
    s, _ = run([requested(port=None), StartAccepted(ts=T0 + 1, port=1)])
    assert s is not None and s.port == 1


def test_payload_has_exactly_the_api_fields_and_round_trips() -> None:
    s, _ = run([requested(), power(T0 + 300)])
    assert s is not None
    payload = s.to_payload()
    assert list(payload) == [
        "session_id",
        "device_id",
        "port",
        "order_no",
        "status",
        "start_time",
        "end_time",
        "duration_s",
        "energy_kwh",
        "energy_kwh_estimated",
        "max_power_w",
        "power_w",
        "voltage_v",
        "current_a",
        "temperature_c",
        "stop_reason",
        "last_update",
        "version",
        "events",
    ]
    assert payload["version"] == 2  # created, then one power report
    assert payload["start_time"] == iso(T0) and payload["start_time"].endswith("Z")
    assert ChargingSession.from_payload(payload) == s


def test_iso_has_milliseconds_and_z() -> None:
    assert iso(0.25) == "1970-01-01T00:00:00.250Z"
    assert parse_iso("1970-01-01T00:00:00.250Z") == 0.25


def test_stats_count_each_effect_once() -> None:
    stats = ChargingStats()
    events: list[Event] = [
        requested(),
        StartAccepted(ts=T0 + 1),
        power(T0 + 300),
        power(T0 + 600),
        settled(T0 + 700, energy=0.25, duration=700),
        settled(T0 + 2500, energy=0.25, duration=700),  # resent
    ]
    session = None
    for event in events:
        session, effects = transition(session, event)
        stats = stats.tally(effects, session)
    assert stats == ChargingStats(
        charging_start_events=1,
        charging_stop_events=1,
        power_update_events=2,
        sessions_created=1,
        sessions_completed=1,
        duplicate_events=1,
        total_energy_delivered_kwh=0.25,
        total_duration_s=700,
    )
    payload = stats.add(total_events_processed=6).to_payload(active_sessions=0, updated_at=T0)
    assert payload["average_session_duration_s"] == 700.0
    assert ChargingStats.from_payload(payload) == dataclasses.replace(
        stats, total_events_processed=6, processing_samples=6
    )


@given(
    st.lists(
        st.sampled_from(["accept", "refuse", "power", "stop", "stopped", "settle", "tick"]),
        max_size=30,
    )
)
def test_completed_exactly_once_whatever_the_order(kinds: list[str]) -> None:
    makers = {
        "accept": lambda t: StartAccepted(ts=t),
        "refuse": lambda t: StartRefused(ts=t, reason="x"),
        "power": lambda t: power(t),
        "stop": lambda t: StopRequested(ts=t),
        "stopped": lambda t: StopAccepted(ts=t),
        "settle": lambda t: settled(t),
        "tick": lambda t: Tick(ts=t, session_timeout=5),
    }
    events: list[Event] = [requested()]
    events += [makers[k](T0 + 10 * (i + 1)) for i, k in enumerate(kinds)]
    stats = ChargingStats()
    session = None
    for event in events:
        session, effects = transition(session, event)
        stats = stats.tally(effects, session)
        assert session is not None and len(session.events) <= MAX_EVENTS
    assert stats.sessions_completed == (1 if "settle" in kinds else 0)
    assert stats.sessions_created == 1
    assert stats.charging_start_events <= 1


def test_stop_confirmed_by_event_and_response_counts_once() -> None:
    s, _ = run(
        [requested(), StartAccepted(ts=T0 + 1), StopRequested(ts=T0 + 2), StopAccepted(ts=T0 + 3)]
    )
    assert transition(s, StopAccepted(ts=T0 + 4)) == (s, {Effect.IGNORED})


def test_last_update_is_when_the_service_applied_the_event() -> None:
    s, _ = run([requested(), PowerReported(**{**vars_of(power(T0 + 5)), "at": T0 + 7200})])
    assert s is not None and s.last_update == T0 + 7200
    assert s.records[-1]["ts"] == iso(T0 + 5)
    assert transition(s, Tick(ts=T0 + 7300, session_timeout=900))[1] == frozenset()


def vars_of(event: Event) -> dict[str, object]:
    return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}


def test_the_stored_and_published_json_is_the_payload() -> None:
    """`to_json` splices the events' stored texts in; it must equal the payload exactly."""
    s, _ = run(
        [
            requested(T0),
            StartAccepted(ts=T0 + 1, port=2),
            power(T0 + 300, energy=0.05),
        ]
    )
    assert s is not None
    assert json.loads(s.to_json()) == s.to_payload()
    assert list(s.to_payload()).index("events") == len(s.to_payload()) - 1
    again = ChargingSession.from_payload(json.loads(s.to_json()))
    assert again == s
    empty = dataclasses.replace(s, events=())
    assert json.loads(empty.to_json())["events"] == []


def test_a_payload_that_is_not_a_session_is_refused_with_the_reason() -> None:
    s, _ = run([requested(), StartAccepted(ts=T0 + 1)])
    assert s is not None
    payload = s.to_payload()
    with pytest.raises(ValueError, match="teleported"):
        ChargingSession.from_payload({**payload, "events": [{"ts": iso(T0), "type": "teleported"}]})
    with pytest.raises(ValueError, match="status"):
        ChargingSession.from_payload({**payload, "status": "flying"})


def test_stop_confirmed_is_read_back_from_the_history() -> None:
    s, _ = run([requested(), StartAccepted(ts=T0 + 1), StopRequested(ts=T0 + 2)])
    assert s is not None and not s.stop_confirmed
    s, _ = transition(s, StopAccepted(ts=T0 + 3))
    assert s is not None and s.stop_confirmed
    again = ChargingSession.from_payload(json.loads(s.to_json()))
    assert again == s and again.stop_confirmed
    assert transition(again, StopAccepted(ts=T0 + 4)) == (again, {Effect.IGNORED})


def test_every_change_raises_the_version_and_a_stale_power_report_is_ignored() -> None:
    """Two instances may apply a device's reports out of order: a report whose duration
    (the device's own clock of the order) is below the session's sets nothing back."""
    s, _ = run([requested(), power(T0 + 300, energy=0.3)])
    assert s is not None and s.version == 2 and s.duration_s > 0
    older = dataclasses.replace(power(T0 + 200, energy=0.2), duration_s=s.duration_s - 1)
    assert transition(s, older) == (s, IGNORED)
    newer = dataclasses.replace(power(T0 + 400, energy=0.4), duration_s=s.duration_s + 60)
    after, effects = transition(s, newer)
    assert after is not None and after.version == 3 and after.energy_kwh == 0.4
    assert Effect.CHANGED in effects


# --- the power report's fast path against its definition (docs/performance.md, p-event) ---


def powered_by_definition(
    session: ChargingSession | None, event: PowerReported, window: float
) -> ChargingSession:
    """What a power report makes of a session, as it was written with `_noted`
    (`dataclasses.replace`), which `_powered` must equal, field for field."""
    from bridge.charging import model

    base = session or ChargingSession(
        session_id=event.order_no,
        device_id=event.device_id,
        port=event.port,
        status="charging",
        start_time=event.ts,
        last_update=event.ts,
    )
    kwh, anchor = model.energy.advance(
        base.energy_kwh_estimated,
        base.energy_anchor,
        model.Sample(event.ts, event.power_w),
        window,
        event.ts - event.duration_s,
    )
    status = "stopping" if base.status == "stopping" else "charging"
    return model._noted(
        base,
        event,
        status=status,
        port=event.port,
        end_time=None,
        stop_reason=None if session is None or base.status == "failed" else base.stop_reason,
        energy_kwh_estimated=kwh,
        energy_anchor=anchor,
        power_w=event.power_w,
        energy_kwh=event.energy_kwh,
        duration_s=event.duration_s,
        max_power_w=max(base.max_power_w, event.max_power_w or 0.0, event.power_w),
        voltage_v=event.voltage_v,
        current_a=event.current_a,
        temperature_c=event.temperature_c,
    )


def test_powered_names_every_field_of_a_session() -> None:
    """`_powered` builds a session field by field: a field added to `ChargingSession` must be
    added there (and to the definition above), or a power report would reset it."""
    import inspect

    from bridge.charging import model

    source = inspect.getsource(model._powered)
    missing = [f.name for f in dataclasses.fields(ChargingSession) if f"{f.name}=" not in source]
    assert missing == []


maybe_floats = st.none() | st.floats(allow_nan=False, allow_infinity=False)
statuses = st.sampled_from(["starting", "charging", "stopping", "failed", "timeout"])


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=4000),  # seconds after the previous report
            st.integers(min_value=0, max_value=600),  # duration_s added
            st.floats(min_value=-10, max_value=4000),  # power_w
            maybe_floats,
            maybe_floats,
            st.booleans(),  # `at` set
        ),
        min_size=1,
        max_size=60,
    ),
    statuses,
    st.none() | st.text(max_size=5),
    st.sampled_from([30.0, 60.0, 300.0]),
)
def test_a_power_report_changes_what_noted_would(
    reports: list[tuple[float, int, float, float | None, float | None, bool]],
    status: str,
    reason: str | None,
    window: float,
) -> None:
    session: ChargingSession | None = None
    ts, duration = T0, 0
    for k, (gap, more, watts, volts, peak, at) in enumerate(reports):
        ts, duration = ts + gap, duration + more
        event = power(
            ts,
            energy=duration / 1000,
            watts=watts,
            duration_s=duration,
            voltage_v=volts,
            max_power_w=peak,
            at=ts + 0.5 if at else None,
        )
        if session is not None and k == 1:  # a state other than `charging`, once
            session = dataclasses.replace(session, status=status, stop_reason=reason)
        expected = powered_by_definition(session, event, window)
        got, effects = transition(session, event, energy_window=window)
        assert got == expected
        assert got is not None and got.energy_anchor == expected.energy_anchor
        assert Effect.POWER_APPLIED in effects
        session = got
