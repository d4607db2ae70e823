"""What happens to a charging session: the state machine's inputs, which its history keeps.

Each event is a frozen value; `record()` is the entry it makes in the session's published
`events` list (`{"ts", "type", ...fields}`), `read_record` the inverse. `Effect` is what a
transition did. Times are Unix seconds (float); on MQTT they are ISO 8601 (API.md section 2).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import TypeAdapter

from bridge.charging import jsontext
from bridge.mqtt.payloads.common import iso_utc

_num, _value = jsontext.number, jsontext.value


def slow_iso(ts: float) -> str:
    """`iso` through datetime: the definition `iso` is tested against."""
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# The last second `iso_utc` formats the same as datetime: from 1970 (a 4-digit year for
# `strftime`) to the end of year 9999 (datetime's limit).
_ISO_UTC_RANGE = (0.0, 253_402_300_799.0)


def iso(ts: float) -> str:
    """Unix seconds -> `2026-11-26T08:19:00.123Z` (API.md section 2): what `slow_iso` writes.

    The one formatter the gateway uses too (`iso_utc`: each whole second formatted once,
    three calls per event here); times outside its range, and NaN, go through datetime
    (and its errors)."""
    low, high = _ISO_UTC_RANGE
    if low <= ts < high:
        return iso_utc(ts)
    return slow_iso(ts)


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
    # Not compared: an event read back from its published record (which has no `at`) equals
    # the one that was applied, so a session read back equals the one that was written.
    at: float | None = field(default=None, kw_only=True, compare=False)

    def record(self) -> dict[str, Any]:
        """The entry published in the session's `events` list: `{"ts", "type", ...fields}`."""
        entry: dict[str, Any] = {"ts": iso(self.ts), "type": self.kind}
        for name in _record_names(type(self)):
            value = getattr(self, name)
            if value is not None:
                entry[name] = value
        return entry

    def to_json(self) -> str:
        """`record()` as compact JSON: how the store serialises (and caches) history entries.
        Written directly (`jsontext`), the same text as `json.dumps` of `record()`."""
        parts = [f'{{"ts":"{iso(self.ts)}","type":{jsontext.value(self.kind)}']
        for name in _record_names(type(self)):
            value = getattr(self, name)
            if value is not None:
                parts.append(f',"{name}":{_num(value)}')
        parts.append("}")
        return "".join(parts)


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

    def to_json(self) -> str:
        """`_Event.to_json` written out for the most frequent entry (a 0x06 every 5 minutes
        per session): the same text, tested against `json.dumps` of `record()`."""
        return (
            f'{{"ts":"{iso(self.ts)}","type":"power","port":{_value(self.port)},'
            f'"power_w":{_num(self.power_w)},"energy_kwh":{_num(self.energy_kwh)},'
            f'"duration_s":{_value(self.duration_s)}{_opt(_MAX_POWER, self.max_power_w)}'
            f"{_opt(_VOLTAGE, self.voltage_v)}{_opt(_CURRENT, self.current_a)}"
            f"{_opt(_TEMPERATURE, self.temperature_c)}}}"
        )


_MAX_POWER, _VOLTAGE = ',"max_power_w":', ',"voltage_v":'
_CURRENT, _TEMPERATURE = ',"current_a":', ',"temperature_c":'


def _opt(key: str, value: float | None) -> str:
    """`key` and the value, or nothing for None (a history entry leaves None fields out)."""
    return "" if value is None else key + _num(value)


@dataclass(frozen=True, slots=True)
class Confirmed(_Event):
    """A 0x04 order confirmation (legacy piles, which send no 0x06): the order is charging
    on `port` since `duration_s`; it creates the session of an offline start."""

    kind: ClassVar[str] = "confirmed"
    order_no: str
    device_id: str
    port: int
    duration_s: int = 0
    start_mode: str | None = None
    card_id: str | None = None


@dataclass(frozen=True, slots=True)
class PortHeartbeat(_Event):
    """A heartbeat (0x01 or 0x21) reported the session's port charging: it keeps the session
    alive. `power_w` is the port's live power where the heartbeat has it (0x01, legacy
    piles); only then is it kept in the history (a 0x21 carries nothing worth keeping)."""

    kind: ClassVar[str] = "heartbeat"
    port: int
    power_w: float | None = None


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
    # The limits the tick is checked against; not part of the record, so not compared.
    session_timeout: float = field(default=math.inf, compare=False)
    retention: float = field(default=math.inf, compare=False)

    def record(self) -> dict[str, Any]:
        return {"ts": iso(self.ts), "type": self.kind}


# The fields a history entry shows besides ts and type, by event class (`dataclasses.fields`
# once per class, not per entry); a Tick's limits are not part of its entry.
_NOT_RECORDED = frozenset({"ts", "at", "order_no", "device_id"})
_RECORD_NAMES: dict[type, tuple[str, ...]] = {Tick: ()}


def _record_names(cls: type) -> tuple[str, ...]:
    names = _RECORD_NAMES.get(cls)
    if names is None:
        fields = dataclasses.fields(cls)
        names = _RECORD_NAMES[cls] = tuple(f.name for f in fields if f.name not in _NOT_RECORDED)
    return names


Event = (
    StartRequested
    | StartAccepted
    | StartRefused
    | StopRequested
    | StopAccepted
    | StopRefused
    | PowerReported
    | Confirmed
    | PortHeartbeat
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

    # Members are singletons compared by identity: hashed by identity too, in C (Enum's own
    # __hash__ is Python code, run ~12 times per event by the sets of effects).
    __hash__ = object.__hash__


IGNORED: frozenset[Effect] = frozenset({Effect.IGNORED})


# The history entry types, by their `type` in the published `events` list.
RECORDS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        StartRequested,
        StartAccepted,
        StartRefused,
        StopRequested,
        StopAccepted,
        StopRefused,
        PowerReported,
        Confirmed,
        PortHeartbeat,
        Settled,
        Tick,
    )
}
_READERS: dict[str, TypeAdapter[Any]] = {kind: TypeAdapter(c) for kind, c in RECORDS.items()}


def read_record(entry: dict[str, Any], order_no: str, device_id: str) -> Event:
    """One published history entry of order `order_no` -> its typed event; ValueError when
    it is not one (pydantic names the field)."""
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in RECORDS:
        raise ValueError(f"unknown event type {kind!r} in the session's history")
    fields = {k: v for k, v in entry.items() if k != "type"}
    ts = fields.get("ts")
    if not isinstance(ts, str):
        raise ValueError(f"history entry {kind!r} without a ts")
    fields["ts"] = parse_iso(ts)
    if any(f.name == "order_no" for f in dataclasses.fields(RECORDS[kind])):
        fields.update(order_no=order_no, device_id=device_id)
    event: Event = _READERS[kind].validate_python(fields)
    return event
