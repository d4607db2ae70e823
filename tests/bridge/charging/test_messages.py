"""Request validation and tolerant event parsing, without a broker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.charging import model as m
from bridge.charging.gateway_events import parse_event as parse_payload
from bridge.charging.messages import RequestError, parse_json_object, parse_request
from bridge.mqtt.payloads import ChargingStartRequest
from tests.bridge.charging.harness import DEV, ORDER, power_event, reply_event, settled_event

NOW = 1_800_000_000.0


def parse_event(device_id: str, event: dict[str, Any], now: float):  # type: ignore[no-untyped-def]
    return parse_payload(device_id, json.dumps(event).encode(), now)


def test_power_event_becomes_a_power_report_with_si_values() -> None:
    event = power_event(0.25, 180.0, ts=NOW - 5, duration_s=900)
    parsed = parse_event(DEV, event, now=NOW)
    assert parsed.type == "power" and parsed.order_no == ORDER and parsed.port == 2
    assert parsed.event == m.PowerReported(
        ts=NOW - 5,
        at=NOW,
        order_no=ORDER,
        device_id=DEV,
        port=2,
        power_w=180.0,
        energy_kwh=0.25,
        duration_s=900,
        max_power_w=200.0,  # the larger of the period maximum and the session peak
        voltage_v=229.8,
        current_a=0.785,
        temperature_c=28.0,
    )


def test_unknown_fields_are_ignored_and_a_bad_ts_means_now() -> None:
    event = {**settled_event(0.1, 60), "ts": "yesterday", "future_field": [1, 2]}
    parsed = parse_event(DEV, event, now=NOW)
    assert isinstance(parsed.event, m.Settled) and parsed.event.ts == NOW


def test_reply_events_carry_the_reason() -> None:
    parsed = parse_event(DEV, reply_event("start_failed", ORDER, 1, ok=False), now=NOW)
    assert isinstance(parsed.event, m.StartRefused)
    assert parsed.event.reason == "no charger plugged into the port"
    assert parsed.event.at == NOW


def test_events_without_a_session_meaning_parse_to_none() -> None:
    parsed = parse_event(DEV, {"type": "status", "port": 1, "status": "idle"}, now=NOW)
    assert parsed.event is None and parsed.port == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [({"order_no": "12"}, "order_no"), ({"power_w": "high"}, "power_w"), ({"port": 0}, "port")],
)
def test_malformed_events_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(RequestError, match=field):
        parse_event(DEV, {**power_event(0.1), **change}, now=NOW)


def test_json_must_be_an_object() -> None:
    with pytest.raises(RequestError, match="invalid JSON"):
        parse_json_object(b"{")
    with pytest.raises(RequestError, match="JSON object"):
        parse_json_object(b"42")


def test_start_request_becomes_the_gateway_command() -> None:
    request = parse_request(
        "start",
        {"request_id": "x", "device_id": DEV, "port": 3, "mode": "energy", "energy_kwh": 1.5},
    )
    assert isinstance(request, ChargingStartRequest)
    command = request.device_command(ORDER).model_copy(update={"request_id": "rid"})
    assert json.loads(command.model_dump_json(exclude_unset=True)) == {
        "request_id": "rid",
        "order_no": ORDER,
        "port": 3,
        "mode": "energy",
        "energy_kwh": 1.5,
    }


def test_booleans_are_not_ports() -> None:
    with pytest.raises(RequestError, match="port"):
        parse_request("start", {"device_id": DEV, "port": True})
