"""The charging service's topics (API.md section 6): requests on
`{b}/charging/request/{start,stop,query}`, responses on `{b}/charging/response/{action}`, the
retained session `{b}/sessions/{session_id}` and statistics `{b}/charging/stats`.

Requests are validated strictly (unknown keys refused, booleans are not ports); the start
request shares its fields and its mode rule with the device command (`StartFields`). The
published shapes forbid unknown keys, so tests that validate the service's output against them
keep these documents true to what is sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from bridge.mqtt.payloads.commands import StartChargingRequest, StartFields, StartMode
from bridge.mqtt.payloads.common import DeviceId, MqttPayload, PortNumber, SessionId


class ChargingRequest(BaseModel):
    """Base of `{b}/charging/request/{action}` payloads; `request_id` is echoed."""

    model_config = ConfigDict(extra="forbid")

    request_id: StrictStr | None = None


class _OnDevice(ChargingRequest):
    device_id: DeviceId


class ChargingStartRequest(StartFields, _OnDevice):
    """`start`: a session on `device_id`/`port`; `order_no` is generated when absent."""

    mode: StartMode = "full"

    def device_command(self, order_no: str) -> StartChargingRequest:
        """The `start_charging` device request (API.md section 5), with the fields this
        request gave (validated to the same bounds here, so not validated again)."""
        fields = self.model_dump(exclude={"request_id", "order_no", "device_id"}, exclude_none=True)
        return StartChargingRequest.model_construct(order_no=order_no, **fields)


class ChargingTarget(ChargingRequest):
    """Names a session by `session_id`, or by `device_id` + `port`."""

    session_id: SessionId | None = None
    device_id: DeviceId | None = None
    port: PortNumber | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ChargingTarget:
        by_port = self.device_id is not None or self.port is not None
        if self.session_id is not None and by_port:
            raise ValueError("give either session_id or device_id and port, not both")
        if self.session_id is None and (self.device_id is None or self.port is None):
            raise ValueError("session_id, or device_id and port, are required")
        return self


class ChargingStopRequest(ChargingTarget):
    """`stop`: stop the named session's charging (the device must confirm)."""


class ChargingQueryRequest(ChargingTarget):
    """`query`: answer with the named session, or `ok: false` when there is none."""


CHARGING_REQUESTS: dict[str, type[ChargingRequest]] = {
    "start": ChargingStartRequest,
    "stop": ChargingStopRequest,
    "query": ChargingQueryRequest,
}


# --------------------------------------------------------------------------- published


class ChargingSessionPayload(MqttPayload):
    """`{b}/sessions/{session_id}`, retained; cleared (empty) after `session_retention_s`.

    Also where the session payload's keys and their order come from: `ChargingSession` writes
    its fields in this order and reads a payload back through this model
    (bridge/charging/model.py)."""

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
    version: int = Field(
        default=0,
        description="grows with every stored change of the session (v1.1): a consumer keeps "
        "the highest; several service instances never publish a lower one after a higher",
    )
    events: list[dict[str, Any]] = Field(
        description='most recent events, newest last, at most 50: {"ts", "type", ...}'
    )


class ChargingStatsPayload(MqttPayload):
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
    security_events: int = 0  # v1.1: reports naming another device's or port's order, refused
    requests_ignored: int = 0  # v1.1: retained or empty request messages, never executed
    active_sessions: int
    total_energy_delivered_kwh: float
    average_session_duration_s: float
    average_processing_time_ms: float
    updated_at: str


class ChargingResponsePayload(MqttPayload):
    """`{b}/charging/response/{action}`."""

    request_id: str | None
    ok: bool
    message: str
    session: ChargingSessionPayload | None
