"""The charging requests the service serves (`{b}/charging/request/{action}`, API.md section
6), validated strictly with pydantic and refused with a message naming the bad field.

Gateway events are read in `bridge.charging.gateway_events`, through the gateway's models.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from bridge.mqtt.payloads import StartChargingRequest

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

    def device_command(self, order_no: str) -> StartChargingRequest:
        """The `start_charging` device request (API.md section 5), with the fields this
        request gave (validated to the same bounds here, so not validated again)."""
        fields = self.model_dump(exclude={"request_id", "order_no", "device_id"}, exclude_none=True)
        return StartChargingRequest.model_construct(order_no=order_no, **fields)


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
