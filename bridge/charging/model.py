"""The charging-session model and state machine, pure: no I/O, no clock, no randomness.

`transition(session, event)` returns the next session (or None when it is cleared) and the
set of `Effect`s the service acts on (persist and publish, clear the retained message) and
that `ChargingStats.tally` counts. Times are Unix seconds (float) passed in by the caller;
the service formats them as ISO 8601 on MQTT (API.md section 2).

Lifecycle (API.md section 6): a start request creates `starting`; the device's accepting
0x82 reply or a 0x06 makes it `charging`; a 0x06 or 0x03 for an unknown order creates it
(card and offline starts); 0x03 completes it exactly once; no update for `session_timeout`
marks it `timeout`, from which a late 0x03 (or a 0x06) still brings it back.

Legacy piles (no 0x06): their 0x04 confirmation creates the session (offline starts) or
confirms a `starting` one, and a heartbeat that reports the port charging keeps the session
alive, its 0x01 per-port power becoming the live `power_w`. Every live power report also
advances `energy_kwh_estimated` (`bridge.charging.energy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from bridge.charging import energy, jsontext
from bridge.charging.energy import Sample
from bridge.charging.events import (
    IGNORED,
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
    parse_iso,
    read_record,
)
from bridge.charging.stats import ChargingStats
from bridge.mqtt.payloads import ChargingSessionPayload

__all__ = [
    "ACTIVE",
    "EXPIRING",
    "IGNORED",
    "MAX_EVENTS",
    "STATUSES",
    "ChargingSession",
    "ChargingStats",
    "Confirmed",
    "Effect",
    "Event",
    "PortHeartbeat",
    "PowerReported",
    "Result",
    "SessionStatus",
    "Settled",
    "StartAccepted",
    "StartRefused",
    "StartRequested",
    "StopAccepted",
    "StopRefused",
    "StopRequested",
    "Tick",
    "iso",
    "parse_iso",
    "transition",
]

SessionStatus = Literal["starting", "charging", "stopping", "completed", "failed", "timeout"]
STATUSES: tuple[str, ...] = get_args(SessionStatus)
ACTIVE: frozenset[str] = frozenset({"starting", "charging", "stopping"})
# Sessions in these states are cleared `retention` seconds after their last change.
EXPIRING: frozenset[str] = frozenset({"completed", "failed", "timeout"})
MAX_EVENTS = 50


# --- the session -----------------------------------------------------------------
# Payload keys that are Unix seconds in the model and ISO 8601 text on MQTT.
_TIMES = frozenset({"start_time", "end_time", "last_update"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargingSession:
    """One charging order; `session_id` is the order number (32 upper-case hex).

    Its payload (`to_payload`, `to_json`, `from_payload`) is the retained
    `{b}/sessions/{session_id}` message of API.md section 6, field for field in this order,
    with `order_no` repeated after `port` and `events` (the history, oldest first, at most
    `MAX_EVENTS`) last. `stop_confirmed` is state, not payload: the device confirmed the
    latest stop request (it is read back from the history once, when a payload is read).
    """

    session_id: str
    device_id: str
    port: int | None
    status: SessionStatus
    start_time: float
    end_time: float | None = None
    duration_s: int = 0
    energy_kwh: float = 0.0
    energy_kwh_estimated: float = 0.0
    max_power_w: float = 0.0
    power_w: float = 0.0
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None
    stop_reason: str | None = None
    last_update: float
    # +1 with every change (`_noted`): the order of a session's states across instances.
    version: int = 0
    events: tuple[Event, ...] = ()
    stop_confirmed: bool = False
    # The estimate's last integrated power sample (bridge.charging.energy). State, not
    # payload: read back as the newest power sample of the history, which is what it is
    # unless the newest came less than a calculation window after it, hence not compared.
    energy_anchor: Sample | None = dataclasses.field(default=None, compare=False)

    @property
    def order_no(self) -> str:
        return self.session_id

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def records(self) -> list[dict[str, Any]]:
        """The history as published: `{"ts", "type", ...}` dicts, oldest first."""
        return [event.record() for event in self.events]

    def head(self) -> dict[str, Any]:
        """The payload without `events`, in payload order."""
        out = {name: getattr(self, name) for name in _HEAD}
        out["start_time"] = iso(self.start_time)
        out["last_update"] = iso(self.last_update)
        if self.end_time is not None:
            out["end_time"] = iso(self.end_time)
        return out

    def to_payload(self) -> dict[str, Any]:
        """The retained `{b}/sessions/{session_id}` payload, exactly as API.md section 6."""
        return {**self.head(), "events": self.records}

    def to_json(self, events: Sequence[str] | None = None) -> str:
        """The payload as compact JSON, the same text as `json.dumps(self.to_payload(),
        separators=(",", ":"))`; `events` are the history entries already serialised (the
        store caches them, so that each entry is serialised once, not on every update).

        Written as one f-string, field by field in payload order (`jsontext`: the texts
        `json.dumps` writes), rather than through a dict and `json.dumps`, or a loop over the
        fields: this runs for every changed session of every batch. The tests compare it with
        `json.dumps(self.to_payload())`, whose keys come from `ChargingSessionPayload`."""
        texts = [e.to_json() for e in self.events] if events is None else events
        return (
            f'{{"session_id":{_str(self.session_id)},"device_id":{_str(self.device_id)},'
            f'"port":{_value(self.port)},"order_no":{_str(self.session_id)},'
            f'"status":{_str(self.status)},"start_time":{_time(self.start_time)},'
            f'"end_time":{_time(self.end_time)},"duration_s":{_value(self.duration_s)},'
            f'"energy_kwh":{_num(self.energy_kwh)},'
            f'"energy_kwh_estimated":{_num(self.energy_kwh_estimated)},'
            f'"max_power_w":{_num(self.max_power_w)},"power_w":{_num(self.power_w)},'
            f'"voltage_v":{_num(self.voltage_v)},"current_a":{_num(self.current_a)},'
            f'"temperature_c":{_num(self.temperature_c)},'
            f'"stop_reason":{_value(self.stop_reason)},"last_update":{_time(self.last_update)},'
            f'"version":{_value(self.version)},"events":[{",".join(texts)}]}}'
        )

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ChargingSession:
        """Inverse of `to_payload` (store and adopted retained messages); raises ValueError
        naming what is wrong."""
        data = dict(ChargingSessionPayload.model_validate(payload))
        del data["order_no"]
        for name in _TIMES:
            if data[name] is not None:
                data[name] = parse_iso(data[name])
        sid, dev = data["session_id"], data["device_id"]
        events = tuple(read_record(e, sid, dev) for e in data.pop("events")[-MAX_EVENTS:])
        return cls(
            **data,
            events=events,
            stop_confirmed=_stop_confirmed(events),
            energy_anchor=_last_sample(events),
        )


_HEAD: tuple[str, ...] = tuple(
    name for name in ChargingSessionPayload.model_fields if name != "events"
)


_str, _num, _value = jsontext.string, jsontext.number, jsontext.value


def _time(ts: float | None) -> str:
    return "null" if ts is None else f'"{iso(ts)}"'  # iso's text needs no escapes


def _stop_confirmed(events: Sequence[Event]) -> bool:
    """Whether the device confirmed the latest stop request: read once, from a payload."""
    for event in reversed(events):
        if isinstance(event, StopAccepted | StopRequested):
            return isinstance(event, StopAccepted)
    return False


def _last_sample(events: Sequence[Event]) -> Sample | None:
    """The newest live power sample of a history (the estimate's anchor, read back)."""
    for event in reversed(events):
        if isinstance(event, PowerReported | PortHeartbeat) and event.power_w is not None:
            return Sample(event.ts, event.power_w)
    return None


def _noted(session: ChargingSession, event: Event, **changes: Any) -> ChargingSession:
    """`session` with `changes`, the event appended to its history and `last_update` moved."""
    events = (*session.events, event)[-MAX_EVENTS:]
    now = event.ts if event.at is None else event.at
    return dataclasses.replace(
        session, events=events, last_update=now, version=session.version + 1, **changes
    )


def _estimate(
    session: ChargingSession, ts: float, power_w: float, window: float, start: float
) -> dict[str, Any]:
    """The estimate's fields after a live power sample."""
    kwh, anchor = energy.advance(
        session.energy_kwh_estimated, session.energy_anchor, Sample(ts, power_w), window, start
    )
    return {"energy_kwh_estimated": kwh, "energy_anchor": anchor}


def _powered(
    session: ChargingSession,
    event: PowerReported,
    status: SessionStatus,
    stop_reason: str | None,
    window: float,
) -> ChargingSession:
    """`session` after a 0x06 power report: `_noted` with the report's measures, the
    estimate advanced, `port` the report's and `end_time` cleared.

    Built in one call, field by field, rather than through `_noted`'s
    `dataclasses.replace` and a dict of changes: this runs for every power report, and that
    way costs about three times as much. Every field is named, so one added to
    `ChargingSession` must be added here: `test_a_power_report_changes_what_noted_would`
    compares this with the `_noted` definition."""
    kwh, anchor = energy.advance(
        session.energy_kwh_estimated,
        session.energy_anchor,
        Sample(event.ts, event.power_w),
        window,
        event.ts - event.duration_s,
    )
    peak = event.max_power_w
    return ChargingSession(
        session_id=session.session_id,
        device_id=session.device_id,
        port=event.port,
        status=status,
        start_time=session.start_time,
        end_time=None,
        duration_s=event.duration_s,
        energy_kwh=event.energy_kwh,
        energy_kwh_estimated=kwh,
        max_power_w=max(session.max_power_w, peak or 0.0, event.power_w),
        power_w=event.power_w,
        voltage_v=event.voltage_v,
        current_a=event.current_a,
        temperature_c=event.temperature_c,
        stop_reason=stop_reason,
        last_update=event.ts if event.at is None else event.at,
        version=session.version + 1,
        events=(*session.events, event)[-MAX_EVENTS:],
        stop_confirmed=session.stop_confirmed,
        energy_anchor=anchor,
    )


def _settle(session: ChargingSession, event: Settled, window: float) -> ChargingSession:
    estimate = energy.close(session.energy_kwh_estimated, session.energy_anchor, event.ts, window)
    return _noted(
        session,
        event,
        energy_kwh_estimated=estimate,
        energy_anchor=None,
        status="completed",
        port=event.port,
        end_time=event.ts,
        energy_kwh=event.energy_kwh,
        duration_s=event.duration_s,
        max_power_w=max(session.max_power_w, event.max_power_w),
        power_w=0.0,
        stop_reason=event.stop_reason,
    )


Result = tuple[ChargingSession | None, frozenset[Effect]]


def _fx(*effects: Effect) -> frozenset[Effect]:
    return frozenset((Effect.CHANGED, *effects))


# A power report's effects (built once: one per event).
_POWER = _fx(Effect.POWER_APPLIED)
_POWER_STARTED = _fx(Effect.POWER_APPLIED, Effect.CHARGING_STARTED)
_POWER_CREATED = _fx(Effect.CREATED, Effect.CHARGING_STARTED, Effect.POWER_APPLIED)


def _create(event: Event, window: float) -> Result:
    if isinstance(event, StartRequested):
        port: int | None = event.port
        status: SessionStatus = "starting"
    elif isinstance(event, PowerReported | Settled | Confirmed):
        port, status = event.port, "charging"
    else:
        return None, IGNORED
    new = ChargingSession(
        session_id=event.order_no,
        device_id=event.device_id,
        port=port,
        status=status,
        start_time=event.ts,
        last_update=event.ts,
    )
    if isinstance(event, PowerReported):
        return _powered(new, event, "charging", None, window), _POWER_CREATED
    if isinstance(event, Settled):
        # Only the settlement is known: the session began `duration_s` before it.
        new = dataclasses.replace(new, start_time=event.ts - event.duration_s)
        return _settle(new, event, window), _fx(
            Effect.CREATED, Effect.COMPLETED, Effect.STOP_APPLIED
        )
    if isinstance(event, Confirmed):
        # An offline start confirmed by a legacy pile: charging since `duration_s`.
        new = dataclasses.replace(new, start_time=event.ts - event.duration_s)
        return _noted(new, event), _fx(Effect.CREATED, Effect.CHARGING_STARTED)
    return _noted(new, event), _fx(Effect.CREATED)


def transition(
    session: ChargingSession | None,
    event: Event,
    *,
    energy_window: float = energy.DEFAULT_WINDOW_S,
) -> Result:
    """The next state of `session` (None: unknown order) after `event`, and the effects;
    `energy_window` is the estimate's calculation window (`energy_calculation_window_s`)."""
    if session is None:
        return _create(event, energy_window)
    status = session.status
    if isinstance(event, PowerReported):  # first: most events are
        if status == "completed" or stale(session, event):
            return session, IGNORED
        # A power report proves the port is charging this order: it revives a timed-out
        # session and corrects a start that failed only because its reply was lost.
        next_status: SessionStatus = "stopping" if status == "stopping" else "charging"
        reason = None if status == "failed" else session.stop_reason
        new = _powered(session, event, next_status, reason, energy_window)
        if status in ("starting", "failed"):
            return new, _POWER_STARTED
        return new, _POWER
    if isinstance(event, Tick):
        return _tick(session, event)
    if isinstance(event, Settled):
        if status == "completed":
            return session, frozenset({Effect.DUPLICATE})
        return _settle(session, event, energy_window), _fx(Effect.COMPLETED, Effect.STOP_APPLIED)
    if isinstance(event, Confirmed):
        return _confirm(session, event)
    if isinstance(event, PortHeartbeat):
        return _heartbeat(session, event, energy_window)
    if isinstance(event, StartAccepted):
        if status != "starting":
            return session, IGNORED
        port = event.port if event.port is not None else session.port
        return _noted(session, event, status="charging", port=port), _fx(Effect.CHARGING_STARTED)
    if isinstance(event, StartRefused):
        if status != "starting":
            return session, IGNORED
        new = _noted(session, event, status="failed", end_time=event.ts, stop_reason=event.reason)
        return new, _fx()
    if isinstance(event, StopRequested):
        if status not in ("starting", "charging", "timeout"):
            return session, IGNORED
        return _noted(session, event, status="stopping", stop_confirmed=False), _fx()
    if isinstance(event, StopAccepted):
        # Both the `stopped` order event and the command's response report the same reply.
        if status != "stopping" or session.stop_confirmed:
            return session, IGNORED
        return _noted(session, event, stop_confirmed=True), _fx(Effect.STOP_APPLIED)
    if isinstance(event, StopRefused):
        if status != "stopping":
            return session, IGNORED
        return _noted(session, event, status="charging"), _fx()
    return session, IGNORED  # StartRequested for an order that exists


def stale(session: ChargingSession, event: PowerReported) -> bool:
    """A power report older than one already applied (two service instances may apply a
    device's reports in another order than it sent them): its `duration_s`, the device's
    own clock of the order, is below the session's. It must not set older figures back."""
    return event.duration_s < session.duration_s


def _confirm(session: ChargingSession, event: Confirmed) -> Result:
    """A 0x04 for a known order: it confirms a start (its 0x82 reply may come later or not
    at all), revives a timed-out session, and otherwise only shows the order is alive."""
    status = session.status
    if status == "completed":
        return session, IGNORED
    if status in ("starting", "failed", "timeout"):
        new = _noted(
            session, event, status="charging", port=event.port, end_time=None, stop_reason=None
        )
        if status == "timeout":
            return new, _fx()
        return new, _fx(Effect.CHARGING_STARTED)
    return _noted(session, event), _fx()


def _heartbeat(session: ChargingSession, event: PortHeartbeat, window: float) -> Result:
    """A heartbeat reported the session's port charging: the session is alive; with a
    power (0x01), that is its live power. A `starting` session is only kept alive: the
    start is decided by the device's reply or its 0x04."""
    status = session.status
    if status not in ("starting", "charging", "stopping", "timeout"):
        return session, IGNORED
    now = event.ts if event.at is None else event.at
    if status == "starting" or (event.power_w is None and status != "timeout"):
        return dataclasses.replace(session, last_update=now, version=session.version + 1), _fx()
    next_status: SessionStatus = "stopping" if status == "stopping" else "charging"
    if event.power_w is None:  # a 0x21 reviving a timed-out session
        return _noted(session, event, status=next_status, end_time=None), _fx()
    changes = _estimate(session, event.ts, event.power_w, window, session.start_time)
    new = _noted(
        session,
        event,
        status=next_status,
        end_time=None,
        power_w=event.power_w,
        max_power_w=max(session.max_power_w, event.power_w),
        **changes,
    )
    return new, _fx(Effect.POWER_APPLIED)


def _tick(session: ChargingSession, tick: Tick) -> Result:
    if session.status in ACTIVE and tick.ts - session.last_update >= tick.session_timeout:
        return _noted(session, tick, status="timeout"), _fx(Effect.TIMED_OUT)
    if session.status in EXPIRING:
        since = session.end_time if session.end_time is not None else session.last_update
        if tick.ts - max(since, session.last_update) >= tick.retention:
            return None, frozenset({Effect.EXPIRED})
    return session, frozenset()
