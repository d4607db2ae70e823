"""Property tests over every (command, sender) model, driven by the Wire specs."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import (
    CardSwipe,
    ChargeControl,
    Empty,
    FirmwarePacket,
    Frame,
    Heartbeat,
    LegacyHeartbeat,
    LegacyUpgradeRequest,
    Payload,
    PayloadError,
    PortPowerReport,
    RawPayload,
    Registration,
    ResultReply,
    Sender,
    Settlement,
    UpgradeReply,
    UpgradeRequest,
    WorkModeSet,
    decode_payload,
    encode_frame,
    encode_payload,
)
from protocol.commands.registry import COMMAND_NAMES, DECODERS, DISPATCHED, models_for
from protocol.describe import (
    describe_frame,
    describe_frame_line,
    frame_json,
    frame_json_line,
    to_json_line,
)
from tests.protocol.strategies import minimal, payloads

CASES = sorted(
    {(command, sender, cls) for command, sender in DECODERS for cls in models_for(command, sender)},
    key=lambda case: (case[0], case[1].value, case[2].__name__),
)
IDS = [f"{command:02X}-{sender.value}-{cls.__name__}" for command, sender, cls in CASES]


def test_every_indexed_command_is_modelled_or_documented_raw() -> None:
    modelled = {command for command, _ in DECODERS}
    raw = set(COMMAND_NAMES) - modelled
    assert raw == {*range(0x18, 0x20), *range(0xA1, 0xA7), 0x94}
    assert all(models_for(command, sender) for command, sender in DECODERS)


@pytest.mark.parametrize(("command", "sender", "cls"), CASES, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip(command: int, sender: Sender, cls: type[Payload], data: st.DataObject) -> None:
    payload = data.draw(payloads(cls))
    encoded = encode_payload(payload)
    # The 0xFA trigger carries no data: with data it is a packet (>= 4 bytes) or invalid.
    if (command, sender) == (0xFA, Sender.SERVER) and cls is not FirmwarePacket and encoded:
        assert cls is Empty
        if len(encoded) < 4:
            with pytest.raises(PayloadError):
                decode_payload(command, encoded, sender)
            return
    decoded = decode_payload(command, encoded, sender)
    assert encode_payload(decoded) == encoded
    if (command, sender) in DISPATCHED:
        # 0x05 of exactly 7 bytes is the 2024 layout; 0xFA with data is a packet.
        assume(type(decoded) is cls)
    assert decoded == payload


@pytest.mark.parametrize(("command", "sender", "cls"), CASES, ids=IDS)
def test_every_optional_prefix_length(command: int, sender: Sender, cls: type[Payload]) -> None:
    optional = sum(1 for spec in cls.SPEC if spec.optional)
    sizes = []
    for present in range(optional + 1):
        payload = minimal(cls, present)
        encoded = encode_payload(payload)
        decoded = decode_payload(command, encoded, sender)
        if type(decoded) is cls:
            assert decoded == payload
        sizes.append(len(encoded))
    assert sizes == sorted(set(sizes))  # each optional field adds bytes


@pytest.mark.parametrize(("command", "sender", "cls"), CASES, ids=IDS)
@settings(max_examples=30, deadline=None)
@given(raw=st.binary(max_size=80))
def test_arbitrary_data_only_raises_payload_error(
    command: int, sender: Sender, cls: type[Payload], raw: bytes
) -> None:
    try:
        payload = decode_payload(command, raw, sender)
    except PayloadError as exc:
        assert f"0x{command:02X}" in str(exc)
        assert f"{len(raw)} data bytes" in str(exc)
        return
    assert encode_payload(payload) == raw
    payload.to_json()


@pytest.mark.parametrize(("command", "sender", "cls"), CASES, ids=IDS)
def test_too_short_for_the_prefix(command: int, sender: Sender, cls: type[Payload]) -> None:
    minimum = len(encode_payload(minimal(cls, 0)))
    try:
        decode_payload(command, b"", sender)
    except PayloadError:
        assert minimum > 0
    else:
        assert minimum == 0 or (command, sender) in DISPATCHED


@pytest.mark.parametrize(("command", "sender", "cls"), CASES, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_si_properties_match_json(
    command: int, sender: Sender, cls: type[Payload], data: st.DataObject
) -> None:
    payload = data.draw(payloads(cls))
    body = payload.to_json()
    for spec in cls.SPEC:
        if spec.wire.unit is None:
            continue
        key = spec.name + spec.wire.unit.suffix
        raw = getattr(payload, spec.name)
        convert = spec.wire.unit.convert
        if raw is None:
            assert body[key] is None
        elif isinstance(raw, tuple):
            assert body[key] == [convert(item) for item in raw]
        else:
            assert body[key] == convert(raw)
        if hasattr(payload, key):
            value = getattr(payload, key)
            assert (list(value) if isinstance(value, tuple) else value) == body[key]


def test_unknown_commands_are_raw() -> None:
    for command in (0x18, 0x1F, 0xA1, 0xA6, 0x94, 0xC3):
        assert decode_payload(command, b"\x01\x02", Sender.DEVICE) == RawPayload(b"\x01\x02")
    assert decode_payload(0x06, b"\x01", Sender.SERVER) == RawPayload(b"\x01")


def test_encode_refuses_gaps_and_bad_sizes() -> None:
    order = bytes(16)
    with pytest.raises(PayloadError, match="max_charge_time"):
        ChargeControl(0, 0, 0, 1, 0, order, max_charge_time=None, overload_power=5).encode()
    with pytest.raises(PayloadError, match="order_no"):
        ChargeControl(0, 0, 0, 1, 0, b"short").encode()
    with pytest.raises(PayloadError):
        ChargeControl(0, 1 << 32, 0, 1, 0, order).encode()
    with pytest.raises(PayloadError, match="signal"):
        Heartbeat(2200, (0,), signal=None, temperature=70).encode()


def test_units_and_optional_fields() -> None:
    report = decode_payload(0x06, bytes(31), Sender.DEVICE)
    assert isinstance(report, PortPowerReport)
    assert report.voltage is None and report.voltage_v is None and report.current_a is None
    full = PortPowerReport(
        0, 1, 3600, 135, 1, 2342, 2400, 2000, 2300, bytes(16),
        period_energy=5, peak_power=2500, voltage=2212, current=2345,
        ambient_temperature=90, port_temperature=0, timestamp=1, occupied_time=2,
    )  # fmt: skip
    assert (full.duration_s, full.energy_kwh, full.power_w) == (3600, 1.35, 234.2)
    assert (full.voltage_v, full.current_a) == (221.2, 2.345)
    assert (full.ambient_temperature_c, full.port_temperature_c) == (25.0, None)
    assert len(full.encode()) == 47
    settlement = Settlement(60, 10, 5, 0, 1, bytes(4), 5, bytes(16))
    assert settlement.to_json()["stop_reason_name"] == "unplugged"
    assert len(settlement.encode()) == 29


@pytest.mark.parametrize(("command", "sender", "cls"), CASES, ids=IDS)
def test_enum_names_in_json(command: int, sender: Sender, cls: type[Payload]) -> None:
    payload = minimal(cls, sum(1 for spec in cls.SPEC if spec.optional))
    body = payload.to_json()
    for spec in cls.SPEC:
        if spec.wire.enum is not None and spec.wire.kind == "int":
            assert body[f"{spec.name}_name"] == spec.wire.enum(getattr(payload, spec.name))


@pytest.mark.parametrize(("command", "sender", "cls"), CASES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_json_text_is_exactly_the_encoded_dict(
    command: int, sender: Sender, cls: type[Payload], data: st.DataObject
) -> None:
    payload = data.draw(payloads(cls))
    assert payload.to_json_text() == to_json_line(payload.to_json())
    assert payload.to_json_text('"model": "X"') == to_json_line({**payload.to_json(), "model": "X"})
    frame = Frame(0x04AB373B, 7, command, encode_payload(payload))
    line, ok = frame_json_line(frame, sender)
    assert line == to_json_line(frame_json(frame, sender))
    assert ok == ("error" not in json.loads(line))
    # The CLI's path straight from the bytes gives the same line as the dict path, for a
    # payload that decodes and for one cut short (the error path).
    raw = encode_frame(frame.physical_id, frame.message_id, command, frame.data)
    described, good = describe_frame(raw, sender)
    assert describe_frame_line(raw, sender) == (line, ok) == (to_json_line(described), good)
    short = encode_frame(frame.physical_id, frame.message_id, command, frame.data[:1])
    described, good = describe_frame(short, sender)
    assert describe_frame_line(short, sender) == (to_json_line(described), good)


def test_card_swipe_tolerant_card_number_2() -> None:
    prefix = bytes.fromhex("0A0B0C0D 04 FF 6400")  # social-security card, balance query
    swipe = decode_payload(0x02, prefix, Sender.DEVICE)
    assert isinstance(swipe, CardSwipe)
    assert (swipe.card_number, swipe.card_type, swipe.port, swipe.balance) == (
        0x0A0B0C0D,
        4,
        0xFF,
        100,
    )
    assert swipe.timestamp is None and swipe.card_number_2 is None
    stamped = prefix + bytes.fromhex("78563412")
    assert decode_payload(0x02, stamped + b"\x00", Sender.DEVICE) == CardSwipe(
        swipe.card_id, 4, 0xFF, 100, 0x12345678, b""
    )
    # The length byte announces 16 bytes but only 3 follow: kept raw, not guessed.
    short = decode_payload(0x02, stamped + b"\x10abc", Sender.DEVICE)
    assert isinstance(short, CardSwipe)
    assert short.card_number_2 is None and short.extra == b"\x10abc"
    full = decode_payload(0x02, stamped + b"\x03abcXY", Sender.DEVICE)
    assert isinstance(full, CardSwipe)
    assert (full.card_number_2, full.extra) == (b"abc", b"XY")


def test_tolerant_decoding_choices() -> None:
    device, server = Sender.DEVICE, Sender.SERVER
    assert isinstance(decode_payload(0x05, bytes(7), device), UpgradeRequest)
    assert decode_payload(0x05, b"\x01\x02", device) == LegacyUpgradeRequest(b"\x01\x02")
    assert decode_payload(0xFA, b"", server) == Empty()
    assert isinstance(decode_payload(0xFA, bytes(204), server), FirmwarePacket)
    host_request = decode_payload(0xFA, b"\x00\x00\x00", device)
    assert isinstance(host_request, UpgradeReply) and host_request.is_request
    # 0x01 with only the mandatory prefix (5 + 5n bytes), then one optional byte at a time.
    legacy = bytes.fromhex("7E00 8C08 01 00 0000 0000")
    for extra_bytes in range(6):
        payload = decode_payload(0x01, legacy + bytes(range(1, extra_bytes + 1)), device)
        assert isinstance(payload, LegacyHeartbeat)
        optional = [payload.virtual_id, payload.signal, payload.device_type]
        optional += [payload.temperature, payload.work_mode]
        assert optional == [*range(1, extra_bytes + 1), *[None] * (5 - extra_bytes)]
    with pytest.raises(PayloadError, match=r"0x01 .* 9 data bytes"):
        decode_payload(0x01, legacy[:-1], device)
    registration = decode_payload(0x20, bytes.fromhex("7E00 02 14 21"), device)
    assert registration == Registration(126, 2, 20, 0x21)
    # 0x8D: one byte each way; only the sender tells them apart.
    assert decode_payload(0x8D, b"\x00", server) == WorkModeSet(0)
    assert decode_payload(0x8D, b"\x00", device) == ResultReply(0)
