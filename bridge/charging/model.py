"""The charging-session state machine, pure: no I/O, no clock, no randomness.

`transition(session, event)` returns the next session (or None when it is cleared) and the
set of `Effect`s the service acts on (persist and publish, clear the retained message) and
that `ChargingStats.tally` counts. Times are Unix seconds (float) passed in by the caller;
the service formats them as ISO 8601 on MQTT (API.md section 2).

Lifecycle (API.md section 6): a start request creates `starting`; the device's accepting
0x82 reply or a 0x06 makes it `charging`; a 0x06 or 0x03 for an unknown order creates it
(card and offline starts); 0x03 completes it exactly once; no update for `session_timeout`
marks it `timeout`, from which a late 0x03 (or a 0x06) still brings it back.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, get_args

SessionStatus = Literal["starting", "charging", "stopping", "completed", "failed", "timeout"]
STATUSES: tuple[str, ...] = get_args(SessionStatus)
ACTIVE: frozenset[str] = frozenset({"starting", "charging", "stopping"})
# Sessions in these states are cleared `retention` seconds after their last change.
EXPIRING: frozenset[str] = frozenset({"completed", "failed", "timeout"})
MAX_EVENTS = 50


def iso(ts: float) -> str:
    """Unix seconds -> `2026-11-26T08:19:00.123Z` (API.md section 2)."""
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """ISO 8601 (with `Z` or an offset; naive means UTC) -> Unix seconds."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# --- events (inputs) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    """Base: `ts` is when it happened (Unix s); `kind` is the `type` in the session's events.

    `at` is when the service applied it (default `ts`); it sets `last_update`, so that the
    timeout measures silence as the service sees it, whatever the gateway's clock says and
    however long the event waited in the broker's queue.
    """

    kind: ClassVar[str] = ""
    ts: float
    at: float | None = field(default=None, kw_only=True)

    def record(self) -> dict[str, Any]:
        """The entry kept in the session's `events` list: `{"ts", "type", ...fields}`."""
        entry: dict[str, Any] = {"ts": iso(self.ts), "type": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name not in ("ts", "at", "order_no", "device_id"):
                entry[f.name] = value
        return entry


@dataclass(frozen=True, slots=True)
class StartRequested(_Event):
    """A `charging/request/start` was accepted; `port` None means "device chooses"."""

    kind: ClassVar[str] = "start_requested"
    order_no: str
    device_id: str
    port: int | None


@dataclass(frozen=True, slots=True)
class StartAccepted(_Event):
    """The device carried out the 0x82 start; `port` is the port it reports (1-based)."""

    kind: ClassVar[str] = "started"
    port: int | None = None


@dataclass(frozen=True, slots=True)
class StartRefused(_Event):
    """The device refused the start, or the command timed out or found it offline."""

    kind: ClassVar[str] = "start_failed"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StopRequested(_Event):
    kind: ClassVar[str] = "stop_requested"


@dataclass(frozen=True, slots=True)
class StopAccepted(_Event):
    kind: ClassVar[str] = "stopped"


@dataclass(frozen=True, slots=True)
class StopRefused(_Event):
    kind: ClassVar[str] = "stop_failed"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PowerReported(_Event):
    """A 0x06 port power report, SI units; `energy_kwh` is the order's total so far."""

    kind: ClassVar[str] = "power"
    order_no: str
    device_id: str
    port: int
    power_w: float
    energy_kwh: float
    duration_s: int
    max_power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None


@dataclass(frozen=True, slots=True)
class Settled(_Event):
    """A 0x03 settlement: the device's final figures for the whole session."""

    kind: ClassVar[str] = "settled"
    order_no: str
    device_id: str
    port: int
    energy_kwh: float
    duration_s: int
    max_power_w: float
    stop_reason: str | None = None
    card_id: str | None = None


@dataclass(frozen=True, slots=True)
class Tick(_Event):
    """Time passes: `timeout` and retention are checked against `ts`."""

    kind: ClassVar[str] = "timeout"
    session_timeout: float = math.inf
    retention: float = math.inf

    def record(self) -> dict[str, Any]:
        return {"ts": iso(self.ts), "type": self.kind}


Event = (
    StartRequested
    | StartAccepted
    | StartRefused
    | StopRequested
    | StopAccepted
    | StopRefused
    | PowerReported
    | Settled
    | Tick
)


class Effect(enum.Enum):
    """What a transition did; the service and the statistics act on these."""

    CHANGED = "changed"  # persist and republish the session
    CREATED = "created"
    CHARGING_STARTED = "charging_started"  # entered `charging` for the first time
    POWER_APPLIED = "power_applied"
    STOP_APPLIED = "stop_applied"  # a `stopped` reply or the completing settlement
    COMPLETED = "completed"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"  # retention over: clear the retained message
    DUPLICATE = "duplicate"  # a resent settlement: nothing changes
    IGNORED = "ignored"  # the event does not apply to the session in its state


# --- the session -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChargingSession:
    """One charging order; `session_id` is the order number (32 upper-case hex)."""

    session_id: str
    device_id: str
    port: int | None
    status: SessionStatus
    start_time: float
    last_update: float
    end_time: float | None = None
    duration_s: int = 0
    energy_kwh: float = 0.0
    max_power_w: float = 0.0
    power_w: float = 0.0
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None
    stop_reason: str | None = None
    # The most recent events as compact JSON texts, newest last: each is serialised once,
    # when it happens, not again on every later update of the session (see `to_json`).
    events: tuple[str, ...] = field(default=())

    @property
    def order_no(self) -> str:
        return self.session_id

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def records(self) -> list[dict[str, Any]]:
        """The events as dicts (`{"ts", "type", ...}`), oldest first."""
        return [json.loads(text) for text in self.events]

    def to_json(self) -> str:
        """The retained payload as compact JSON: stored and published from this one text."""
        head = json.dumps(self._head(), separators=(",", ":"))
        return f'{head[:-1]},"events":[{",".join(self.events)}]}}'

    def to_payload(self) -> dict[str, Any]:
        """The retained `{b}/sessions/{session_id}` payload, exactly as API.md section 6."""
        return {**self._head(), "events": self.records}

    def _head(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "device_id": self.device_id,
            "port": self.port,
            "order_no": self.session_id,
            "status": self.status,
            "start_time": iso(self.start_time),
            "end_time": None if self.end_time is None else iso(self.end_time),
            "duration_s": self.duration_s,
            "energy_kwh": self.energy_kwh,
            "max_power_w": self.max_power_w,
            "power_w": self.power_w,
            "voltage_v": self.voltage_v,
            "current_a": self.current_a,
            "temperature_c": self.temperature_c,
            "stop_reason": self.stop_reason,
            "last_update": iso(self.last_update),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ChargingSession:
        """Inverse of `to_payload` (store and adopted retained messages); raises ValueError."""
        try:
            status = payload["status"]
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r}")
            end = payload.get("end_time")
            return cls(
                session_id=str(payload["session_id"]),
                device_id=str(payload["device_id"]),
                port=None if payload.get("port") is None else int(payload["port"]),
                status=status,
                start_time=parse_iso(payload["start_time"]),
                last_update=parse_iso(payload["last_update"]),
                end_time=None if end is None else parse_iso(end),
                duration_s=int(payload.get("duration_s") or 0),
                energy_kwh=float(payload.get("energy_kwh") or 0.0),
                max_power_w=float(payload.get("max_power_w") or 0.0),
                power_w=float(payload.get("power_w") or 0.0),
                voltage_v=_opt_float(payload.get("voltage_v")),
                current_a=_opt_float(payload.get("current_a")),
                temperature_c=_opt_float(payload.get("temperature_c")),
                stop_reason=payload.get("stop_reason"),
                events=tuple(
                    json.dumps(dict(e), separators=(",", ":"))
                    for e in (payload.get("events") or ())[-MAX_EVENTS:]
                ),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a session payload: {exc!r}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _noted(session: ChargingSession, event: Event, **changes: Any) -> ChargingSession:
    """`session` with `changes`, the event appended to its history and `last_update` moved."""
    events = (*session.events, json.dumps(event.record(), separators=(",", ":")))[-MAX_EVENTS:]
    now = event.ts if event.at is None else event.at
    return dataclasses.replace(session, events=events, last_update=now, **changes)


def _measures(event: PowerReported, session: ChargingSession) -> dict[str, Any]:
    return {
        "power_w": event.power_w,
        "energy_kwh": event.energy_kwh,
        "duration_s": event.duration_s,
        "max_power_w": max(session.max_power_w, event.max_power_w or 0.0, event.power_w),
        "voltage_v": event.voltage_v,
        "current_a": event.current_a,
        "temperature_c": event.temperature_c,
    }


def _settle(session: ChargingSession, event: Settled) -> ChargingSession:
    return _noted(
        session,
        event,
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
_IGNORED: frozenset[Effect] = frozenset({Effect.IGNORED})


def _fx(*effects: Effect) -> frozenset[Effect]:
    return frozenset((Effect.CHANGED, *effects))


def _create(event: Event) -> Result:
    if isinstance(event, StartRequested):
        port: int | None = event.port
        status: SessionStatus = "starting"
    elif isinstance(event, PowerReported | Settled):
        port, status = event.port, "charging"
    else:
        return None, _IGNORED
    new = ChargingSession(
        session_id=event.order_no,
        device_id=event.device_id,
        port=port,
        status=status,
        start_time=event.ts,
        last_update=event.ts,
    )
    if isinstance(event, PowerReported):
        changed = _noted(new, event, **_measures(event, new))
        effects = _fx(Effect.CREATED, Effect.CHARGING_STARTED, Effect.POWER_APPLIED)
        return changed, effects
    if isinstance(event, Settled):
        # Only the settlement is known: the session began `duration_s` before it.
        new = dataclasses.replace(new, start_time=event.ts - event.duration_s)
        return _settle(new, event), _fx(Effect.CREATED, Effect.COMPLETED, Effect.STOP_APPLIED)
    return _noted(new, event), _fx(Effect.CREATED)


def transition(session: ChargingSession | None, event: Event) -> Result:
    """The next state of `session` (None: unknown order) after `event`, and the effects."""
    if session is None:
        return _create(event)
    status = session.status
    if isinstance(event, Tick):
        return _tick(session, event)
    if isinstance(event, Settled):
        if status == "completed":
            return session, frozenset({Effect.DUPLICATE})
        return _settle(session, event), _fx(Effect.COMPLETED, Effect.STOP_APPLIED)
    if isinstance(event, PowerReported):
        if status == "completed":
            return session, _IGNORED
        # A power report proves the port is charging this order: it revives a timed-out
        # session and corrects a start that failed only because its reply was lost.
        next_status: SessionStatus = "stopping" if status == "stopping" else "charging"
        new = _noted(session, event, status=next_status, port=event.port, end_time=None)
        new = dataclasses.replace(new, **_measures(event, session))
        if status == "failed":
            new = dataclasses.replace(new, stop_reason=None)
        if status in ("starting", "failed"):
            return new, _fx(Effect.POWER_APPLIED, Effect.CHARGING_STARTED)
        return new, _fx(Effect.POWER_APPLIED)
    if isinstance(event, StartAccepted):
        if status != "starting":
            return session, _IGNORED
        port = event.port if event.port is not None else session.port
        return _noted(session, event, status="charging", port=port), _fx(Effect.CHARGING_STARTED)
    if isinstance(event, StartRefused):
        if status != "starting":
            return session, _IGNORED
        new = _noted(session, event, status="failed", end_time=event.ts, stop_reason=event.reason)
        return new, _fx()
    if isinstance(event, StopRequested):
        if status not in ("starting", "charging", "timeout"):
            return session, _IGNORED
        return _noted(session, event, status="stopping"), _fx()
    if isinstance(event, StopAccepted):
        # Both the `stopped` order event and the command's response report the same reply.
        if status != "stopping" or _stop_confirmed(session):
            return session, _IGNORED
        return _noted(session, event), _fx(Effect.STOP_APPLIED)
    if isinstance(event, StopRefused):
        if status != "stopping":
            return session, _IGNORED
        return _noted(session, event, status="charging"), _fx()
    return session, _IGNORED  # StartRequested for an order that exists


def _stop_confirmed(session: ChargingSession) -> bool:
    """Whether the device already confirmed the latest stop request."""
    for text in reversed(session.events):
        entry = json.loads(text)
        if entry["type"] in (StopAccepted.kind, StopRequested.kind):
            return bool(entry["type"] == StopAccepted.kind)
    return False


def _tick(session: ChargingSession, tick: Tick) -> Result:
    if session.status in ACTIVE and tick.ts - session.last_update >= tick.session_timeout:
        return _noted(session, tick, status="timeout"), _fx(Effect.TIMED_OUT)
    if session.status in EXPIRING:
        since = session.end_time if session.end_time is not None else session.last_update
        if tick.ts - max(since, session.last_update) >= tick.retention:
            return None, frozenset({Effect.EXPIRED})
    return session, frozenset()


# --- statistics ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChargingStats:
    """The counters of `{b}/charging/stats`; sums are kept so averages survive restarts.

    docs/charging.md says precisely what each counter counts.
    """

    total_events_processed: int = 0
    charging_start_events: int = 0
    charging_stop_events: int = 0
    power_update_events: int = 0
    sessions_created: int = 0
    sessions_completed: int = 0
    sessions_timeout: int = 0
    processing_errors: int = 0
    retry_attempts: int = 0
    duplicate_events: int = 0
    total_energy_delivered_kwh: float = 0.0
    total_duration_s: int = 0
    total_processing_time_ms: float = 0.0
    processing_samples: int = 0

    def tally(self, effects: frozenset[Effect], session: ChargingSession | None) -> ChargingStats:
        """Count the effects of one transition; `session` is the session after it."""
        if not effects or effects == _IGNORED:
            return self
        completed = Effect.COMPLETED in effects and session is not None
        energy = session.energy_kwh if completed and session is not None else 0.0
        duration = session.duration_s if completed and session is not None else 0
        return dataclasses.replace(
            self,
            charging_start_events=self.charging_start_events + (Effect.CHARGING_STARTED in effects),
            charging_stop_events=self.charging_stop_events + (Effect.STOP_APPLIED in effects),
            power_update_events=self.power_update_events + (Effect.POWER_APPLIED in effects),
            sessions_created=self.sessions_created + (Effect.CREATED in effects),
            sessions_completed=self.sessions_completed + completed,
            sessions_timeout=self.sessions_timeout + (Effect.TIMED_OUT in effects),
            duplicate_events=self.duplicate_events + (Effect.DUPLICATE in effects),
            total_energy_delivered_kwh=round(self.total_energy_delivered_kwh + energy, 6),
            total_duration_s=self.total_duration_s + duration,
        )

    def add(self, **counts: int | float) -> ChargingStats:
        """Increment the named counters, e.g. `stats.add(processing_errors=1)`."""
        return dataclasses.replace(
            self, **{name: getattr(self, name) + value for name, value in counts.items()}
        )

    def to_payload(self, active_sessions: int, updated_at: float) -> dict[str, Any]:
        """The retained `{b}/charging/stats` payload (API.md section 6, plus duplicates)."""
        done = self.sessions_completed
        samples = self.processing_samples
        return {
            "total_events_processed": self.total_events_processed,
            "charging_start_events": self.charging_start_events,
            "charging_stop_events": self.charging_stop_events,
            "power_update_events": self.power_update_events,
            "sessions_created": self.sessions_created,
            "sessions_completed": done,
            "sessions_timeout": self.sessions_timeout,
            "processing_errors": self.processing_errors,
            "retry_attempts": self.retry_attempts,
            "duplicate_events": self.duplicate_events,
            "active_sessions": active_sessions,
            "total_energy_delivered_kwh": round(self.total_energy_delivered_kwh, 3),
            "average_session_duration_s": round(self.total_duration_s / done, 1) if done else 0.0,
            "average_processing_time_ms": (
                round(self.total_processing_time_ms / samples, 3) if samples else 0.0
            ),
            "updated_at": iso(updated_at),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ChargingStats:
        """Rebuild from a retained stats message (adoption); sums from averages x counts."""
        counters = {
            f.name: int(payload.get(f.name) or 0)
            for f in dataclasses.fields(cls)
            if f.type == "int" and f.name not in ("total_duration_s", "processing_samples")
        }
        done = counters["sessions_completed"]
        processed = counters["total_events_processed"]
        return cls(
            **counters,
            total_energy_delivered_kwh=float(payload.get("total_energy_delivered_kwh") or 0.0),
            total_duration_s=round(float(payload.get("average_session_duration_s") or 0) * done),
            total_processing_time_ms=float(payload.get("average_processing_time_ms") or 0)
            * processed,
            processing_samples=processed,
        )
