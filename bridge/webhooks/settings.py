"""Options of the webhook unit (`--webhook URL` ...), mixed into the service's settings."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.config import ENV_PREFIX, StrList

SESSION_EVENTS = ("session_started", "session_completed", "session_failed", "session_timeout")
DEVICE_EVENTS = ("device_online", "device_offline", "alarm", "security")
WEBHOOK_EVENTS = SESSION_EVENTS + DEVICE_EVENTS


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):  # `--webhook-events a,b --webhook-events c`
        return [p.strip() for item in value for p in str(item).split(",") if p.strip()]
    return value


class WebhookSettings(BaseSettings):
    """Webhooks are off unless at least one `--webhook URL` is given."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    webhook: StrList = Field(
        default=[], description="POST events to this http:// or https:// URL, repeatable"
    )
    webhook_secret: str = Field(
        default="",
        description="sign every body: X-Chargebridge-Signature: sha256=<hex HMAC-SHA256>",
    )
    webhook_events: StrList = Field(
        default=["session_completed"],
        description="events to send, comma-separated: " + ", ".join(WEBHOOK_EVENTS),
    )
    webhook_max_attempts: int = Field(
        default=20, ge=1, description="attempts per event and URL before it is dead-lettered"
    )
    webhook_backoff_s: float = Field(
        default=1.0, gt=0, description="pause after the first failed attempt, doubling"
    )
    webhook_backoff_max_s: float = Field(
        default=600.0, gt=0, description="longest pause between two attempts"
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="seconds one POST may take (connect to response head)"
    )
    webhook_max_queued: int = Field(
        default=100_000,
        ge=1,
        description="deliveries kept waiting; beyond, the oldest are dead-lettered (dropped)",
    )
    webhook_max_body_bytes: int = Field(
        default=262_144,
        ge=1024,
        description="largest body sent; a larger session is sent without its `events` list",
    )

    @field_validator("webhook", "webhook_events", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("webhook")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
            try:
                parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError:
                raise ValueError(f"{url!r} has a bad port") from None
        return value

    @field_validator("webhook_events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        for event in value:
            if event not in WEBHOOK_EVENTS:
                raise ValueError(f"{event!r} is not one of {', '.join(WEBHOOK_EVENTS)}")
        return list(dict.fromkeys(value))
