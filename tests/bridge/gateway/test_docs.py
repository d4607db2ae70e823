"""docs/gateway.md is generated from the models; the event models parse what is published."""

from __future__ import annotations

from pathlib import Path

from bridge import contract
from bridge.mqtt.payloads import (
    OrderSettledEvent,
    device_event_adapter,
    order_event_adapter,
    port_event_adapter,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "gateway.md"


def test_generated_reference_is_up_to_date() -> None:
    assert contract.GATEWAY_DOC not in contract.stale(), "run: python -m bridge.contract"
    text = DOC.read_text()
    assert "#### Order event `settled`" in text and "`{b}/devices/{device_id}`, retained" in text


def test_event_unions_pick_the_model_by_type() -> None:
    base = {
        "ts": "2026-01-01T00:00:00.000Z",
        "device_id": "04AB373B",
        "gateway_id": "g",
        "command": 3,
        "message_id": 1,
    }
    settled = order_event_adapter.validate_python(
        {
            **base,
            "type": "settled",
            "port": 1,
            "order_no": "00" * 16,
            "duration_s": 1,
            "max_power_w": 1.0,
            "energy_kwh": 0.01,
            "start_mode": "online",
            "start_mode_code": 1,
            "card_id": "00000000",
            "stop_reason": "full",
            "stop_reason_code": 1,
        }
    )
    assert isinstance(settled, OrderSettledEvent)
    status = port_event_adapter.validate_python(
        {**base, "type": "status", "port": 1, "status": "idle", "status_code": 0}
    )
    assert status.type == "status"
    offline = device_event_adapter.validate_python(
        {**base, "command": None, "message_id": None, "type": "offline", "reason": "idle"}
    )
    assert offline.type == "offline"
