"""The service's hand-written JSON texts (branch p-svc, docs/performance.md) against the json
module and datetime they replace: byte for byte, for many random values and sessions."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.charging import jsontext
from bridge.charging.events import slow_iso
from bridge.charging.model import (
    ChargingSession,
    ChargingStats,
    Confirmed,
    Effect,
    Event,
    PortHeartbeat,
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
    transition,
)
from bridge.charging.store.base import SessionTexts, stats_json

ORDER = "0123456789ABCDEF0123456789ABCDEF"
DEV = "04AB373B"
T0 = 1_790_000_000.0


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and the infinities included
    st.text(),  # quotes, control characters, non-ASCII, surrogates
)


@given(scalars)
def test_a_value_is_written_as_json_dumps_writes_it(value: Any) -> None:
    assert jsontext.value(value) == dumps(value)


@given(st.lists(scalars | st.floats(width=32), max_size=20))
def test_the_remembered_texts_of_numbers_are_json_dumps_texts(values: list[Any]) -> None:
    """`number` and `string` (the fast writers) write any value as `json.dumps` does, the
    first time and again from `number`'s memory, whatever came before (0.0 after -0.0)."""
    for v in [*values, *values, 0.0, -0.0, 0.0, 1.0, 1, True, -0.0]:
        assert jsontext.number(v) == dumps(v)
        assert jsontext.string(v) == dumps(v)


def test_the_numbers_remembered_are_bounded() -> None:
    for k in range(3 * jsontext._MAX_FLOATS):
        assert jsontext.number(k + 0.5) == repr(k + 0.5)
    assert 0 < len(jsontext._FLOATS) <= jsontext._MAX_FLOATS


def test_what_is_not_a_flat_value_goes_to_json_dumps() -> None:
    for value in ([1, "a", None], {"k": [1.5]}, (1, 2)):
        assert jsontext.value(value) == dumps(value)
    assert jsontext.key('a"b') == '"a\\"b":'


# Seconds datetime can format, and times on and beside millisecond and rounding boundaries.
times = st.one_of(
    st.floats(min_value=-62_135_596_800.0, max_value=253_402_300_799.0),
    st.integers(min_value=1_000_000_000_000, max_value=2_000_000_000_000).map(lambda ms: ms / 1000),
    st.integers(min_value=0, max_value=10**15).map(lambda us: us / 1e6 + 1_700_000_000),
    st.integers(min_value=-(10**6), max_value=10**6).map(lambda k: T0 + k * 0.0005),
)


@given(times)
def test_iso_is_what_datetime_writes(ts: float) -> None:
    assert iso(ts) == slow_iso(ts)


def test_iso_refuses_what_datetime_refuses() -> None:
    for ts in (math.nan, math.inf, -math.inf, 1e20):
        try:
            slow_iso(ts)
        except (ValueError, OverflowError, OSError) as exc:
            expected: type[BaseException] | None = type(exc)
        else:
            expected = None
        try:
            got = iso(ts)
        except (ValueError, OverflowError, OSError) as exc:
            assert type(exc) is expected
        else:
            assert expected is None and got == slow_iso(ts)


floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
maybe = st.none() | floats
words = st.text(max_size=12)


@st.composite
def events(draw: st.DrawFn) -> Event:
    ts = T0 + draw(st.floats(min_value=0, max_value=86400 * 3))
    at = draw(st.none() | st.just(ts + 1.25))
    port = draw(st.integers(min_value=1, max_value=254))
    kind = draw(st.integers(min_value=0, max_value=10))
    ids = {"order_no": ORDER, "device_id": DEV}
    if kind == 0:
        return PowerReported(
            ts=ts,
            at=at,
            port=port,
            power_w=draw(floats),
            energy_kwh=draw(floats),
            duration_s=draw(st.integers(min_value=0, max_value=10**6)),
            max_power_w=draw(maybe),
            voltage_v=draw(maybe),
            current_a=draw(maybe),
            temperature_c=draw(maybe),
            **ids,
        )
    if kind == 1:
        return Settled(
            ts=ts,
            at=at,
            port=port,
            energy_kwh=draw(floats),
            duration_s=draw(st.integers(min_value=0, max_value=10**6)),
            max_power_w=draw(floats),
            stop_reason=draw(st.none() | words),
            card_id=draw(st.none() | words),
            **ids,
        )
    if kind == 2:
        return Confirmed(
            ts=ts,
            at=at,
            port=port,
            duration_s=draw(st.integers(min_value=0, max_value=10**6)),
            start_mode=draw(st.none() | words),
            card_id=draw(st.none() | words),
            **ids,
        )
    simple: list[Event] = [
        StartRequested(ts=ts, at=at, port=draw(st.none() | st.just(port)), **ids),
        StartAccepted(ts=ts, at=at, port=draw(st.none() | st.just(port))),
        StartRefused(ts=ts, at=at, reason=draw(words)),
        StopRequested(ts=ts, at=at),
        StopAccepted(ts=ts, at=at),
        StopRefused(ts=ts, at=at, reason=draw(words)),
        PortHeartbeat(ts=ts, at=at, port=port, power_w=draw(maybe)),
        Tick(ts=ts, session_timeout=draw(st.sampled_from([60.0, math.inf]))),
    ]
    return simple[kind - 3]


@given(events())
def test_an_entry_is_json_dumps_of_its_record(event: Event) -> None:
    assert event.to_json() == dumps(event.record())


@settings(max_examples=200)
@given(st.lists(events(), min_size=1, max_size=80))
def test_a_session_and_its_cached_texts_are_json_dumps_of_its_payload(
    history: list[Event],
) -> None:
    """Every state a random history goes through, written directly and through the store's
    cache of entry texts, is the text `json.dumps` makes of its payload."""
    texts = SessionTexts()
    session: ChargingSession | None = None
    for event in [StartRequested(ts=T0, order_no=ORDER, device_id=DEV, port=None), *history]:
        session, _ = transition(session, event, energy_window=30.0)
        if session is None:
            break
        expected = dumps(session.to_payload())
        assert session.to_json() == expected
        assert texts.session_json(session) == expected


def tally_by_definition(
    stats: ChargingStats, effects: frozenset[Effect], session: ChargingSession | None
) -> ChargingStats:
    """`tally` as it was written with `dataclasses.replace` (what the fast one must equal)."""
    if not effects or effects == frozenset({Effect.IGNORED}):
        return stats
    completed = Effect.COMPLETED in effects and session is not None
    return stats.add(
        charging_start_events=Effect.CHARGING_STARTED in effects,
        charging_stop_events=Effect.STOP_APPLIED in effects,
        power_update_events=Effect.POWER_APPLIED in effects,
        sessions_created=Effect.CREATED in effects,
        sessions_completed=completed,
        sessions_timeout=Effect.TIMED_OUT in effects,
        duplicate_events=Effect.DUPLICATE in effects,
        total_energy_delivered_kwh=session.energy_kwh if completed and session else 0.0,
        total_duration_s=session.duration_s if completed and session else 0,
    )


@given(st.lists(events(), min_size=1, max_size=40), st.integers(min_value=0, max_value=1))
def test_tally_counts_as_defined(history: list[Event], processed: int) -> None:
    stats = ChargingStats(retry_attempts=3, processing_errors=2, total_processing_time_ms=1.5)
    session: ChargingSession | None = None
    for event in history:
        session, effects = transition(session, event)
        expected = tally_by_definition(stats, effects, session).add(
            total_events_processed=processed
        )
        expected = dataclasses.replace(
            expected, total_energy_delivered_kwh=round(expected.total_energy_delivered_kwh, 6)
        )
        stats_after = stats.tally(effects, session, processed)
        assert stats_after == expected
        stats = stats_after
    assert json.loads(stats_json(stats)) == stats.as_dict()


def test_add_refuses_a_counter_that_does_not_exist() -> None:
    try:
        ChargingStats().add(no_such_counter=1)
    except TypeError as exc:
        assert "no_such_counter" in str(exc)
    else:
        raise AssertionError("add accepted an unknown counter")
