"""Gateway events (API.md section 4) read for the charging service, tolerantly.

The events that concern a session are read through the gateway's own payload models
(`bridge.mqtt.payloads`): the readers below only add `extra="ignore"` (a gateway that adds
fields does not break the service), strict JSON types, and the two narrowings the service
relies on (ports 1-254, upper-case order numbers: sessions are keyed by them). A device
`heartbeat` becomes one `PortHeartbeat` per port it reports charging (legacy piles have no
0x06: their heartbeats keep sessions alive and carry the live power). Other events (port
status, card swipes, device events) are counted, and only their port and order number are
looked at, for the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from bridge.charging import events as e
from bridge.charging.messages import RequestError, parse_json_object
from bridge.mqtt.payloads import (
    ORDER_NO_RE,
    HeartbeatEvent,
    HeartbeatPort,
    OrderConfirmedEvent,
    OrderResultEvent,
    OrderSettledEvent,
    PortNumber,
    PortPowerEvent,
    SessionId,
    describe,
)

_TOLERANT = ConfigDict(extra="ignore", strict=True)
REPLY_KINDS = ("started", "start_failed", "stopped", "stop_failed")
SESSION_KINDS = ("power", "settled", "confirmed", "heartbeat", *REPLY_KINDS)
# Port statuses of a heartbeat (reference A.4) that mean "an order is charging here".
CHARGING_PORT_STATUSES = frozenset({"charging", "float_charging"})


class PowerIn(PortPowerEvent):
    model_config = _TOLERANT
    port: PortNumber
    order_no: SessionId


class SettledIn(OrderSettledEvent):
    model_config = _TOLERANT
    port: PortNumber
    order_no: SessionId


class ResultIn(OrderResultEvent):
    model_config = _TOLERANT
    port: PortNumber | None
    order_no: SessionId | None


class ConfirmedIn(OrderConfirmedEvent):
    model_config = _TOLERANT
    port: PortNumber
    order_no: SessionId


class HeartbeatPortIn(HeartbeatPort):
    model_config = _TOLERANT
    port: PortNumber


class HeartbeatIn(HeartbeatEvent):
    model_config = _TOLERANT
    ports: list[HeartbeatPortIn] = Field(default_factory=list, max_length=254)  # type: ignore[assignment]


_Read = PowerIn | SettledIn | ResultIn | ConfirmedIn | HeartbeatIn
_SessionEvent = Annotated[_Read, Field(discriminator="type")]
_reader: TypeAdapter[_Read] = TypeAdapter(_SessionEvent)


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A gateway event translated for the model; `event` None: nothing for one session.

    `ports`: a heartbeat's reports of the device's charging ports, each for the session
    running on that port, if any."""

    type: str
    device_id: str
    order_no: str | None
    port: int | None
    event: e.Event | None = None
    ports: tuple[e.PortHeartbeat, ...] = ()


def _ts(raw: str, now: float) -> float:
    try:
        return e.parse_iso(raw)
    except ValueError:
        return now  # a gateway clock we cannot read: the time the service saw it


def parse_event(device_id: str, payload: bytes, now: float) -> IncomingEvent:
    """One event payload -> IncomingEvent; raises RequestError naming what is malformed."""
    try:
        read = _reader.validate_json(payload)
    except ValidationError as exc:
        return _other(device_id, payload, exc)
    ts = _ts(read.ts, now)
    event: e.Event
    if isinstance(read, HeartbeatIn):
        return IncomingEvent(read.type, device_id, None, None, ports=_ports(read, ts, now))
    if isinstance(read, ConfirmedIn):
        event = e.Confirmed(
            ts=ts,
            at=now,
            order_no=read.order_no,
            device_id=device_id,
            port=read.port,
            duration_s=read.duration_s,
            start_mode=read.start_mode,
            card_id=read.card_id,
        )
    elif isinstance(read, PowerIn):
        peaks = [v for v in (read.max_power_w, read.peak_power_w) if v is not None]
        event = e.PowerReported(
            ts=ts,
            at=now,
            order_no=read.order_no,
            device_id=device_id,
            port=read.port,
            power_w=float(read.power_w),
            energy_kwh=float(read.energy_kwh),
            duration_s=read.duration_s,
            max_power_w=float(max(peaks)) if peaks else None,
            voltage_v=_float(read.voltage_v),
            current_a=_float(read.current_a),
            temperature_c=_float(read.temperature_c),
        )
    elif isinstance(read, SettledIn):
        event = e.Settled(
            ts=ts,
            at=now,
            order_no=read.order_no,
            device_id=device_id,
            port=read.port,
            energy_kwh=float(read.energy_kwh),
            duration_s=read.duration_s,
            max_power_w=float(read.max_power_w),
            stop_reason=read.stop_reason,
            card_id=read.card_id,
        )
    else:
        event = _reply(read, ts, now)
    return IncomingEvent(read.type, device_id, read.order_no, read.port, event)


def _ports(read: HeartbeatIn, ts: float, now: float) -> tuple[e.PortHeartbeat, ...]:
    return tuple(
        e.PortHeartbeat(ts=ts, at=now, port=p.port, power_w=_float(p.power_w))
        for p in read.ports
        if p.status in CHARGING_PORT_STATUSES
    )


def _reply(read: ResultIn, ts: float, now: float) -> e.Event:
    reason = read.reason or read.result or read.type
    if read.type == "started":
        return e.StartAccepted(ts=ts, at=now, port=read.port)
    if read.type == "start_failed":
        return e.StartRefused(ts=ts, at=now, reason=reason)
    if read.type == "stopped":
        return e.StopAccepted(ts=ts, at=now)
    return e.StopRefused(ts=ts, at=now, reason=reason)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _other(device_id: str, payload: bytes, exc: ValidationError) -> IncomingEvent:
    """An event that is not one of a session's (counted only), or a malformed one."""
    data = parse_json_object(payload)  # RequestError for what is not a JSON object
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RequestError("type: a string is required")
    if kind in SESSION_KINDS:
        raise RequestError(describe(exc))
    port = data.get("port")
    order_no = data.get("order_no")
    return IncomingEvent(
        type=kind,
        device_id=device_id,
        order_no=order_no if isinstance(order_no, str) and ORDER_NO_RE.match(order_no) else None,
        port=port if isinstance(port, int) and not isinstance(port, bool) else None,
    )
