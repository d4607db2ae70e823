"""Identifiers, the deprecated `Payload` name, and `describe`'s readable messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import bridge.mqtt.payloads as payloads
from bridge.mqtt.payloads import (
    DEVICE_ID_RE,
    ORDER_NO_RE,
    ChargingState,
    GatewayState,
    MqttPayload,
    Payload,
    StartChargingRequest,
    StopChargingRequest,
    describe,
    iso_utc,
)

ORDER = "0123456789ABCDEF0123456789ABCDEF"


def _error(model: type[BaseModel], json: str) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(json)
    return describe(info.value)


def test_payload_is_a_deprecated_name_of_mqtt_payload() -> None:
    assert Payload is MqttPayload
    assert ChargingState(state="online").to_json() == b'{"state":"online","instances":[]}'


def test_presence_payloads_leave_out_what_an_offline_will_cannot_know() -> None:
    will = GatewayState(state="offline", gateway_id="gw-1")
    assert will.to_json() == b'{"state":"offline","gateway_id":"gw-1"}'
    online = GatewayState(state="online", gateway_id="gw-1", since="2026-01-02T03:04:05.678Z")
    assert GatewayState.model_validate_json(online.to_json()) == online


def test_the_package_exports_what_it_declares() -> None:
    assert all(hasattr(payloads, name) for name in payloads.__all__)
    # the names other modules import today, from before the split
    for name in ("DEVICE_COMMAND_REQUESTS", "PARAMS_2_FIELDS", "oversized", "response", "iso_utc"):
        assert name in payloads.__all__


@pytest.mark.parametrize(
    ("text", "device", "order"),
    [
        ("04AB373B", True, False),
        ("04ab373b", False, False),
        ("04AB373", False, False),
        (ORDER, False, True),
        (ORDER.lower(), False, False),  # the published form is upper case
    ],
)
def test_identifier_patterns(text: str, device: bool, order: bool) -> None:
    assert bool(DEVICE_ID_RE.match(text)) is device
    assert bool(ORDER_NO_RE.match(text)) is order


def test_order_no_in_requests_is_normalised_to_upper_case() -> None:
    body = f'{{"port": 1, "order_no": "{ORDER.lower()}"}}'
    assert StopChargingRequest.model_validate_json(body).order_no == ORDER


@pytest.mark.parametrize("port", ["0", "255", "true", '"1"', '"two"', "1.5"])
def test_a_bad_start_port_reads_as_one_sentence(port: str) -> None:
    message = _error(StartChargingRequest, f'{{"port": {port}, "mode": "full"}}')
    assert message == 'port: must be an integer from 1 to 254 or "auto"'


class _Union(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    limit: Annotated[int, Field(ge=1, le=9)] | Literal["none"]
    name: str = ""


@pytest.mark.parametrize(
    ("json", "expected"),
    [
        ('{"limit": 0}', 'limit: must be at least 1 or "none"'),
        ('{"limit": 10}', 'limit: must be at most 9 or "none"'),
        ('{"limit": "x"}', 'limit: must be an integer or "none"'),
        ('{"limit": 1, "name": 3}', "name: must be a string"),
        ("{}", "limit: required"),
        ('{"limit": 1, "x": 1}', "x: Extra inputs are not permitted"),
        ('{"limit": 0, "name": 3}', 'limit: must be at least 1 or "none"; name: must be a string'),
    ],
)
def test_describe_joins_union_alternatives_and_names_every_field(json: str, expected: str) -> None:
    assert _error(_Union, json) == expected


def test_describe_names_known_patterns_and_rules() -> None:
    assert _error(StopChargingRequest, '{"port": 1, "order_no": "XYZ"}') == (
        "order_no: must be 32 hex digits"
    )
    assert _error(StartChargingRequest, '{"port": 1, "mode": "energy"}') == (
        "energy_kwh: mode 'energy' needs energy_kwh"
    )
    assert _error(StartChargingRequest, '{"port": 1, "mode": "x"}') == (
        'mode: must be "full", "time" or "energy"'
    )


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=-2e9, max_value=2.5e11, allow_nan=False),
        st.integers(0, 2**33).map(lambda n: n / 1_000_000 + 1_700_000_000),
        st.integers(-(2**31), 2**33),
    )
)
def test_iso_utc_of_unix_seconds_is_datetimes_text(t: float) -> None:
    """The whole-second shortcut rounds the microseconds as `datetime` does."""
    dt = datetime.fromtimestamp(t, UTC)
    assert iso_utc(t) == dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    assert iso_utc(dt) == iso_utc(t)
