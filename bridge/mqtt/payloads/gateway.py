"""What the gateway publishes about itself (API.md section 3), one pair per gateway process:
`{b}/gateways/{gateway_id}/state` and `{b}/gateways/{gateway_id}/stats`, both retained. The
charging service's presence (`{b}/charging/state`, `{b}/charging/instances/{id}`) is here too:
it has the same shape and the same consumers (dashboards, Home Assistant availability)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bridge.mqtt.payloads.common import MqttPayload


class GatewayState(MqttPayload):
    """`{b}/gateways/{gateway_id}/state`, retained; the MQTT will publishes `offline`."""

    state: Literal["online", "offline"]
    gateway_id: str
    since: str | None = Field(
        default=None,
        description="when the gateway came online on its current broker connection "
        "(absent from the will's `offline`)",
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class ChargingInstanceState(MqttPayload):
    """`{b}/charging/instances/{instance_id}`, retained: one charging-service instance;
    its MQTT will publishes `offline`."""

    state: Literal["online", "offline"]
    instance_id: str
    since: str | None = Field(
        default=None, description="when the instance came online (absent when offline)"
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class ChargingState(MqttPayload):
    """`{b}/charging/state`, retained: the charging service as a whole, `online` while any
    instance is (every live instance keeps it up to date); the will of each instance
    publishes `offline`, which the survivors at once replace (docs/scaling.md)."""

    state: Literal["online", "offline"]
    instances: list[str] = Field(
        default_factory=list, description="ids of the live instances, sorted"
    )


class GatewayStatsPayload(MqttPayload):
    """`{b}/gateways/{gateway_id}/stats`, retained: gateway counters since start."""

    gateway_id: str
    connections: int = Field(description="open device connections (TCP and serial)")
    devices_online: int
    frames_in: int = Field(description="valid frames received, resends included")
    frames_out: int
    bytes_in: int
    bytes_out: int
    decode_errors: int = Field(description="bad frames and payloads too short for their command")
    checksum_errors: int
    commands_sent: int = Field(description="device commands sent (a resend counts again)")
    command_timeouts: int
    duplicates: int = Field(description="upstream resends answered but not published again")
    garbage_bytes: int = Field(description="bytes between frames that were neither ICCID nor link")
    connections_dropped: int = Field(
        description="connections closed because their write buffer overflowed or per-IP limit"
    )
    connections_refused_per_ip: int = Field(
        description="connections refused at once because `max_connections_per_ip` were open"
    )
    device_limit_frames: int = Field(
        description="frames ignored because they came from a new physical id while "
        "`max_devices` devices were online"
    )
    commands_rate_limited: int = Field(
        description="device command requests answered `rate_limited` (`max_commands_per_minute`)"
    )
    events_dropped: int = Field(
        description="outgoing messages dropped unpublished because the outbox held "
        "`max_queued_messages` (settlements are never dropped)"
    )
    status_events_suppressed: int = Field(
        default=0,
        description="port `status` events not published because the status had not changed "
        "(`port_status_on_change_only`)",
    )
    frames_pin_mismatch: int = Field(
        description="frames refused because their connection's ICCID is not the one pinned "
        "to their physical id (device_policy = pinned)"
    )
    frames_not_allowed: int = Field(description="frames refused by device_policy = allowlist")
    frames_rate_limited: int = Field(description="frames dropped over frame_rate_limit")
    connections_closed_rate_limited: int = Field(
        description="connections closed for exceeding frame_rate_limit again and again"
    )
    connections_closed_no_frame: int = Field(
        description="connections closed for sending no valid frame in first_frame_timeout_s"
    )
    security_events_suppressed: int = Field(
        description="security events not published (one per device and reason per "
        "security_event_interval_s)"
    )
    pins: int = Field(description="physical ids with a pinned ICCID")
    requests_ignored: int = Field(
        description="device requests ignored because they were retained or empty"
    )
    uptime_s: int
    updated_at: str
