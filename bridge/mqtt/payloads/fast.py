"""Payloads published per device frame as JSON text without a pydantic model per message.

At 1,000 frames/s the gateway built and dumped two models per 0x06 power report (the event and
the retained port state): validating them cost ~12 µs each and dumping ~4 µs, for values our
own decoder had just produced. `FastJson(Model)` generates, once, a function that writes the
same text as `Model(**fields).model_dump_json()`: same keys in the same order, the same
rendering of bool, int, float, str and null. The model's fields must be plain `bool`, `int`,
`float`, `str`, `X | None` or a `Literal` with a default (anything else raises `TypeError`
when the serializer is made, so a contract change cannot slip past it). A value it cannot
render exactly as pydantic does (a wrong type, a float outside 1e-4..1e16, where pydantic and
Python write exponents differently, NaN, a string that is not valid UTF-8) makes it build the
model instead: that validates as before, raising the same `ValidationError` on bad input.
`tests/bridge/mqtt/payloads/test_fast.py` compares both texts on random values.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic_core import PydanticUndefined

from bridge.mqtt.payloads.common import MqttPayload

M = TypeVar("M", bound=MqttPayload)


class Unusual(Exception):
    """A value the generated text cannot render exactly as pydantic would."""


def _unusual() -> str:
    raise Unusual


# `repr` of a float is the dearest part of the text (~1 µs here); the same values recur (a
# frame's port state repeats its event's, voltages and temperatures repeat across a fleet), so
# the texts of recent ones are kept, at most `FLOAT_TEXTS` (then forgotten at once).
FLOAT_TEXTS = 1024
_floats: dict[float, str] = {}


def _float(value: float) -> str:
    """The text of a float not among the recent ones. Between 1e-4 and 1e16 Python's `repr`
    and pydantic's float writer both write plain decimals with the shortest digits that read
    back the same; outside (and for NaN and the infinities) they write it differently."""
    if not (1e-4 <= value < 1e16 or -1e16 < value <= -1e-4):
        if value != 0.0:
            raise Unusual
        return float.__repr__(value)  # 0.0 and -0.0: equal keys, different texts: not kept
    text = float.__repr__(value)
    if len(_floats) >= FLOAT_TEXTS:
        _floats.clear()
    _floats[value] = text
    return text


_EXPRESSIONS = {
    bool: "(_true if {v} is True else _false if {v} is False else _unusual())",
    int: "(str({v}) if type({v}) is int else _unusual())",
    float: "((_floats.get({v}) or _float({v})) if type({v}) is float else _unusual())",
    # json's C string escaper escapes exactly what pydantic's does (", \\, controls < 0x20)
    str: "(_quote({v}) if type({v}) is str else _unusual())",
}
_NAMESPACE: dict[str, Any] = {
    "_Unusual": Unusual,
    "_unusual": _unusual,
    "_floats": _floats,
    "_float": _float,
    "_quote": json.encoder.encode_basestring,
    "_null": "null",
    "_true": "true",
    "_false": "false",
}


def _value(name: str, annotation: Any) -> str:
    """The expression rendering field `name` (its parameter) as JSON text."""
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1 or len(get_args(annotation)) != 2:
            raise TypeError(f"{name}: {annotation} is not a plain optional")
        optional, annotation = True, args[0]
    expression = _EXPRESSIONS.get(annotation)
    if expression is None:
        raise TypeError(f"{name}: {annotation} has no fast rendering")
    expression = expression.format(v=name)
    return f"(_null if {name} is None else {expression})" if optional else expression


def _compile(model: type[MqttPayload]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """`dump(field, ...) -> bytes` (the model's text; through the model when a value is
    unusual) and `text(field, ...) -> bytes` (raises `Unusual`) for `model`, one f-string
    each, and their parameters in declared order."""
    namespace = dict(_NAMESPACE, _model=model)
    params: list[str] = []
    pieces: list[str] = []
    for name, info in model.model_fields.items():
        if info.metadata or info.alias or not name.isidentifier() or name.startswith("_"):
            raise TypeError(f"{model.__name__}.{name}: constraints or aliases have no fast form")
        key = f'"{name}":'
        if get_origin(info.annotation) is Literal:
            if info.default is PydanticUndefined:
                raise TypeError(f"{model.__name__}.{name}: a Literal needs a default")
            constant = f"_constant{len(pieces)}"
            namespace[constant] = json.dumps(info.default, ensure_ascii=False)
            pieces.append(f"{key}{{{constant}}}")
            continue
        if info.default_factory is not None:
            raise TypeError(f"{model.__name__}.{name}: default factories have no fast form")
        default = "" if info.default is PydanticUndefined else f"={info.default!r}"
        if default and not isinstance(info.default, int | float | str | None):
            raise TypeError(f"{model.__name__}.{name}: a default of {info.default!r}")
        params.append(f"{name}{default}")
        pieces.append(f"{key}{{{_value(name, info.annotation)}}}")
    names = tuple(p.split("=")[0] for p in params)
    signature = ", ".join(params)
    text = f"f'{{{{{','.join(pieces)}}}}}'.encode()"
    source = (
        f"def dump({signature}):\n"
        f"    try:\n"
        f"        return {text}\n"
        f"    except (_Unusual, UnicodeEncodeError):\n"
        f"        return _model({', '.join(f'{n}={n}' for n in names)}).to_json()\n"
        f"def text({signature}):\n"
        f"    return {text}\n"
    )
    exec(compile(source, f"<fast json {model.__name__}>", "exec"), namespace)
    return namespace, names


class FastJson(Generic[M]):
    """A model's JSON text made without the model whenever the values allow it.

    `dump(**fields)` is `Model(**fields).to_json()` (it takes the fields as parameters, so a
    missing or unknown one is a `TypeError`); `text(values)` takes the values in declared
    order (a NamedTuple of them) and returns None when one is unusual, for the caller to
    validate them through the model."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        namespace, self.fields = _compile(model)
        self.dump: Callable[..., bytes] = namespace["dump"]
        self._text: Callable[..., bytes] = namespace["text"]

    def text(self, values: Sequence[Any]) -> bytes | None:
        try:
            return self._text(*values)
        except (Unusual, TypeError, UnicodeEncodeError):
            return None
