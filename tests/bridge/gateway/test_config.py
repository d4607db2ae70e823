"""Settings: precedence command line > environment > file > defaults; one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bridge.config import (
    ConfigError,
    GatewaySettings,
    add_settings_arguments,
    describe_options,
    load_settings,
    settings_from_args,
)


def test_defaults() -> None:
    s = load_settings(GatewaySettings, {})
    assert s.tcp_listeners == [("0.0.0.0", 7054)]
    assert (s.idle_timeout, s.card_policy, s.command_timeout_s, s.command_spacing_s) == (
        300.0,
        "reject",
        15.0,
        0.5,
    )
    assert s.base_topic == "chargebridge" and s.gateway_id


def test_precedence_cli_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        'idle_timeout = 10\nbase_topic = "file"\ngateway_id = "file"\nserial = ["/dev/x"]\n'
    )
    monkeypatch.setenv("CHARGEBRIDGE_BASE_TOPIC", "env")
    monkeypatch.setenv("CHARGEBRIDGE_GATEWAY_ID", "env")
    monkeypatch.setenv("CHARGEBRIDGE_TCP", "127.0.0.1:1, 127.0.0.1:2")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, GatewaySettings)
    args = parser.parse_args(["--config", str(conf), "--gateway-id", "cli"])
    s = settings_from_args(GatewaySettings, args)
    assert s.gateway_id == "cli"  # command line wins
    assert s.base_topic == "env"  # environment beats the file
    assert s.idle_timeout == 10  # file beats the default
    assert s.serial == ["/dev/x"]
    assert s.tcp_listeners == [("127.0.0.1", 1), ("127.0.0.1", 2)]


def test_repeatable_options_and_none() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, GatewaySettings)
    args = parser.parse_args(["--tcp", "none", "--debug-devices", "04ab373b"])
    s = settings_from_args(GatewaySettings, args)
    assert s.tcp == [] and s.debug_devices == ["04AB373B"]


@pytest.mark.parametrize(
    ("values", "option"),
    [
        ({"tcp": ["nohost"]}, "tcp"),
        ({"card_policy": "maybe"}, "card_policy"),
        ({"mqtt": "http://x"}, "mqtt"),
        ({"debug_devices": ["xyz"]}, "debug_devices"),
        ({"command_spacing_s": -1}, "command_spacing_s"),
    ],
)
def test_bad_values_name_the_option(values: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(GatewaySettings, values)
    text = str(err.value)
    assert "\n" not in text and f"option {option}" in text


def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("idle_timeout = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(GatewaySettings, {}, bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(GatewaySettings, {}, tmp_path / "missing.toml")


def test_every_option_is_documented() -> None:
    rows = describe_options(GatewaySettings)
    assert {r[0] for r in rows} == set(GatewaySettings.model_fields)
    assert all(description for _, _, description in rows)
