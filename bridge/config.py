"""Configuration: pydantic-settings models, one per role, sharing one flat option namespace.

Every option `foo_bar` is `--foo-bar` on the command line, `CHARGEBRIDGE_FOO_BAR` in the
environment and `foo_bar = ...` in the TOML file given by `--config`; precedence is command
line > environment > file > defaults. Roles compose by inheritance: `CommonSettings` holds what
every role needs, `GatewaySettings` adds the gateway's options, and the charging service adds
its own class; `run` can inherit from both. Keys of other roles in the shared TOML file are
ignored. Settings are passed explicitly, never kept in a global.
"""

from __future__ import annotations

import argparse
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bridge.mqtt.settings import MqttSettings

ENV_PREFIX = "CHARGEBRIDGE_"
_DEVICE_ID = re.compile(r"[0-9A-Fa-f]{8}")
_ICCID = re.compile(r"89[0-9A-Fa-f]{18}")
MAX_WORKERS = 64  # gateway worker processes; more than a box has cores only costs memory


class ConfigError(Exception):
    """A bad option; the message is one line naming the option."""


def _split_list(value: Any) -> Any:
    """Environment and TOML strings may list several values separated by commas."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], NoDecode]


class CommonSettings(BaseSettings):
    """Options every role shares."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    mqtt: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="broker URL, mqtt://user:pass@host:port or mqtts:// for TLS",
        pattern=r"^mqtts?://",
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT protocol version; 3.1.1 for brokers without MQTT 5 (the embedded one)",
    )
    mqtt_ca_file: str = Field(
        default="",
        description="CA certificate (PEM file) that signed the broker's certificate, for "
        "mqtts:// with a private CA (empty: the system's CAs)",
    )
    mqtt_keepalive_s: int = Field(
        default=30,
        ge=2,
        le=65535,
        description="MQTT keepalive in seconds; a broker silent for about twice as long is "
        "given up and reconnected",
    )
    base_topic: str = Field(
        default="chargebridge",
        description="prefix of every topic",
        pattern=r"^[^#+\s]+$",
    )
    gateway_id: str = Field(
        default_factory=socket.gethostname,
        description="name of this gateway in payloads (default: the host name)",
        min_length=1,
    )
    state_dir: Path = Field(
        default=Path("./chargebridge-state"), description="directory for durable state"
    )
    stats_interval: float = Field(
        default=5.0,
        gt=0,
        description="minimum seconds between two statistics messages (gateways/{id}/stats, "
        "charging/stats); they are sent only when something changed",
    )
    web: str = Field(
        default="",
        description="serve the browser dashboard on HOST:PORT (empty: off; docs/dashboard.md)",
        pattern=r"^$|^.+:\d{1,5}$",
    )
    log_format: Literal["text", "json"] = Field(default="text", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="minimum level logged"
    )

    def mqtt_settings(self, **role: Any) -> MqttSettings:
        """Connection settings of one role: URL and protocol are common, the rest is the role's."""
        return MqttSettings(
            url=self.mqtt,
            protocol=self.mqtt_protocol,
            tls_ca_file=self.mqtt_ca_file or None,
            keepalive_s=self.mqtt_keepalive_s,
            **role,
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class IntegrationSettings(BaseSettings):
    """Opt-in units that fit chargebridge into an ecosystem (docs/integrations.md)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    homeassistant: bool = Field(
        default=False, description="publish Home Assistant MQTT discovery for every charger"
    )
    homeassistant_prefix: str = Field(
        default="homeassistant",
        description="Home Assistant discovery prefix",
        pattern=r"^[^#+\s]+$",
    )
    metrics: str = Field(
        default="",
        description="serve Prometheus metrics on HOST:PORT (empty: off)",
        pattern=r"^$|^.+:\d{1,5}$",
    )

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        if not self.metrics:
            return None
        host, _, port = self.metrics.rpartition(":")
        return host.strip("[]"), int(port)


class GatewaySettings(IntegrationSettings, CommonSettings):
    """Options of the gateway (the half facing the chargers)."""

    workers: int = Field(
        default=1,
        ge=1,
        le=MAX_WORKERS,
        description="gateway processes sharing the device listeners (SO_REUSEPORT), worker k "
        "named {gateway_id}-{k}; 1 = one process, nothing else started (docs/scaling.md)",
    )
    tcp: StrList = Field(
        default=["0.0.0.0:7054"],
        description="device TCP listener HOST:PORT, repeatable; `none` disables",
    )
    serial: StrList = Field(
        default=[],
        description="serial link (any pyserial URL: /dev/ttyUSB0, socket://h:p), repeatable",
    )
    serial_baudrate: int = Field(default=9600, description="baud rate of serial links", gt=0)
    idle_timeout: float = Field(
        default=300.0,
        gt=0,
        description="seconds of silence after which a connection is closed and its devices "
        "marked offline",
    )
    card_policy: Literal["reject", "accept", "authorize"] = Field(
        default="reject",
        description="answer to card swipes: reject (unregistered), accept (configured "
        "balance) or authorize (ask over MQTT, fall back to card_fallback_policy)",
    )
    card_fallback_policy: Literal["reject", "accept"] = Field(
        default="reject", description="answer when nobody authorizes a swipe in time"
    )
    card_balance_cents: int = Field(
        default=0, ge=0, le=0xFFFFFFFF, description="balance announced with `accept` (fen)"
    )
    card_authorize_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=14,
        description="how long `authorize` waits for a card_reply (device times out at 15 s)",
    )
    command_timeout_s: float = Field(
        default=15.0, gt=0, description="reply timeout of device commands (one resend after it)"
    )
    command_spacing_s: float = Field(
        default=0.5, ge=0, description="minimum seconds between two commands to one device"
    )
    debug_devices: StrList = Field(
        default=[], description="device ids whose frames are logged as hex, both directions"
    )
    max_connections_per_ip: int = Field(
        default=1000,
        gt=0,
        description="TCP connections accepted from one address (raise it when many chargers "
        "share one NAT address)",
    )
    max_write_buffer: int = Field(
        default=65536,
        ge=1024,
        description="bytes queued to one slow peer before the connection is dropped",
    )
    max_devices: int = Field(
        default=100_000,
        gt=0,
        description="devices known at once; when all are online, frames from a new physical id "
        "are ignored (counted in the gateway stats as device_limit_frames)",
    )
    max_commands_per_minute: int = Field(
        default=60,
        gt=0,
        description="device command requests accepted per device and minute; more are "
        "answered ok: false, result: rate_limited",
    )
    max_queued_messages: int = Field(
        default=100_000,
        gt=0,
        description="outgoing MQTT messages kept in the durable outbox while the broker is "
        "unreachable; beyond it the oldest non-settlement ones are dropped (events_dropped)",
    )
    publish_interval_s: float = Field(
        default=0.002,
        ge=0,
        le=1,
        description="under load, at most one write of queued MQTT messages per this many "
        "seconds: what devices send meanwhile goes to the broker together (fewer system "
        "calls and broker wakeups per frame); a message after a quiet spell goes at once; "
        "0: one write after each device read",
    )
    # issue 16, gateway half: port events, site power cap, firmware upgrades
    port_status_on_change_only: bool = Field(
        default=False,
        description="publish port `status` events only when a port's status changed (the "
        "retained port state is updated either way); saves backhaul on 4G/NB links",
    )
    site_power_limit_w: float = Field(
        default=0.0,
        ge=0,
        description="cap on the live power of all ports of this gateway (W); 0 = off. Above "
        "it the chargers' per-port limits (0x85) are lowered to a fair share, and raised again "
        "below 90 % of it",
    )
    firmware_dir: str = Field(
        default="",
        description="directory of firmware images for `upgrade_firmware` (empty: upgrades off)",
    )
    max_concurrent_upgrades: int = Field(
        default=5,
        gt=0,
        description="firmware transfers at once per gateway; more are answered result: busy",
    )
    upgrade_reply_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="wait for a device's answer to one upgrade packet (the reference: 30 s, "
        "then up to 3 resends)",
    )
    upgrade_resume_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="how long an upgrade waits for its device to reconnect before failing",
    )

    device_policy: Literal["pinned", "open", "allowlist"] = Field(
        default="pinned",
        description="who may speak for a physical id on TCP: pinned (the ICCID first seen with "
        "it, persisted), open (anyone) or allowlist (only device_allowlist); docs/reliability.md",
    )
    device_allowlist: StrList = Field(
        default=[],
        description="with device_policy = allowlist: device ids, each optionally with the ICCID "
        "it must connect with (04AB373B or 04AB373B:8986...)",
    )
    frame_rate_limit: float = Field(
        default=20.0,
        gt=0,
        description="frames per second accepted from one device after a burst of "
        "frame_rate_burst; more are dropped (security event rate_limited)",
    )
    frame_rate_burst: int = Field(
        default=60, ge=1, description="frames one device may send at once above frame_rate_limit"
    )
    first_frame_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="seconds a TCP connection may stay open without one valid frame",
    )
    security_event_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="at most one security event per device and reason in this many seconds; "
        "a connection with more than frame_rate_burst frames dropped in it is closed",
    )

    @field_validator("tcp", "serial", "debug_devices", "device_allowlist", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("tcp")
    @classmethod
    def _tcp(cls, value: list[str]) -> list[str]:
        if [v.lower() for v in value] == ["none"]:
            return []
        for item in value:
            _host, sep, port = item.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"{item!r} is not HOST:PORT")
        return value

    @field_validator("debug_devices")
    @classmethod
    def _device_ids(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            if len(item) != 8 or any(c not in "0123456789abcdefABCDEF" for c in item):
                raise ValueError(f"{item!r} is not a device id of 8 hex digits")
            out.append(item.upper())
        return out

    @field_validator("device_allowlist")
    @classmethod
    def _allowlist(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            dev, sep, iccid = item.partition(":")
            if not _DEVICE_ID.fullmatch(dev) or (sep and not _ICCID.fullmatch(iccid)):
                raise ValueError(
                    f"{item!r} is not DEVICE_ID or DEVICE_ID:ICCID (8 hex digits, "
                    "then 20 characters starting 89)"
                )
            out.append(dev.upper() + (f":{iccid.upper()}" if sep else ""))
        return out

    @property
    def allowlist(self) -> dict[int, str | None]:
        """`device_allowlist` as physical id -> the ICCID it must bring (None: any)."""
        out: dict[int, str | None] = {}
        for item in self.device_allowlist:
            dev, _, iccid = item.partition(":")
            out[int(dev, 16)] = iccid or None
        return out

    @property
    def tcp_listeners(self) -> list[tuple[str, int]]:
        return [(h.strip("[]"), int(p)) for h, _, p in (t.rpartition(":") for t in self.tcp)]


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], cli: dict[str, Any], config_file: Path | None = None) -> S:
    """Build settings with precedence `cli` > environment > `config_file` > defaults.

    Raises ConfigError with one line naming the bad option."""
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config: cannot read {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {config_file} is not valid TOML: {exc}") from None

    class _Loader(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    _Loader.__name__ = cls.__name__
    try:
        return _Loader(**{k: v for k, v in cli.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        option = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "config"
        got = err.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict) else ""
        parts.append(f"option {option}: {err['msg']}{shown}")
    return "invalid configuration: " + "; ".join(parts)


# --------------------------------------------------------------------------- command line


def _is_list(info: FieldInfo) -> bool:
    return getattr(info.annotation, "__origin__", None) is list or info.annotation == StrList


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[BaseSettings]) -> None:
    """One `--option-name` per settings field (repeatable for lists), plus `--config`."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    for name, info in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = info.get_default(call_default_factory=False)
        shown = "" if info.default_factory else f" (default: {default})"
        help_text = ((info.description or "") + shown).replace("%", "%%")  # argparse formats it
        if _is_list(info):
            parser.add_argument(flag, dest=name, action="append", metavar="VALUE", help=help_text)
        elif info.annotation is bool:
            # `--homeassistant` alone switches it on; `--homeassistant false` is explicit.
            parser.add_argument(
                flag, dest=name, nargs="?", const="true", metavar="BOOL", help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, metavar="VALUE", help=help_text)


def settings_from_args(cls: type[S], args: argparse.Namespace) -> S:
    cli = {name: getattr(args, name, None) for name in cls.model_fields}
    return load_settings(cls, cli, getattr(args, "config", None))


def describe_options(cls: type[BaseSettings]) -> list[tuple[str, str, str]]:
    """(option, default, description) for the docs' configuration table."""
    rows = []
    for name, info in cls.model_fields.items():
        if info.default_factory is not None:
            default = "host name" if name == "gateway_id" else str(info.default_factory())  # type: ignore[call-arg]
        elif isinstance(info.default, list):
            default = ", ".join(info.default) or "(none)"
        else:
            default = str(info.default)
        rows.append((name, default, info.description or ""))
    return rows
