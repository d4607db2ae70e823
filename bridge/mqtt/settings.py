"""How to reach the broker: `MqttSettings` and its `Will`.

Kept apart from the client so that reading configuration (bridge/config.py, the CLI's
`check-config`) imports neither aiomqtt nor paho, and so patches nothing in them.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, field_validator


class Will(BaseModel):
    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


class MqttSettings(BaseModel):
    """How to reach the broker; `url` carries credentials and TLS (`mqtts://`)."""

    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://[user:password@]host[:port], mqtts:// for TLS.",
    )
    client_id: str = ""
    clean_start: bool = True
    session_expiry_s: int | None = None
    keepalive_s: int = 30
    protocol: Literal["5", "3.1.1"] = "5"
    will: Will | None = None
    manual_ack: bool = False
    tls_ca_file: str | None = None
    tls_insecure: bool = False
    max_inflight: int = 100
    # MQTT v5 Receive Maximum: QoS 1 messages the broker may send us unacknowledged (else
    # the broker's own limit, Mosquitto's max_inflight_messages, 20 by default). A consumer
    # that acknowledges after processing handles at most this many per batch.
    receive_maximum: int | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"scheme must be mqtt:// or mqtts://, not {parts.scheme!r}://")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def username(self) -> str | None:
        user = urlsplit(self.url).username
        return unquote(user) if user else None

    @property
    def password(self) -> str | None:
        pw = urlsplit(self.url).password
        return unquote(pw) if pw is not None else None

    @property
    def v5(self) -> bool:
        return self.protocol == "5"

    def redacted_url(self) -> str:
        """The URL without the password, for logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()
