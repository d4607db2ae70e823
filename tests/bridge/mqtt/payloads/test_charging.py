"""The charging service's request models accept and refuse exactly what the service always did
(bridge.charging.messages before the move), apart from one intended change: `order_no` in
either case, normalised to upper case, as the device command always accepted it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from bridge.mqtt.payloads import (
    CHARGING_REQUESTS,
    ChargingQueryRequest,
    ChargingStartRequest,
    ChargingStopRequest,
    StartChargingRequest,
    describe,
)

DEV = "04AB373B"
ORDER = "0123456789ABCDEF0123456789ABCDEF"

START_OK: list[dict[str, Any]] = [
    {"device_id": DEV, "port": 1},
    {"device_id": DEV, "port": 254, "request_id": "r"},
    {"device_id": DEV, "port": "auto", "order_no": ORDER},
    {"device_id": DEV, "port": 2, "mode": "full", "balance_cents": 0, "max_power_w": 100},
    {"device_id": DEV, "port": 2, "mode": "time", "duration_s": 60},
    {"device_id": DEV, "port": 2, "mode": "time", "duration_s": 65535, "energy_kwh": 1.0},
    {"device_id": DEV, "port": 2, "mode": "energy", "energy_kwh": 1.5},
    {"device_id": DEV, "port": 2, "mode": "energy", "energy_kwh": 2},
    {"device_id": DEV, "port": 2, "mode": "energy", "energy_kwh": "1.5"},  # lax float, as before
    {"device_id": DEV, "port": 2, "balance_cents": 0xFFFFFFFF, "max_power_w": 6553.5},
]
START_REFUSED: list[dict[str, Any]] = [
    {"port": 1},
    {"device_id": DEV},
    {"device_id": "04ab373b", "port": 1},
    {"device_id": 12345678, "port": 1},
    {"device_id": DEV, "port": 0},
    {"device_id": DEV, "port": 255},
    {"device_id": DEV, "port": True},
    {"device_id": DEV, "port": "1"},
    {"device_id": DEV, "port": 1.0},
    {"device_id": DEV, "port": "two"},
    {"device_id": DEV, "port": 1, "mode": "time"},
    {"device_id": DEV, "port": 1, "mode": "time", "energy_kwh": 1.0},
    {"device_id": DEV, "port": 1, "mode": "energy"},
    {"device_id": DEV, "port": 1, "mode": "energy", "duration_s": 60},
    {"device_id": DEV, "port": 1, "mode": "forever"},
    {"device_id": DEV, "port": 1, "mode": "time", "duration_s": 0},
    {"device_id": DEV, "port": 1, "mode": "time", "duration_s": 65536},
    {"device_id": DEV, "port": 1, "mode": "time", "duration_s": "60"},
    {"device_id": DEV, "port": 1, "mode": "time", "duration_s": 60.0},
    {"device_id": DEV, "port": 1, "mode": "energy", "energy_kwh": 0},
    {"device_id": DEV, "port": 1, "mode": "energy", "energy_kwh": 655.36},
    {"device_id": DEV, "port": 1, "balance_cents": -1},
    {"device_id": DEV, "port": 1, "balance_cents": "5"},
    {"device_id": DEV, "port": 1, "max_power_w": 6553.6},
    {"device_id": DEV, "port": 1, "order_no": "XYZ"},
    {"device_id": DEV, "port": 1, "order_no": ORDER + "00"},
    {"device_id": DEV, "port": 1, "request_id": 5},
    {"device_id": DEV, "port": 1, "rate_mode": "time"},  # a device-command field only
    {"device_id": DEV, "port": 1, "x": 1},
]
TARGET_OK: list[dict[str, Any]] = [
    {"session_id": ORDER},
    {"session_id": ORDER, "request_id": "q"},
    {"device_id": DEV, "port": 1},
]
TARGET_REFUSED: list[dict[str, Any]] = [
    {},
    {"device_id": DEV},
    {"port": 1},
    {"session_id": ORDER, "port": 1},
    {"session_id": ORDER, "device_id": DEV, "port": 1},
    {"session_id": ORDER.lower()},  # a session id names a topic: upper case only
    {"session_id": "XYZ"},
    {"device_id": DEV, "port": True},
    {"device_id": DEV, "port": 0},
    {"device_id": "04ab373b", "port": 1},
    {"session_id": ORDER, "x": 1},
]
CASES = (
    [("start", data, True) for data in START_OK]
    + [("start", data, False) for data in START_REFUSED]
    + [(action, data, True) for action in ("stop", "query") for data in TARGET_OK]
    + [(action, data, False) for action in ("stop", "query") for data in TARGET_REFUSED]
)


def _accepts(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("action", "data", "accepted"), CASES)
def test_requests_accept_and_refuse_as_before(
    action: str, data: dict[str, Any], accepted: bool
) -> None:
    assert _accepts(CHARGING_REQUESTS[action], data) is accepted


def test_order_no_is_accepted_in_either_case_and_normalised() -> None:
    request = ChargingStartRequest.model_validate(
        {"device_id": DEV, "port": 1, "order_no": ORDER.lower()}
    )
    assert request.order_no == ORDER


def test_start_becomes_the_same_device_command_as_before() -> None:
    request = ChargingStartRequest.model_validate(
        {"request_id": "x", "device_id": DEV, "port": 3, "mode": "energy", "energy_kwh": 1.5}
    )
    command = request.device_command(ORDER)
    assert isinstance(command, StartChargingRequest)
    sent = command.model_dump(exclude_none=True)
    assert sent == {
        "order_no": ORDER,
        "port": 3,
        "mode": "energy",
        "energy_kwh": 1.5,
        "balance_cents": 0,  # the device request's default
    }
    # ...and what is sent is a valid device request.
    assert StartChargingRequest.model_validate(sent).energy_kwh == 1.5


def test_the_mode_rule_is_one_rule_for_both_start_requests() -> None:
    with pytest.raises(ValidationError) as charging:
        ChargingStartRequest.model_validate({"device_id": DEV, "port": 1, "mode": "time"})
    with pytest.raises(ValidationError) as device:
        StartChargingRequest.model_validate_json(b'{"port": 1, "mode": "time"}')
    assert describe(charging.value) == describe(device.value)
    assert describe(device.value) == "duration_s: mode 'time' needs duration_s"


def test_targets_name_the_rule_they_break() -> None:
    with pytest.raises(ValidationError) as both:
        ChargingStopRequest.model_validate({"session_id": ORDER, "device_id": DEV, "port": 1})
    assert describe(both.value) == "request: give either session_id or device_id and port, not both"
    with pytest.raises(ValidationError) as neither:
        ChargingQueryRequest.model_validate({"device_id": DEV})
    assert describe(neither.value) == "request: session_id, or device_id and port, are required"
