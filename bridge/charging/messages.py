"""Reading the charging requests the service serves (`{b}/charging/request/{action}`, API.md
section 6): JSON first, then the contract's models (bridge.mqtt.payloads.charging), refused with
a message naming the bad field.

Gateway events are read in `bridge.charging.gateway_events`, through the gateway's models.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from bridge.mqtt.payloads import CHARGING_REQUESTS, ChargingRequest, describe


class RequestError(ValueError):
    """A request that cannot be served; the text goes into the response's `message`."""


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


def parse_request(action: str, data: dict[str, Any]) -> ChargingRequest:
    cls = CHARGING_REQUESTS.get(action)
    if cls is None:
        raise RequestError(f"unknown action {action!r}; use one of {', '.join(CHARGING_REQUESTS)}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise RequestError(describe(exc)) from None
