"""Shapes of what the charging service publishes (API.md section 6), for the published JSON
Schema (docs/schema/) and the AsyncAPI description.

`ChargingSessionPayload` is also where the session payload's keys and their order come from:
`ChargingSession` writes its fields in this order and reads a payload back through this model
(bridge/charging/model.py). Tests validate the service's outputs against these models
(unknown keys forbidden), so the documents cannot drift from what is sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChargingSessionPayload(_Out):
    """`{b}/sessions/{session_id}`, retained; cleared (empty) after `session_retention_s`."""

    session_id: str = Field(description="equal to order_no, 32 upper-case hex digits")
    device_id: str
    port: int | None = Field(description="1-based; null until the device names it")
    order_no: str
    status: Literal["starting", "charging", "stopping", "completed", "failed", "timeout"]
    start_time: str
    end_time: str | None
    duration_s: int
    energy_kwh: float = Field(
        description="the device's own figure (0x06: so far, 0x03: settled), the billing one"
    )
    energy_kwh_estimated: float = Field(
        default=0.0,
        description="integrated from the live power reports (0x06, 0x01 heartbeats) every "
        "energy_calculation_window_s; beside energy_kwh, never instead of it",
    )
    max_power_w: float
    power_w: float
    voltage_v: float | None
    current_a: float | None
    temperature_c: float | None
    stop_reason: str | None
    last_update: str
    events: list[dict[str, Any]] = Field(
        description='most recent events, newest last, at most 50: {"ts", "type", ...}'
    )


class ChargingStatsPayload(_Out):
    """`{b}/charging/stats`, retained."""

    total_events_processed: int
    charging_start_events: int
    charging_stop_events: int
    power_update_events: int
    sessions_created: int
    sessions_completed: int
    sessions_timeout: int
    processing_errors: int
    retry_attempts: int
    duplicate_events: int
    active_sessions: int
    total_energy_delivered_kwh: float
    average_session_duration_s: float
    average_processing_time_ms: float
    updated_at: str


class ChargingResponsePayload(_Out):
    """`{b}/charging/response/{action}`."""

    request_id: str | None
    ok: bool
    message: str
    session: ChargingSessionPayload | None
