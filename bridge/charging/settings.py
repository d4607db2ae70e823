"""Options of the charging service (docs/charging.md lists them with their defaults).

`ChargingSettings` extends `bridge.config.CommonSettings` (mqtt, base_topic, gateway_id,
state_dir, logging) in the one flat option namespace: `--session-timeout-s`,
`CHARGEBRIDGE_SESSION_TIMEOUT_S`, `session_timeout_s = ...` in the TOML file. Names are
chosen not to collide with the gateway's, so `run` can inherit from both classes;
`stats_interval` lives in CommonSettings: both stats topics follow it (API.md section 7).
"""

from __future__ import annotations

from pydantic import Field

from bridge.charging.store.base import DedupeLimits
from bridge.config import CommonSettings
from bridge.webhooks.settings import WebhookSettings


class ChargingSettings(WebhookSettings, CommonSettings):
    """Options of the charging service (and of its webhook unit, bridge/webhooks)."""

    service_client_id: str = Field(
        default="",
        description="MQTT client id of the service; keep it fixed "
        "(default: chargebridge-service-{gateway_id})",
    )
    instance_id: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._-]{0,64}$",
        description="name of this service instance, unique among those sharing one "
        "PostgreSQL store (in logs, its presence and the client-id slot it leases, "
        "docs/deployment.md); default: hostname-pid, or the gateway id with SQLite (one "
        "instance only)",
    )
    mqtt_session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="seconds the broker keeps the service's queue while it is away",
    )
    event_logging: bool = Field(default=True, description="log every processed event (info)")
    session_tracking: bool = Field(
        default=True,
        description="track sessions; off: only count events and refuse requests",
    )
    request_timeout_s: float = Field(
        default=35.0,
        gt=0,
        description="seconds to wait for the gateway's response to start/stop_charging "
        "(the gateway answers `timeout` itself after its resend)",
    )
    max_retries: int = Field(
        default=2, ge=0, le=10, description="resends of a start/stop_charging that timed out"
    )
    retry_backoff_s: float = Field(
        default=2.0, ge=0, description="pause before the first resend, doubling"
    )
    batch_interval_s: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="group commit: under load, at most one store transaction (and one "
        "publish per changed session) per this many seconds; 0: one per event-loop turn",
    )
    cleanup_interval_s: float = Field(
        default=60.0, gt=0, description="seconds between checks for timeout and retention"
    )
    session_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="no update for so long marks a session `timeout` (0x06 comes every 5 min)",
    )
    session_retention_s: float = Field(
        default=86400.0, ge=0, description="seconds finished sessions stay retained"
    )
    power_update_window_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="publish power-only changes of a session at most once per this many "
        "seconds, the latest when the window ends (status changes at once; every event is "
        "still stored and counted); 0: every change at once; the seed used 10",
    )
    energy_calculation_window_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="energy_kwh_estimated integrates live power at most once per this many "
        "seconds and counts a silence for at most 10 of them",
    )
    store: str = Field(
        default="",
        description="where sessions and statistics are kept: sqlite:///PATH (default: "
        "charging.sqlite3 in the state dir) or postgresql://user:password@host:port/db",
    )
    dedup_window_s: float = Field(
        default=2 * 86400.0,
        gt=0,
        description="seconds settled orders are remembered (a resent settlement is "
        "recognised for so long)",
    )
    redelivery_window_s: float = Field(
        default=900.0,
        gt=0,
        description="seconds the fingerprint of an event message is remembered (the broker "
        "redelivers an unacknowledged message at the next connection)",
    )
    max_fingerprints: int = Field(
        default=2_000_000,
        ge=1000,
        description="row cap of the dedupe state; beyond it the soonest to expire go first",
    )
    service_slots: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="PostgreSQL store: MQTT client ids {client id}-slot-{k} the instances "
        "lease (at least the instances you run, plus one for each draining a dead one's "
        "queue; docs/deployment.md)",
    )
    slot_scan_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="PostgreSQL store: seconds between looks for slots of dead instances "
        "whose queues this instance then drains",
    )
    slot_idle_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="PostgreSQL store: seconds without a message after which a drained "
        "slot's session is ended and the slot freed",
    )
    store_check_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="seconds between checks that the store is still there (a deleted or "
        "replaced SQLite file ends the service with an error)",
    )

    def dedupe_limits(self) -> DedupeLimits:
        return DedupeLimits(
            redelivery_window_s=self.redelivery_window_s,
            settlement_window_s=self.dedup_window_s,
            max_fingerprints=self.max_fingerprints,
        )

    @property
    def client_id(self) -> str:
        """Fixed across restarts, so that the broker keeps the session's queue for us."""
        return self.service_client_id or f"chargebridge-service-{self.gateway_id}"
