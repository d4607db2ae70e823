"""The decode CLI's generated line functions give exactly the dict path's text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Heartbeat, Payload, PortPowerReport, Sender, encode_frame, encode_payload
from protocol.commands._model import _fractions, _number_text
from protocol.commands.registry import DECODERS, models_for
from protocol.describe import describe_frame, describe_frame_line, good_frame_line, to_json_line
from protocol.units import (
    CENTIAMPS,
    CURRENT,
    DURATION,
    ENERGY,
    POWER,
    TEMPERATURE,
    VOLTAGE,
    Unit,
)
from tests.protocol.strategies import payloads

UNITS = (VOLTAGE, POWER, ENERGY, CURRENT, CENTIAMPS, TEMPERATURE, DURATION)
CASES = sorted(
    {(command, sender, cls) for command, sender in DECODERS for cls in models_for(command, sender)},
    key=lambda case: (case[0], case[1].value, case[2].__name__),
)
IDS = [f"{command:02X}-{sender.value}-{cls.__name__}" for command, sender, cls in CASES]
# Models whose complete payload must take the fast way (fixed layouts, `_line_fields`).
FAST = {"PortPowerReport", "Settlement", "Registration", "Heartbeat"}


@pytest.mark.parametrize("divisor", sorted({unit.divisor for unit in UNITS if unit.divisor}))
def test_decimal_text_is_the_float_repr_for_every_u16_and_u32_edges(divisor: int) -> None:
    fractions = _fractions(divisor)
    edges = [*range(1 << 16), *range((1 << 32) - 5000, 1 << 32), 10**9, 10**9 + 1]
    assert [f"{raw // divisor}.{fractions[raw % divisor]}" for raw in edges] == [
        repr(raw / divisor) for raw in edges
    ]


@settings(deadline=None)
@given(st.integers(0, (1 << 32) - 1))
def test_decimal_text_is_the_float_repr(raw: int) -> None:
    for divisor in (10, 100, 1000):
        assert f"{raw // divisor}.{_fractions(divisor)[raw % divisor]}" == repr(raw / divisor)


@pytest.mark.parametrize("unit", UNITS, ids=[unit.suffix + unit.inline for unit in UNITS])
def test_byte_tables_are_what_json_writes(unit: Unit) -> None:
    convert = unit.convert
    assert [_number_text(convert(raw)) for raw in range(256)] == [
        json.dumps(convert(raw)) for raw in range(256)
    ]


@pytest.mark.parametrize(("command", "sender", "cls"), CASES, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_complete_payloads_take_the_fast_way_with_the_same_text(
    command: int, sender: Sender, cls: type[Payload], data: st.DataObject
) -> None:
    optional = sum(1 for spec in cls.SPEC if spec.optional)
    payload = data.draw(payloads(cls, present=optional))
    raw = encode_frame(0x04AB373B, 7, command, encode_payload(payload))
    described, good = describe_frame(raw, sender)
    line = good_frame_line(sender)(raw)
    if cls.__name__ in FAST and described.get("payload", {}).get("model") == cls.__name__:
        assert line is not None
    if line is not None:
        assert good
        assert line == to_json_line(described)
    assert describe_frame_line(raw, sender) == (to_json_line(described), good)


def test_anything_unusual_leaves_the_fast_way() -> None:
    quick = good_frame_line(Sender.DEVICE)
    report = PortPowerReport(1, 1, 60, 5, 1, 2342, 2500, 2100, 2300, bytes(16), 12)
    full = encode_frame(0x04000001, 1, 0x06, encode_payload(report))
    beat = encode_frame(0x04000001, 2, 0x21, encode_payload(Heartbeat(2200, (0, 1), 9)))
    cases = [
        full,  # optional fields cut short: the payload object writes the nulls
        beat,  # a heartbeat without temperature
        full[:-1] + bytes([full[-1] ^ 1]),  # bad checksum
        encode_frame(0x04000001, 3, 0x06, bytes(5)),  # payload too short
        encode_frame(0x04000001, 4, 0x77, bytes(3)),  # no model
        full[:-3],  # length field and size disagree
        b"",
    ]
    for raw in cases:
        assert quick(raw) is None
        described, good = describe_frame(raw, Sender.DEVICE)
        assert describe_frame_line(raw, Sender.DEVICE) == (to_json_line(described), good)
    assert json.loads(describe_frame_line(full, Sender.DEVICE)[0])["payload"]["voltage"] is None
    assert json.loads(describe_frame_line(beat, Sender.DEVICE)[0])["payload"]["signal"] == 9


@settings(deadline=None)
@given(st.binary(max_size=30))
def test_heartbeat_line_fields_are_the_decoded_fields(data: bytes) -> None:
    fields = Heartbeat._line_fields(data)
    if fields is None:
        return
    voltage, statuses, signal, temperature, extra = fields
    assert Heartbeat.decode(data) == Heartbeat(voltage, tuple(statuses), signal, temperature, extra)
