"""`FastJson` writes exactly what pydantic's `model_dump_json` writes, for any values; on values
it cannot render it goes through the model (and its validation errors)."""

from __future__ import annotations

import math
import types
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, ValidationError
from pydantic_core import PydanticUndefined

import bridge.mqtt.payloads.fast as fast_module
from bridge.mqtt.payloads import (
    DeviceState,
    MqttPayload,
    PortPowerEvent,
    PortState,
    PortStatusEvent,
)
from bridge.mqtt.payloads.fast import FastJson

HOT = (PortPowerEvent, PortState, PortStatusEvent, DeviceState)

# Floats pydantic and Python write alike, and all the others (exponents, NaN, infinities).
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**7), 10**7).map(lambda n: n / 10),  # wire values: tenths, hundredths
    st.integers(-(10**7), 10**7).map(lambda n: n / 100),
    st.sampled_from([0.0, -0.0, 1e-4, 9.999e-5, 1e16, 9999999999999998.0, -1e16, 1e-5, 1e300]),
    st.integers(-(10**6), 10**6),  # pydantic makes them floats
)
STRINGS = st.one_of(st.text(), st.text(alphabet="0123456789ABCDEF", min_size=8, max_size=32))


def _strategy(annotation: Any) -> st.SearchStrategy[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return st.one_of(st.none(), _strategy(inner))
    ints = st.one_of(st.integers(), st.booleans())  # pydantic takes a bool as an int
    bools = st.one_of(st.booleans(), st.integers(0, 1))  # and 0 and 1 as a bool
    return {bool: bools, int: ints, float: FLOATS, str: STRINGS}[annotation]


def _fields(model: type[MqttPayload]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            name: _strategy(info.annotation)
            for name, info in model.model_fields.items()
            if get_origin(info.annotation) is not Literal
        }
    )


def _pydantic(model: type[MqttPayload], fields: dict[str, Any]) -> bytes | None:
    try:
        return model(**fields).model_dump_json().encode()
    except ValueError:  # a ValidationError, or unencodable surrogates
        return None


@pytest.mark.parametrize("model", HOT, ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_text_is_pydantics(model: type[MqttPayload], data: st.DataObject) -> None:
    fields = data.draw(_fields(model))
    if data.draw(st.integers(0, 9)) == 0:  # now and then a wrong type: the model's error
        fields[data.draw(st.sampled_from(sorted(fields)))] = b"x"
    fast = FastJson(model)
    expected = _pydantic(model, fields)
    values = tuple(fields[name] for name in fast.fields)
    if expected is None:
        with pytest.raises(ValueError):
            fast.dump(**fields)
        assert fast.text(values) is None
        return
    assert fast.dump(**fields) == expected
    assert fast.text(values) in (None, expected)


def test_usual_values_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = FastJson(PortState)
    values = (1, "charging", 1, 230.0, "AB" * 16, "2026-12-02T00:00:00.000Z")
    fields = dict(zip(fast.fields, values, strict=False))
    expected = PortState(**fields).to_json()

    def no_model(**_: Any) -> PortState:
        raise AssertionError("the model was built")

    monkeypatch.setattr(fast, "model", no_model)
    assert fast.dump(**fields) == expected
    assert fast.text(values + (None,) * 6) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("power_w", 1e-7),  # pydantic writes 1e-7, Python 1e-07
        ("power_w", 1e20),
        ("power_w", math.inf),  # pydantic writes null
        ("power_w", 230),  # an int: pydantic makes it 230.0
        ("status", "\ud800"),  # a lone surrogate
    ],
)
def test_unusual_values_go_through_the_model(field: str, value: Any) -> None:
    fields: dict[str, Any] = {
        "port": 1,
        "status": "charging",
        "status_code": 1,
        "power_w": 230.0,
        "order_no": None,
        "updated_at": "2026-12-02T00:00:00.000Z",
        field: value,
    }
    fast = FastJson(PortState)
    assert fast.text(tuple(fields.values())) is None
    expected = _pydantic(PortState, fields)
    if expected is None:
        with pytest.raises(ValueError):
            fast.dump(**fields)
    else:
        assert fast.dump(**fields) == expected


def test_bad_values_raise_the_models_validation_error() -> None:
    fast = FastJson(PortStatusEvent)
    fields = {"ts": "t", "device_id": "X", "gateway_id": "g", "command": 6, "message_id": 1}
    with pytest.raises(ValidationError, match="status_code"):
        fast.dump(**fields, port=1, status="idle", status_code="zero")
    coerced = fast.dump(**{**fields, "command": True}, port=1, status="idle", status_code=0)
    assert b'"command":1,' in coerced  # pydantic's lax int, through the model
    assert fast.text(("t", "X", "g", 6, 1, 1, "idle", [0])) is None
    # the fields are parameters: a missing or unknown one is the caller's bug
    with pytest.raises(TypeError):
        fast.dump(**fields, status="idle", status_code=0)
    with pytest.raises(TypeError):
        fast.dump(**fields, port=1, status="idle", status_code=0, colour="red")
    assert fast.text(("t", "X", "g", 6, 1, 1, "idle")) is None


def test_a_field_without_a_fast_form_fails_when_made() -> None:
    class Constrained(MqttPayload):
        port: int = Field(ge=1)

    class Listed(MqttPayload):
        ports: list[int]

    class Either(MqttPayload):
        value: int | str

    for model in (Constrained, Listed, Either):
        with pytest.raises(TypeError):
            FastJson(model)


def test_defaults_and_literals_are_the_models() -> None:
    fast = FastJson(PortStatusEvent)
    assert "type" not in fast.fields
    assert PortStatusEvent.model_fields["type"].default == "status"
    assert PortState.model_fields["energy_kwh"].default is None
    assert PortState.model_fields["port"].default is PydanticUndefined
    state = FastJson(PortState).dump(
        port=2, status="idle", status_code=0, power_w=None, order_no=None, updated_at="t"
    )
    assert (
        state
        == PortState(
            port=2, status="idle", status_code=0, power_w=None, order_no=None, updated_at="t"
        ).to_json()
    )


def test_recent_float_texts_are_bounded() -> None:
    fast = FastJson(PortState)
    for n in range(fast_module.FLOAT_TEXTS * 3):
        text = fast.dump(
            port=1, status="x", status_code=1, power_w=n / 10, order_no=None, updated_at="t"
        )
        assert f'"power_w":{n / 10!r},'.encode() in text
        assert len(fast_module._floats) <= fast_module.FLOAT_TEXTS
    for zero in (0.0, -0.0, 0.0):  # equal keys, different texts
        text = fast.dump(
            port=1, status="x", status_code=1, power_w=zero, order_no=None, updated_at="t"
        )
        assert f'"power_w":{zero!r},'.encode() in text
