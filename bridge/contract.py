"""Generate the machine-readable contract and the example configuration, so they cannot drift:

    python -m bridge.contract           # rewrite docs/schema/*.json, docs/asyncapi.yaml,
                                        # deploy/chargebridge.toml.example
    python -m bridge.contract --check   # exit 1 if any of them is out of date

Sources: the payload models (bridge/mqtt/payloads.py, bridge/charging/payloads.py, the capture
models), the request models of the gateway and the charging service, and the settings classes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from bridge import __version__
from bridge.capture import CaptureEnd, CaptureFrame, CaptureRequest, CaptureResponse
from bridge.charging import messages as charging_requests
from bridge.charging.payloads import (
    ChargingResponsePayload,
    ChargingSessionPayload,
    ChargingStatsPayload,
)
from bridge.commands.run import RunSettings
from bridge.mqtt import payloads as m
from bridge.mqtt.schema import TOPIC_MODELS

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = Path("docs/schema")
ASYNCAPI = Path("docs/asyncapi.yaml")
TOML_EXAMPLE = Path("deploy/chargebridge.toml.example")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Channel (topic with {parameters}) -> (direction seen from chargebridge, models, summary).
# "out": chargebridge publishes (clients subscribe); "in": clients publish to chargebridge.
Channel = tuple[str, list[type[BaseModel]], str]


def _charging_request(action: str) -> type[BaseModel]:
    return charging_requests.REQUESTS[action]


def channels() -> dict[str, Channel]:
    out: dict[str, Channel] = {}
    for title, topic, model in TOPIC_MODELS:
        key = topic.replace("{b}", "{base}")
        if key.endswith("/response/{command}"):
            continue  # listed with its request below
        _direction, models, summary = out.get(key, ("out", [], title))
        out[key] = ("out", [*models, model], summary if models else title)
    for command, model in m.DEVICE_COMMAND_REQUESTS.items():
        out[f"{{base}}/devices/{{device_id}}/request/{command}"] = (
            "in",
            [model],
            f"device command `{command}` (API.md section 5)",
        )
    out["{base}/devices/{device_id}/response/{command}"] = (
        "out",
        [m.CommandResponse],
        "response to a device command",
    )
    out["{base}/sessions/{session_id}"] = ("out", [ChargingSessionPayload], "charging session")
    out["{base}/charging/stats"] = ("out", [ChargingStatsPayload], "charging statistics")
    for action in charging_requests.REQUESTS:
        out[f"{{base}}/charging/request/{action}"] = (
            "in",
            [_charging_request(action)],
            f"charging service request `{action}` (API.md section 6)",
        )
    out["{base}/charging/response/{action}"] = (
        "out",
        [ChargingResponsePayload],
        "charging service response",
    )
    out["{base}/bridge/request/capture"] = ("in", [CaptureRequest], "start a frame capture")
    out["{base}/bridge/response/capture"] = ("out", [CaptureResponse], "capture started or not")
    out["{base}/bridge/capture/{capture_id}"] = (
        "out",
        [CaptureFrame, CaptureEnd],
        "frames of one capture, then its end",
    )
    return out


def schema_name(model: type[BaseModel]) -> str:
    """File / component name; the charging service's requests get a `Charging` prefix."""
    if model in charging_requests.REQUESTS.values():
        return f"Charging{model.__name__}"
    return model.__name__


def all_models() -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {}
    for _direction, models, _summary in channels().values():
        for model in models:
            seen.setdefault(schema_name(model), model)
    return list(seen.values())


def json_schema_files() -> dict[Path, str]:
    files = {}
    for model in all_models():
        name = schema_name(model)
        schema = {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema()}
        schema["title"] = name
        files[SCHEMA_DIR / f"{name}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return files


def asyncapi() -> str:
    models = all_models()
    _, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    for model in models:  # the charging requests' names differ from their class names
        if model.__name__ in schemas and schema_name(model) != model.__name__:
            schemas[schema_name(model)] = schemas.pop(model.__name__)
    text = json.dumps(schemas)
    for model in models:
        old, new = (
            f'#/components/schemas/{model.__name__}"',
            f'#/components/schemas/{schema_name(model)}"',
        )
        text = text.replace(old, new)
    schemas = json.loads(text)
    messages: dict[str, Any] = {}
    doc_channels: dict[str, Any] = {}
    for topic, (direction, chan_models, summary) in channels().items():
        refs = []
        for model in chan_models:
            name = schema_name(model)
            messages[name] = {
                "name": name,
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{name}"},
            }
            refs.append({"$ref": f"#/components/messages/{name}"})
        message = refs[0] if len(refs) == 1 else {"oneOf": refs}
        # AsyncAPI 2.x operations are from the client's view: `subscribe` = chargebridge sends.
        operation = "subscribe" if direction == "out" else "publish"
        params = {
            part[1:-1]: {"schema": {"type": "string"}}
            for part in topic.split("/")
            if part.startswith("{")
        }
        doc_channels[topic] = {
            "parameters": params,
            operation: {"summary": summary, "message": message},
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


def generated() -> dict[Path, str]:
    files = json_schema_files()
    files[ASYNCAPI] = asyncapi()
    files[TOML_EXAMPLE] = toml_example()
    return files


def stale(root: Path = ROOT) -> list[Path]:
    """Generated files that differ from what is on disk, plus stray schema files."""
    files = generated()
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
    files = generated()
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
