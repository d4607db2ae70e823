"""The MQTT contract as one table, and everything generated from it, so nothing can drift:

    python -m bridge.contract           # rewrite docs/schema/*.json, docs/asyncapi.yaml, the
                                        # reference in docs/gateway.md, and
                                        # deploy/chargebridge.toml.example
    python -m bridge.contract --check   # exit 1 if any of them is out of date

`CHANNELS` maps every topic (built through `Topics` with `{parameter}` placeholders) to its
direction, retain flag, payload models (`bridge.mqtt.payloads`, and the capture models) and a
summary. The example configuration comes from the settings classes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from bridge import __version__
from bridge.capture import CaptureEnd, CaptureFrame, CaptureRequest, CaptureResponse
from bridge.commands.run import RunSettings
from bridge.mqtt import payloads as p
from bridge.mqtt import schema
from bridge.mqtt.topics import Topics

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = Path("docs/schema")
ASYNCAPI = Path("docs/asyncapi.yaml")
GATEWAY_DOC = Path("docs/gateway.md")
TOML_EXAMPLE = Path("deploy/chargebridge.toml.example")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True, slots=True)
class Channel:
    """One topic pattern. `direction` is seen from chargebridge: "out" = chargebridge
    publishes (clients subscribe), "in" = clients publish to chargebridge. `role` is the unit
    that publishes or serves it; the gateway's rows make up the reference in docs/gateway.md."""

    topic: str
    direction: Literal["in", "out"]
    retained: bool
    models: tuple[type[BaseModel], ...]
    summary: str
    role: Literal["gateway", "charging", "capture"]


def _channels() -> tuple[Channel, ...]:
    t = Topics("{base}")
    dev = "{device_id}"
    gw = "{gateway_id}"
    out: list[Channel] = [
        Channel(
            t.gateway_state(gw),
            "out",
            True,
            (p.GatewayState,),
            "Gateway presence (the MQTT will sets `offline`)",
            "gateway",
        ),
        Channel(
            t.gateway_stats(gw),
            "out",
            True,
            (p.GatewayStatsPayload,),
            "Gateway statistics",
            "gateway",
        ),
        Channel(t.device(dev), "out", True, (p.DeviceState,), "Device state", "gateway"),
        Channel(t.port(dev, "{port}"), "out", True, (p.PortState,), "Port state", "gateway"),
        Channel(
            t.event(dev, "port"),
            "out",
            False,
            (p.PortStatusEvent, p.PortPowerEvent),
            "Port event",
            "gateway",
        ),
        Channel(
            t.event(dev, "order"),
            "out",
            False,
            (p.OrderResultEvent, p.OrderConfirmedEvent, p.OrderSettledEvent, p.CardSwipeEvent),
            "Order event",
            "gateway",
        ),
        Channel(
            t.event(dev, "device"),
            "out",
            False,
            (
                p.DeviceOnlineEvent,
                p.DeviceOfflineEvent,
                p.RegisterEvent,
                p.HeartbeatEvent,
                p.TimeSyncEvent,
                p.AlarmEvent,
                p.UpgradeRequestEvent,
                p.HostStatusEvent,
                p.ExtensionVersionsEvent,
                p.CabinetHeartbeatEvent,
                p.ChargeFinishedEvent,
                p.PortPushEvent,
                p.FskParamsEvent,
                p.FrameEvent,
                p.PowerLimitEvent,
                p.UpgradeProgressEvent,
                p.SecurityEvent,
                p.UnknownEvent,
            ),
            "Device event",
            "gateway",
        ),
    ]
    out += [
        Channel(
            t.device_request(dev, command),
            "in",
            False,
            (model,),
            f"Device command `{command}` (API.md section 5)",
            "gateway",
        )
        for command, model in p.DEVICE_COMMAND_REQUESTS.items()
    ]
    out += [
        Channel(
            t.device_response(dev, "{command}"),
            "out",
            False,
            (p.CommandResponse,),
            "Command response",
            "gateway",
        ),
        Channel(
            t.session("{session_id}"),
            "out",
            True,
            (p.ChargingSessionPayload,),
            "Charging session",
            "charging",
        ),
        Channel(
            t.charging_stats,
            "out",
            True,
            (p.ChargingStatsPayload,),
            "Charging statistics",
            "charging",
        ),
        Channel(
            t.charging_state,
            "out",
            True,
            (p.ChargingState,),
            "Charging service presence (any instance online; `offline` by will)",
            "charging",
        ),
        Channel(
            t.charging_instance("{instance_id}"),
            "out",
            True,
            (p.ChargingInstanceState,),
            "One charging-service instance's presence (`offline` by its will)",
            "charging",
        ),
    ]
    out += [
        Channel(
            t.charging_request(action),
            "in",
            False,
            (model,),
            f"Charging request `{action}` (API.md section 6)",
            "charging",
        )
        for action, model in p.CHARGING_REQUESTS.items()
    ]
    out += [
        Channel(
            t.charging_response("{action}"),
            "out",
            False,
            (p.ChargingResponsePayload,),
            "Charging response",
            "charging",
        ),
        Channel(
            t.bridge_request("capture"),
            "in",
            False,
            (CaptureRequest,),
            "Start a frame capture",
            "capture",
        ),
        Channel(
            t.bridge_response("capture"),
            "out",
            False,
            (CaptureResponse,),
            "Capture started or not",
            "capture",
        ),
        Channel(
            t.capture_stream("{capture_id}"),
            "out",
            False,
            (CaptureFrame, CaptureEnd),
            "Frames of one capture, then its end",
            "capture",
        ),
    ]
    return tuple(out)


CHANNELS = _channels()


def all_models() -> list[type[BaseModel]]:
    """Every payload model of the contract, once each, in table order."""
    seen: dict[str, type[BaseModel]] = {}
    for channel in CHANNELS:
        for model in channel.models:
            seen.setdefault(model.__name__, model)
    return list(seen.values())


def json_schema_files() -> dict[Path, str]:
    files = {}
    for model in all_models():
        name = model.__name__
        schema_doc = {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema()}
        schema_doc["title"] = name
        files[SCHEMA_DIR / f"{name}.json"] = (
            json.dumps(schema_doc, indent=2, ensure_ascii=False) + "\n"
        )
    return files


def gateway_reference() -> str:
    """The generated section of docs/gateway.md: the gateway's rows of `CHANNELS`."""
    rows: list[schema.Row] = [
        (c.topic.replace("{base}", "{b}"), c.direction, c.retained, c.models, c.summary)
        for c in CHANNELS
        if c.role == "gateway"
    ]
    return schema.render(rows)


def _summary(channel: Channel) -> str:
    if len(channel.models) == 1:
        return channel.summary
    types = [f"`{t}`" for model in channel.models for t in schema.event_types(model)]
    return f"{channel.summary}: {', '.join(types)}" if types else channel.summary


def asyncapi() -> str:
    models = all_models()
    _, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    messages: dict[str, Any] = {}
    doc_channels: dict[str, Any] = {}
    for channel in CHANNELS:
        refs = []
        for model in channel.models:
            name = model.__name__
            messages[name] = {
                "name": name,
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{name}"},
            }
            refs.append({"$ref": f"#/components/messages/{name}"})
        message = refs[0] if len(refs) == 1 else {"oneOf": refs}
        # AsyncAPI 2.x operations are from the client's view: `subscribe` = chargebridge sends.
        operation = "subscribe" if channel.direction == "out" else "publish"
        params = {
            part[1:-1]: {"schema": {"type": "string"}}
            for part in channel.topic.split("/")
            if part.startswith("{")
        }
        doc_channels[channel.topic] = {
            "parameters": params,
            operation: {
                "summary": _summary(channel),
                "bindings": {"mqtt": {"qos": 1, "retain": channel.retained}},
                "message": message,
            },
        }
    doc = {
        "asyncapi": "2.6.0",
        "info": {
            "title": "chargebridge",
            "version": __version__,
            "description": "MQTT interface of chargebridge (the contract is /work/shared/API.md; "
            "docs/gateway.md and docs/charging.md describe it). Generated by "
            "`python -m bridge.contract`; do not edit.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "url": "mqtt://127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "5",
            }
        },
        "channels": doc_channels,
        "components": {"messages": messages, "schemas": schemas},
    }
    return str(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100))


# Values the example file sets for a systemd deployment (docs/deployment.md); every other
# option appears commented out with its default.
DEPLOY_VALUES: dict[str, Any] = {
    "mqtt": "mqtt://chargebridge:CHANGE-ME@127.0.0.1:1883",
    "state_dir": "/var/lib/chargebridge",
    "log_format": "json",
}


def toml_example() -> str:
    lines = [
        "# chargebridge configuration (TOML), for /etc/chargebridge/chargebridge.toml.",
        "# Generated from the settings models by `python -m bridge.contract`; every option of",
        "# every role is listed (a role ignores the others' keys). Precedence: command line >",
        "# environment (CHARGEBRIDGE_<OPTION>) > this file > defaults.",
        "# Check a file with: chargebridge check-config --config FILE --role run|gateway|service",
        "",
    ]
    for name, info in RunSettings.model_fields.items():
        lines.append(f"# {info.description or name}")
        lines.append(f"# env: CHARGEBRIDGE_{name.upper()}")
        if name in DEPLOY_VALUES:
            lines.append(f"{name} = {json.dumps(DEPLOY_VALUES[name])}")
        elif info.default_factory is not None:
            lines.append(f"# {name} = <{'host name' if name == 'gateway_id' else 'computed'}>")
        else:
            default = info.default
            value = str(default) if isinstance(default, Path) else default
            lines.append(f"# {name} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def generated(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file's full text; docs/gateway.md keeps its prose around the section."""
    files = json_schema_files()
    files[ASYNCAPI] = asyncapi()
    files[GATEWAY_DOC] = schema.splice(_read(root / GATEWAY_DOC) or "", gateway_reference())
    files[TOML_EXAMPLE] = toml_example()
    return files


def stale(root: Path = ROOT) -> list[Path]:
    """Generated files that differ from what is on disk, plus stray schema files."""
    files = generated(root)
    out = [path for path, text in files.items() if _read(root / path) != text]
    out += [
        p.relative_to(root)
        for p in sorted((root / SCHEMA_DIR).glob("*.json"))
        if p.relative_to(root) not in files
    ]
    return out


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def write(root: Path = ROOT) -> None:
    files = generated(root)
    schema_dir = root / SCHEMA_DIR
    schema_dir.mkdir(parents=True, exist_ok=True)
    for old in schema_dir.glob("*.json"):
        if old.relative_to(root) not in files:
            old.unlink()
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"{path} is out of date: run python -m bridge.contract")
        return 1 if out_of_date else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
