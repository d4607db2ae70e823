"""The --webhook options: lists from the command line and environment, clear errors."""

from __future__ import annotations

import pytest

from bridge.charging.settings import ChargingSettings
from bridge.config import ConfigError, load_settings


def test_lists_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(ChargingSettings, {})
    assert settings.webhook == [] and settings.webhook_events == ["session_completed"]
    monkeypatch.setenv("CHARGEBRIDGE_WEBHOOK_EVENTS", "session_started, alarm")
    monkeypatch.setenv("CHARGEBRIDGE_WEBHOOK", "http://a/x,https://b:8443/y")
    settings = load_settings(ChargingSettings, {})
    assert settings.webhook_events == ["session_started", "alarm"]
    assert settings.webhook == ["http://a/x", "https://b:8443/y"]
    cli = {"webhook": ["http://c/"], "webhook_events": ["session_failed,session_timeout"]}
    settings = load_settings(ChargingSettings, cli)
    assert settings.webhook == ["http://c/"]
    assert settings.webhook_events == ["session_failed", "session_timeout"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("webhook", ["ftp://x/"], "not an http:// or https:// URL"),
        ("webhook", ["http://x:99999/"], "bad port"),
        ("webhook_events", ["session_done"], "'session_done' is not one of"),
        ("webhook_max_attempts", "0", "webhook_max_attempts"),
    ],
)
def test_bad_options_are_one_clear_line(option: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(ChargingSettings, {option: value})
