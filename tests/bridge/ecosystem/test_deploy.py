"""Deployment artefacts: generated contract files current, example config valid, systemd unit
hardened, `check-config` behaviour, payload models true to what the service sends."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from bridge import contract
from bridge.charging import model as m
from bridge.cli import build_parser
from bridge.config import GatewaySettings, settings_from_args
from bridge.mqtt.payloads import (
    ChargingResponsePayload,
    ChargingSessionPayload,
    ChargingStatsPayload,
)

ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEBRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


def test_generated_files_are_current() -> None:
    assert contract.stale() == [], "run: python -m bridge.contract"


def test_stale_detects_a_changed_and_a_stray_file(tmp_path: Path) -> None:
    contract.write(tmp_path)
    assert contract.stale(tmp_path) == []
    (tmp_path / contract.SCHEMA_DIR / "Old.json").write_text("{}")
    (tmp_path / contract.ASYNCAPI).write_text("asyncapi: 1.0.0\n")
    assert set(contract.stale(tmp_path)) == {contract.ASYNCAPI, contract.SCHEMA_DIR / "Old.json"}


def test_asyncapi_lists_every_topic_and_resolves_its_refs() -> None:
    doc = yaml.safe_load((ROOT / contract.ASYNCAPI).read_text())
    assert doc["asyncapi"] == "2.6.0"
    channels = doc["channels"]
    for topic in (
        "{base}/gateways/{gateway_id}/state",
        "{base}/charging/state",
        "{base}/devices/{device_id}",
        "{base}/devices/{device_id}/ports/{port}",
        "{base}/devices/{device_id}/event/order",
        "{base}/devices/{device_id}/request/start_charging",
        "{base}/devices/{device_id}/request/card_reply",
        "{base}/sessions/{session_id}",
        "{base}/charging/request/stop",
        "{base}/bridge/request/capture",
    ):
        assert topic in channels
    assert "publish" in channels["{base}/charging/request/stop"]  # clients publish requests
    assert "subscribe" in channels["{base}/sessions/{session_id}"]

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        _, _, kind, name = ref.split("/")
        assert name in doc["components"][kind], ref


def test_json_schemas_are_draft_2020_12_with_the_payload_fields() -> None:
    files = sorted((ROOT / contract.SCHEMA_DIR).glob("*.json"))
    assert len(files) == len(contract.all_models())
    state = json.loads((ROOT / contract.SCHEMA_DIR / "DeviceState.json").read_text())
    assert state["$schema"] == contract.JSON_SCHEMA_DIALECT
    assert {"device_id", "online", "gateway_id"} <= set(state["required"])
    session = json.loads((ROOT / contract.SCHEMA_DIR / "ChargingSessionPayload.json").read_text())
    assert session["properties"]["status"]["enum"] == list(m.STATUSES)


def test_charging_payload_models_match_the_service_output() -> None:
    session = m.ChargingSession(
        session_id="0102030405060708090A0B0C0D0E0F10",
        device_id="04AB373B",
        port=1,
        status="completed",
        start_time=1.0,
        last_update=2.0,
        end_time=2.0,
        energy_kwh=0.5,
        voltage_v=220.0,
        stop_reason="full",
        events=(m.Tick(ts=1.0),),
    )
    ChargingSessionPayload.model_validate(session.to_payload())
    ChargingSessionPayload.model_validate_json(session.to_json())
    ChargingStatsPayload.model_validate(m.ChargingStats().to_payload(2, 1.0))
    ChargingResponsePayload.model_validate(
        {"request_id": "r", "ok": True, "message": "ok", "session": session.to_payload()}
    )


def test_example_config_is_valid_for_every_role_and_lists_every_option() -> None:
    example = ROOT / contract.TOML_EXAMPLE
    data = tomllib.loads(example.read_text())
    assert data["state_dir"] == "/var/lib/chargebridge"
    text = example.read_text()
    from bridge.commands.run import RunSettings

    for name in RunSettings.model_fields:
        assert f"# env: CHARGEBRIDGE_{name.upper()}" in text
    for role in ("run", "gateway", "service"):
        run = cli("check-config", "--config", str(example), "--role", role)
        assert run.returncode == 0, run.stderr
        assert 'mqtt = "mqtt://chargebridge:***@127.0.0.1:1883"' in run.stdout
        assert "CHANGE-ME" not in run.stdout


def test_check_config_prints_effective_settings_with_precedence(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('base_topic = "from-file"\nidle_timeout = 60\nsession_timeout_s = 5\n')
    run = cli(
        "check-config",
        "--config",
        str(config),
        "--role",
        "gateway",
        env={"CHARGEBRIDGE_IDLE_TIMEOUT": "30", "CHARGEBRIDGE_MQTT": "mqtts://u:p%40ss@h:8883"},
    )
    assert run.returncode == 0, run.stderr
    settings = tomllib.loads(run.stdout)
    assert settings["base_topic"] == "from-file"
    assert settings["idle_timeout"] == 30.0  # the environment wins over the file
    assert settings["mqtt"] == "mqtts://u:***@h:8883"
    assert "session_timeout_s" not in settings  # the service's option, not the gateway's
    assert set(settings) == set(GatewaySettings.model_fields)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("idle_timeout = -1", "option idle_timeout"),
        ("tcp = 'nowhere'", "option tcp"),
        ("idle_timout = 5", "unknown option(s) idle_timout"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_check_config_errors_are_one_line_exit_2(
    tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content + "\n")
    run = cli("check-config", "--config", str(config))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and message in run.stderr


def test_check_config_missing_file() -> None:
    run = cli("check-config", "--config", "/nonexistent/chargebridge.toml")
    assert run.returncode == 2 and "cannot read" in run.stderr


def test_boolean_options_work_as_flags() -> None:
    parser = build_parser()
    on = settings_from_args(GatewaySettings, parser.parse_args(["gateway", "--homeassistant"]))
    off = settings_from_args(
        GatewaySettings, parser.parse_args(["gateway", "--homeassistant", "false"])
    )
    assert (on.homeassistant, off.homeassistant) == (True, False)


def test_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy/chargebridge.service")
    service = unit["Service"]
    expected = {
        "User": "chargebridge",
        "StateDirectory": "chargebridge",
        "Restart": "always",
        "LimitNOFILE": "65536",
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "SupplementaryGroups": "dialout",
        "EnvironmentFile": "-/etc/chargebridge/chargebridge.env",
    }
    assert {k: service[k] for k in expected} == expected
    assert "--config /etc/chargebridge/chargebridge.toml" in service["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
