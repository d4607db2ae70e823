"""Settings of the charging service (env prefix `CHARGEBRIDGE_`; docs/charging.md lists them).

Kept here until the lead folds them into `bridge/config.py`; passed explicitly, never global.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class ChargingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARGEBRIDGE_", extra="ignore")

    mqtt: str = Field("mqtt://127.0.0.1:1883", description="Broker URL.")
    base_topic: str = Field("chargebridge", min_length=1)
    state_dir: Path = Field(
        Path("./chargebridge-state"), description="Where the SQLite store lives."
    )
    gateway_id: str = Field("", description="Names the service's MQTT client id when set.")
    client_id: str = Field(
        "", description="MQTT client id; default `chargebridge-service-{gateway_id or host}`."
    )
    session_expiry_s: int = Field(
        7 * 24 * 3600, ge=0, description="Broker keeps our queue so long."
    )

    event_logging: bool = Field(True, description="Log every processed event at INFO level.")
    session_tracking: bool = Field(
        True, description="Off: only count events; no sessions, requests answered ok:false."
    )
    command_timeout_s: float = Field(
        30.0, gt=0, description="Wait so long for the gateway's answer to a device command."
    )
    max_retries: int = Field(2, ge=0, description="Resends of a start_charging that timed out.")
    retry_backoff_s: float = Field(2.0, ge=0, description="First back-off; doubles per retry.")
    cleanup_interval_s: float = Field(60.0, gt=0, description="How often timeouts are checked.")
    session_timeout_s: float = Field(
        900.0, gt=0, description="No update for so long: `timeout` (0x06 comes every 5 min)."
    )
    session_retention_s: float = Field(
        86400.0, ge=0, description="Finished sessions stay retained so long, then are cleared."
    )
    stats_interval_s: float = Field(5.0, ge=0, description="Stats published at most this often.")
    dedup_window_s: float = Field(
        7 * 86400.0, gt=0, description="How long message fingerprints and settlements are kept."
    )


def load_settings(config_file: Path | None = None, **overrides: Any) -> ChargingSettings:
    """Precedence: `overrides` (command line), environment, TOML `config_file`, defaults.

    The TOML file may hold the keys at top level or in a `[charging]` table (which wins).
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        with config_file.open("rb") as fh:
            data = tomllib.load(fh)
        table = data.get("charging", {})
        file_values = {k: v for k, v in data.items() if not isinstance(v, dict)}
        file_values.update(table if isinstance(table, dict) else {})
        known = ChargingSettings.model_fields
        file_values = {k.replace("-", "_"): v for k, v in file_values.items()}
        file_values = {k: v for k, v in file_values.items() if k in known}

    class _Layered(ChargingSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, file_values))

    layered = _Layered(**{k: v for k, v in overrides.items() if v is not None})
    return ChargingSettings.model_validate(layered.model_dump())
