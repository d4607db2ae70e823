"""`run` starts the embedded broker only when no broker is configured anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import build_parser
from bridge.commands.run import RunSettings
from bridge.config import load_settings


def test_no_broker_configured_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHARGEBRIDGE_MQTT", raising=False)
    assert load_settings(RunSettings, {}).embedded_broker


@pytest.mark.parametrize("source", ["cli", "env", "file"])
def test_a_broker_from_any_source_is_used(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHARGEBRIDGE_MQTT", raising=False)
    url = "mqtt://broker.example:1883"
    cli, config = {}, None
    if source == "cli":
        cli = {"mqtt": url}
    elif source == "env":
        monkeypatch.setenv("CHARGEBRIDGE_MQTT", url)
    else:
        config = tmp_path / "c.toml"
        config.write_text(f'mqtt = "{url}"\n')
    settings = load_settings(RunSettings, cli, config)
    assert not settings.embedded_broker
    assert settings.mqtt == url


COMMANDS = ["run", "gateway", "service", "demo", "simulate", "decode", "capture"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse %-formats help texts: a description with a bare `%` ("90 % of it") made
    `run --help` raise TypeError."""
    with pytest.raises(SystemExit) as ended:
        build_parser().parse_args([command, "--help"])
    assert ended.value.code == 0
    assert "--" in capsys.readouterr().out
