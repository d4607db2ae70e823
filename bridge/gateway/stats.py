"""Gateway counters, published retained on `{b}/gateways/{gateway_id}/stats`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from bridge.mqtt.payloads import GatewayStatsPayload, iso_utc


@dataclass(slots=True)
class GatewayStats:
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    decode_errors: int = 0
    checksum_errors: int = 0
    commands_sent: int = 0
    command_timeouts: int = 0
    duplicates: int = 0
    garbage_bytes: int = 0
    connections_dropped: int = 0
    connections_refused_per_ip: int = 0
    device_limit_frames: int = 0
    commands_rate_limited: int = 0
    events_dropped: int = 0
    status_events_suppressed: int = 0
    frames_pin_mismatch: int = 0
    frames_not_allowed: int = 0
    frames_rate_limited: int = 0
    connections_closed_rate_limited: int = 0
    connections_closed_no_frame: int = 0
    security_events_suppressed: int = 0
    pins: int = 0
    requests_ignored: int = 0
    started: float = field(default_factory=time.monotonic)

    def counters(self, connections: int, devices_online: int) -> dict[str, int]:
        """Everything that changes only with traffic (no clock), to detect changes."""
        values = asdict(self)
        del values["started"]
        values.update(connections=connections, devices_online=devices_online)
        return values

    def snapshot(
        self, connections: int, devices_online: int, gateway_id: str = ""
    ) -> GatewayStatsPayload:
        return GatewayStatsPayload(
            gateway_id=gateway_id,
            **self.counters(connections, devices_online),
            uptime_s=int(time.monotonic() - self.started),
            updated_at=iso_utc(),
        )
