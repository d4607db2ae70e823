"""What the service reads from MQTT: requests (strict) and gateway events (tolerant).

Requests (`{b}/charging/request/{action}`, API.md section 6) are validated with pydantic and
refused with a message naming the bad field. Gateway events (API.md section 4) are read
tolerantly: only the fields the service needs are checked, unknown ones are ignored, so a
gateway that adds fields does not break the service.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from bridge.charging import model as m

ORDER_NO_RE = re.compile(r"^[0-9A-F]{32}$")
DEVICE_ID_RE = r"^[0-9A-F]{8}$"

OrderNo = Annotated[str, Field(pattern=ORDER_NO_RE.pattern)]
DeviceId = Annotated[StrictStr, Field(pattern=DEVICE_ID_RE)]
PortNo = Annotated[StrictInt, Field(ge=1, le=254)]


class RequestError(ValueError):
    """A request that cannot be served; the text goes into the response's `message`."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: StrictStr | None = None


class StartRequest(_Request):
    device_id: DeviceId
    port: PortNo | Literal["auto"]
    order_no: OrderNo | None = None
    mode: Literal["full", "time", "energy"] = "full"
    duration_s: Annotated[StrictInt, Field(ge=1, le=0xFFFF)] | None = None
    energy_kwh: Annotated[float, Field(gt=0, le=655.35)] | None = None
    balance_cents: Annotated[StrictInt, Field(ge=0, le=0xFFFFFFFF)] | None = None
    max_power_w: Annotated[float, Field(ge=0, le=6553.5)] | None = None

    @model_validator(mode="after")
    def _limit_matches_mode(self) -> StartRequest:
        if self.mode == "time" and self.duration_s is None:
            raise ValueError("mode 'time' needs duration_s")
        if self.mode == "energy" and self.energy_kwh is None:
            raise ValueError("mode 'energy' needs energy_kwh")
        return self

    def device_command(self, order_no: str, request_id: str) -> dict[str, Any]:
        """The `start_charging` device request (API.md section 5)."""
        fields = self.model_dump(exclude={"request_id", "order_no", "device_id"}, exclude_none=True)
        return {"request_id": request_id, "order_no": order_no, **fields}


class _Target(_Request):
    """Names a session by `session_id`, or by `device_id` + `port`."""

    session_id: OrderNo | None = None
    device_id: DeviceId | None = None
    port: PortNo | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _Target:
        by_port = self.device_id is not None or self.port is not None
        if self.session_id is not None and by_port:
            raise ValueError("give either session_id or device_id and port, not both")
        if self.session_id is None and (self.device_id is None or self.port is None):
            raise ValueError("session_id, or device_id and port, are required")
        return self


class StopRequest(_Target):
    pass


class QueryRequest(_Target):
    pass


REQUESTS: dict[str, type[_Request]] = {
    "start": StartRequest,
    "stop": StopRequest,
    "query": QueryRequest,
}


def describe(exc: ValidationError) -> str:
    """`port: Input should be ...; order_no: String should match ...` — names every field."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "request"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_json_object(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError("the payload must be a JSON object")
    return data


def request_id_of(data: dict[str, Any]) -> str | None:
    """The id to echo, even from a request that fails validation."""
    rid = data.get("request_id")
    return rid if isinstance(rid, str) else None


def parse_request(action: str, data: dict[str, Any]) -> _Request:
    cls = REQUESTS.get(action)
    if cls is None:
        raise RequestError(f"unknown action {action!r}; use one of {', '.join(REQUESTS)}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise RequestError(describe(exc)) from None


# --- gateway events (tolerant) ---------------------------------------------------

Num = StrictInt | StrictFloat


class _GatewayEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    ts: str | None = None
    port: StrictInt | str | None = None
    order_no: OrderNo | None = None


class _PowerEvent(_GatewayEvent):
    port: PortNo
    order_no: OrderNo
    power_w: Num
    energy_kwh: Num
    duration_s: StrictInt
    max_power_w: Num | None = None
    peak_power_w: Num | None = None
    voltage_v: Num | None = None
    current_a: Num | None = None
    temperature_c: Num | None = None


class _SettledEvent(_GatewayEvent):
    port: PortNo
    order_no: OrderNo
    energy_kwh: Num
    duration_s: StrictInt
    max_power_w: Num
    stop_reason: str | None = None
    card_id: str | None = None


class _ReplyEvent(_GatewayEvent):
    port: PortNo | None = None
    reason: str | None = None
    result: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A gateway event translated for the model; `event` None: nothing for a session."""

    type: str
    device_id: str
    order_no: str | None
    port: int | None
    event: m.Event | None = None


def _ts(raw: str | None, now: float) -> float:
    if raw:
        try:
            return m.parse_iso(raw)
        except ValueError:
            pass
    return now


def parse_event(device_id: str, data: dict[str, Any], now: float | None = None) -> DeviceEvent:
    """API.md section 4 payload -> DeviceEvent; raises RequestError when it is malformed."""
    now = time.time() if now is None else now
    try:
        base = _GatewayEvent.model_validate(data)
        ts = _ts(base.ts, now)
        kind = base.type
        event: m.Event | None = None
        if kind == "power":
            p = _PowerEvent.model_validate(data)
            peaks = [v for v in (p.max_power_w, p.peak_power_w) if v is not None]
            event = m.PowerReported(
                ts=ts,
                at=now,
                order_no=p.order_no,
                device_id=device_id,
                port=p.port,
                power_w=float(p.power_w),
                energy_kwh=float(p.energy_kwh),
                duration_s=p.duration_s,
                max_power_w=float(max(peaks)) if peaks else None,
                voltage_v=None if p.voltage_v is None else float(p.voltage_v),
                current_a=None if p.current_a is None else float(p.current_a),
                temperature_c=None if p.temperature_c is None else float(p.temperature_c),
            )
        elif kind == "settled":
            s = _SettledEvent.model_validate(data)
            event = m.Settled(
                ts=ts,
                at=now,
                order_no=s.order_no,
                device_id=device_id,
                port=s.port,
                energy_kwh=float(s.energy_kwh),
                duration_s=s.duration_s,
                max_power_w=float(s.max_power_w),
                stop_reason=s.stop_reason,
                card_id=s.card_id,
            )
        elif kind in ("started", "start_failed", "stopped", "stop_failed"):
            r = _ReplyEvent.model_validate(data)
            reason = r.reason or r.result or kind
            replies: dict[str, m.Event] = {
                "started": m.StartAccepted(ts=ts, at=now, port=r.port),
                "start_failed": m.StartRefused(ts=ts, at=now, reason=reason),
                "stopped": m.StopAccepted(ts=ts, at=now),
                "stop_failed": m.StopRefused(ts=ts, at=now, reason=reason),
            }
            event = replies[kind]
    except ValidationError as exc:
        raise RequestError(describe(exc)) from None
    port = base.port if isinstance(base.port, int) else None
    return DeviceEvent(
        type=kind, device_id=device_id, order_no=base.order_no, port=port, event=event
    )
