"""Markdown for the generated reference in docs/gateway.md: one section per topic and model.

`bridge.contract` owns the table of topics and models and decides which rows go into which
document; this module only renders rows (and the gateway's settings) as Markdown, and splices
the result between the BEGIN/END markers so the prose around it is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal, get_args

from pydantic import BaseModel

from bridge.config import GatewaySettings, describe_options

BEGIN = "<!-- BEGIN GENERATED: python -m bridge.contract -->"
END = "<!-- END GENERATED -->"

Direction = Literal["in", "out"]
# (topic with {b} and {parameter} placeholders, direction, retained, models, title)
Row = tuple[str, Direction, bool, tuple[type[BaseModel], ...], str]


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
    """The model's docstring, then one row per key: type, and default or description."""
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


def event_types(model: type[BaseModel]) -> list[str]:
    """The values an event model's `type` key may take (empty for models without one)."""
    field = model.model_fields.get("type")
    return [str(v) for v in get_args(field.annotation)] if field is not None else []


def heading(title: str, model: type[BaseModel], shared: bool) -> str:
    """`Order event `settled`` for a model sharing its topic with others, else the title."""
    types = event_types(model) if shared else []
    return f"{title} " + ", ".join(f"`{t}`" for t in types) if types else title


def config_table() -> str:
    rows = [
        "| option | environment | default | description |",
        "|---|---|---|---|",
    ]
    for name, default, description in describe_options(GatewaySettings):
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `{flag}` | `CHARGEBRIDGE_{name.upper()}` | `{default}` | {description} |")
    return "\n".join(rows)


def _section(topic: str, retained: bool, title: str, model: type[BaseModel]) -> list[str]:
    where = f"Topic `{topic}`" + (", retained." if retained else ".")
    return [f"#### {title}", "", where, "", model_table(model), ""]


def render(rows: Iterable[Row]) -> str:
    """The generated reference: published topics, then requests, then the settings."""
    rows = list(rows)
    out = [BEGIN, "", "### Topics and payloads", ""]
    for topic, direction, retained, models, title in rows:
        if direction == "out":
            for model in models:
                out += _section(topic, retained, heading(title, model, len(models) > 1), model)
    out += ["### Command requests", ""]
    for topic, direction, retained, models, title in rows:
        if direction == "in":
            for model in models:
                out += _section(topic, retained, title, model)
    out += ["### Configuration", "", config_table(), "", END]
    return "\n".join(out)


def splice(text: str, generated: str) -> str:
    """`text` with its generated section replaced (or appended when it has none)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        return text.rstrip("\n") + "\n\n" + generated + "\n"
    return text[:start] + generated + text[end + len(END) :]
