"""Render the payload models and the gateway settings into docs/gateway.md, so docs cannot drift.

    python -m bridge.mqtt.schema docs/gateway.md           # rewrite the generated section
    python -m bridge.mqtt.schema --check docs/gateway.md   # exit 1 if it is out of date
    python -m bridge.mqtt.schema --json                    # JSON Schema of every model

The generated section lies between the BEGIN/END markers; the prose around it is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bridge.config import GatewaySettings, describe_options
from bridge.mqtt import payloads as m

BEGIN = "<!-- BEGIN GENERATED: python -m bridge.mqtt.schema docs/gateway.md -->"
END = "<!-- END GENERATED -->"

# (section title, topic, model)
TOPIC_MODELS: list[tuple[str, str, type[BaseModel]]] = [
    ("Bridge state", "{b}/bridge/state", m.BridgeState),
    ("Bridge statistics", "{b}/bridge/stats", m.BridgeStats),
    ("Device state", "{b}/devices/{device_id}", m.DeviceState),
    ("Port state", "{b}/devices/{device_id}/ports/{port}", m.PortState),
    ("Port event `status`", "{b}/devices/{device_id}/event/port", m.PortStatusEvent),
    ("Port event `power`", "{b}/devices/{device_id}/event/port", m.PortPowerEvent),
    (
        "Order events `started`, `stopped`, `start_failed`, `stop_failed`",
        "{b}/devices/{device_id}/event/order",
        m.OrderResultEvent,
    ),
    ("Order event `confirmed`", "{b}/devices/{device_id}/event/order", m.OrderConfirmedEvent),
    ("Order event `settled`", "{b}/devices/{device_id}/event/order", m.OrderSettledEvent),
    ("Order event `card_swipe`", "{b}/devices/{device_id}/event/order", m.CardSwipeEvent),
    ("Device event `online`", "{b}/devices/{device_id}/event/device", m.DeviceOnlineEvent),
    ("Device event `offline`", "{b}/devices/{device_id}/event/device", m.DeviceOfflineEvent),
    ("Device event `register`", "{b}/devices/{device_id}/event/device", m.RegisterEvent),
    ("Device event `heartbeat`", "{b}/devices/{device_id}/event/device", m.HeartbeatEvent),
    ("Device event `time_sync`", "{b}/devices/{device_id}/event/device", m.TimeSyncEvent),
    ("Device event `alarm`", "{b}/devices/{device_id}/event/device", m.AlarmEvent),
    ("Device event `unknown`", "{b}/devices/{device_id}/event/device", m.UnknownEvent),
    ("Command response", "{b}/devices/{device_id}/response/{command}", m.CommandResponse),
]


def _type(prop: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " \\| ".join(_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if prop.get("type") == "array":
        return f"list of {_type(prop.get('items', {}))}"
    return str(prop.get("type", "any"))


def model_table(model: type[BaseModel]) -> str:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    rows = ["| key | type | notes |", "|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        notes = prop.get("description", "")
        if name not in required:
            default = json.dumps(prop.get("default"))
            notes = f"optional, default `{default}`" + (f"; {notes}" if notes else "")
        rows.append(f"| `{name}` | {_type(prop)} | {notes} |")
    doc = (model.__doc__ or "").strip()
    doc = "" if doc.startswith(("Usage docs", "A base class")) else doc
    return (doc + "\n\n" if doc else "") + "\n".join(rows)


def config_table() -> str:
    rows = [
        "| option | environment | default | description |",
        "|---|---|---|---|",
    ]
    for name, default, description in describe_options(GatewaySettings):
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `{flag}` | `CHARGEBRIDGE_{name.upper()}` | `{default}` | {description} |")
    return "\n".join(rows)


def render() -> str:
    out = [BEGIN, "", "### Topics and payloads", ""]
    for title, topic, model in TOPIC_MODELS:
        out += [f"#### {title}", "", f"Topic `{topic}`.", "", model_table(model), ""]
    out += ["### Command requests", ""]
    for command, model in m.DEVICE_COMMAND_REQUESTS.items():
        out += [
            f"#### `{command}`",
            "",
            f"Topic `{{b}}/devices/{{device_id}}/request/{command}`.",
            "",
            model_table(model),
            "",
        ]
    out += ["### Configuration", "", config_table(), "", END]
    return "\n".join(out)


def json_schemas() -> dict[str, Any]:
    models = [model for _, _, model in TOPIC_MODELS] + list(m.DEVICE_COMMAND_REQUESTS.values())
    return {model.__name__: model.model_json_schema() for model in models}


def splice(text: str, generated: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        return text.rstrip("\n") + "\n\n" + generated + "\n"
    return text[:start] + generated + text[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("doc", nargs="?", type=Path)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(json_schemas(), indent=2))
        return 0
    if args.doc is None:
        print(render())
        return 0
    text = args.doc.read_text() if args.doc.exists() else ""
    updated = splice(text, render())
    if args.check:
        if updated != text:
            print(f"{args.doc} is out of date: run python -m bridge.mqtt.schema {args.doc}")
            return 1
        return 0
    args.doc.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
