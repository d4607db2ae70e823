"""Hypothesis strategies derived from the models' Wire specs: one generic strategy per field
kind, so every payload model is covered without per-model code."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from protocol import Frame, Payload
from protocol.commands._model import (
    ASCII,
    BYTES,
    INT,
    LIST,
    RECORDS,
    TAIL,
    VARBYTES,
    FieldSpec,
    Wire,
)

_TEXT = st.characters(min_codepoint=1, max_codepoint=255)


def _int(code: str) -> st.SearchStrategy[int]:
    size = {"B": 1, "H": 2, "I": 4}[code]
    return st.integers(0, (1 << (8 * size)) - 1)


def field_value(wire: Wire, count: int) -> st.SearchStrategy[Any]:
    """Random valid wire value for one field; `count` is the shared length of array fields."""
    if wire.kind == INT:
        return _int(wire.code)
    if wire.kind == BYTES:
        return st.binary(min_size=wire.size, max_size=wire.size)
    if wire.kind == ASCII:
        return st.text(_TEXT, max_size=wire.size)
    if wire.kind in (TAIL, VARBYTES):
        return st.binary(max_size=40)
    if wire.kind == LIST:
        return st.lists(_int(wire.code), min_size=count, max_size=count).map(tuple)
    if wire.kind == RECORDS:
        assert wire.record is not None
        record = payloads(wire.record)
        return st.lists(record, min_size=count, max_size=count).map(tuple)
    raise AssertionError(f"no strategy for {wire.kind}")


@st.composite
def payloads(draw: st.DrawFn, cls: type[Payload], present: int | None = None) -> Payload:
    """A random instance of `cls`: a random number of optional fields present (or exactly
    `present`), array fields of one shared length, `extra` bytes only when every optional field
    is present (otherwise they would be read as the next field)."""
    specs: tuple[FieldSpec, ...] = cls.SPEC
    optional = [spec.name for spec in specs if spec.optional]
    if present is None:
        present = draw(st.integers(0, len(optional)))
    absent = set(optional[present:])
    count = draw(st.integers(0, 12))
    values: dict[str, Any] = {}
    for spec in specs:
        if spec.name in absent:
            values[spec.name] = None
        elif spec.name == "extra" and absent:
            values[spec.name] = b""
        else:
            values[spec.name] = draw(field_value(spec.wire, count))
    return cls(**values)


def frames(max_data: int = 40) -> st.SearchStrategy[Frame]:
    return st.builds(
        Frame,
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFF),
        st.binary(max_size=max_data),
    )


def iccids() -> st.SearchStrategy[str]:
    return st.text(st.sampled_from("0123456789ABCDEFabcdef"), min_size=18, max_size=18).map(
        lambda tail: "89" + tail
    )


def minimal(cls: type[Payload], present: int) -> Payload:
    """The smallest instance of `cls` with exactly `present` optional fields set."""
    optional = [spec.name for spec in cls.SPEC if spec.optional]
    absent = set(optional[present:])
    empty: dict[str, Any] = {INT: 0, ASCII: "", TAIL: b"", VARBYTES: b"", LIST: (), RECORDS: ()}
    values = {
        spec.name: None
        if spec.name in absent
        else bytes(spec.wire.size)
        if spec.wire.kind == BYTES
        else empty[spec.wire.kind]
        for spec in cls.SPEC
    }
    return cls(**values)
