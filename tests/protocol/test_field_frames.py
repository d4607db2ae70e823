"""The upstream frames issue 16 names (0x05, 0x17, 0x35, 0x41-0x44, 0x15, 0x3B) and the replies
0x15 and 0x3B require: hand-written frames built from the reference's field tables decode to
the named models whole, one byte at a time and with trailing bytes left untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    Alarm,
    CabinetHeartbeat,
    ChargeFinished,
    ExtensionVersions,
    Frame,
    FskParams,
    FskParamsRequest,
    HostHeartbeat,
    HostStatus,
    Payload,
    PayloadError,
    PortPush,
    Registration,
    Sender,
    StreamDecoder,
    UpgradeRequest,
    decode_frame,
    decode_payload,
    encode_frame,
    encode_payload,
)
from protocol.commands.field import (
    HostUpgradeAnswer,
    HostUpgradeRequest,
    answer_fsk_params_request,
    answer_host_upgrade_request,
)
from protocol.commands.host import ExtensionVersion
from protocol.commands.registry import command_name, models_for
from protocol.enums import device_type_name, host_type_name

from .strategies import payloads

DEVICE, SERVER = Sender.DEVICE, Sender.SERVER
SOCKET = 0x04AB373B
CABINET = 0x05AB373B
HOST = 0x09D62684
ORDER = bytes.fromhex("12345678" * 4)

# (frame hex, sender, physical id, message id, command, payload the field tables give)
FRAMES: list[tuple[str, Sender, int, int, int, Payload]] = [
    # 0x05, 2024 layout: type 0x21, firmware 2.15, package type 3.
    ("44 4E 59 10 00 3B 37 AB 04 31 00 05 21 D7 00 03 00 00 00 4D 03", DEVICE, SOCKET, 0x31,
     0x05, UpgradeRequest(device_type=0x21, firmware=215, package_type=3)),
    # 0x17: closed, 25 degC, 220.5 V, 12.34 A, 1234.56 kWh, meter 12.00 A / 1200.00 kWh, no
    # smoke, relay energised, 12 mA leakage, wires 30/29 degC, unlocked, long single-phase.
    ("44 4E 59 20 00 84 26 D6 09 32 00 17 01 5A 9D 08 D2 04 40 E2 01 00 B0 04 C0 D4 01 00 00 "
     "01 0C 5F 5E 00 01 EA 08", DEVICE, HOST, 0x32, 0x17,
     HostStatus(breaker_state=1, temperature=90, voltage=2205, current=1234, energy=123456,
                meter_current=1200, meter_energy=120000, smoke_alarm=0, alarm_relay=1,
                leakage_current=12, live_temperature=95, neutral_temperature=94,
                breaker_lock=0, breaker_model=1)),
    # 0x35: two records (type 0x21 lowest 2.15 on 0x04AB373B; type 0x20 1.30 on 0x05030201).
    ("44 4E 59 1A 00 84 26 D6 09 33 00 35 02 21 00 D7 00 3B 37 AB 04 20 00 82 00 01 02 03 05 "
     "BE 05", DEVICE, HOST, 0x33, 0x35,
     ExtensionVersions((ExtensionVersion(0x21, 0, 215, SOCKET),
                        ExtensionVersion(0x20, 0, 130, 0x05030201)))),
    # 0x41: 10 ports, doors of wire ports 0 and 2 open, fan of wire port 9 on.
    ("44 4E 59 12 00 3B 37 AB 05 34 00 41 0A 05 00 00 00 00 02 00 00 A5 02", DEVICE, CABINET,
     0x34, 0x41, CabinetHeartbeat(port_count=10, doors=0b101, fans=1 << 9)),
    # 0x42: smoke alarm from RS-485 sensor 3, input 2 fired.
    ("44 4E 59 0C 00 3B 37 AB 04 35 00 42 04 03 02 98 02", DEVICE, SOCKET, 0x35, 0x42,
     Alarm(alarm_type=4, port=3, inputs=2)),
    # 0x43: 1 h, 234.2 W max, 1.35 kWh, wire port 1, online, full.
    ("44 4E 59 26 00 3B 37 AB 04 36 00 43 10 0E 26 09 87 00 01 01 00 00 00 00 01 12 34 56 78 "
     "12 34 56 78 12 34 56 78 12 34 56 78 D2 07", DEVICE, SOCKET, 0x36, 0x43,
     ChargeFinished(duration=3600, max_power=2342, energy=135, port=1, start_mode=1,
                    card_id=bytes(4), stop_reason=1, order_no=ORDER)),
    # 0x44: door of wire port 3 not properly closed.
    ("44 4E 59 1B 00 3B 37 AB 04 37 00 44 01 03 12 34 56 78 12 34 56 78 12 34 56 78 12 34 56 78 "
     "F6 06", DEVICE, SOCKET, 0x37, 0x44, PortPush(push_type=1, port=3, order_no=ORDER)),
    # 0x15: the old host's request (no data) and the server's answer byte 0.
    ("44 4E 59 09 00 84 26 D6 09 38 00 15 CA 02", DEVICE, HOST, 0x38, 0x15,
     HostUpgradeRequest()),
    ("44 4E 59 0A 00 84 26 D6 09 38 00 15 00 CB 02", SERVER, HOST, 0x38, 0x15,
     HostUpgradeAnswer(0)),
    # 0x3B at 470 MHz, answered by a 0x3A listing two extensions (same message ID).
    ("44 4E 59 0B 00 84 26 D6 09 39 00 3B D6 01 CA 03", DEVICE, HOST, 0x39, 0x3B,
     FskParamsRequest(470)),
    ("44 4E 59 17 00 84 26 D6 09 39 00 3A D6 01 00 00 00 02 3B 37 AB 04 3C 37 AB 04 1A 06",
     SERVER, HOST, 0x39, 0x3A, FskParams(470, bytes(3), (SOCKET, SOCKET + 1))),
]  # fmt: skip
IDS = [f"{case[4]:02X}-{case[1].value}" for case in FRAMES]


@pytest.mark.parametrize(("text", "sender", "pid", "mid", "command", "expected"), FRAMES, ids=IDS)
def test_frame_decodes_to_the_named_model(
    text: str, sender: Sender, pid: int, mid: int, command: int, expected: Payload
) -> None:
    raw = bytes.fromhex(text)
    frame = decode_frame(raw)
    assert (frame.physical_id, frame.message_id, frame.command) == (pid, mid, command)
    payload = decode_payload(command, frame.data, sender)
    assert payload == expected
    assert encode_frame(pid, mid, command, encode_payload(payload)) == raw
    assert not command_name(command).startswith("unknown")
    assert "extra" not in payload.to_json()


@pytest.mark.parametrize(("text", "sender", "pid", "mid", "command", "expected"), FRAMES, ids=IDS)
def test_stream_whole_bytewise_and_trailing_bytes(
    text: str, sender: Sender, pid: int, mid: int, command: int, expected: Payload
) -> None:
    raw = bytes.fromhex(text)
    frame = Frame(pid, mid, command, encode_payload(expected))
    assert StreamDecoder().feed(raw) == [frame]
    decoder = StreamDecoder()
    assert [item for i in range(len(raw)) for item in decoder.feed(raw[i : i + 1])] == [frame]
    assert decoder.buffered == b""
    trailing = raw[:7]
    decoder = StreamDecoder()
    assert decoder.feed(raw + trailing) == [frame]
    assert decoder.buffered == trailing


@pytest.mark.parametrize(
    ("command", "size"), [(0x17, 23), (0x41, 9), (0x42, 3), (0x43, 29), (0x44, 18), (0x3B, 2)]
)
def test_short_payloads_are_explicit_errors(command: int, size: int) -> None:
    with pytest.raises(PayloadError, match=rf"0x{command:02X} .*{size - 1} data bytes"):
        decode_payload(command, bytes(size - 1), DEVICE)
    decode_payload(command, bytes(size), DEVICE)


def test_extension_versions_short_record_is_an_error() -> None:
    data = bytes.fromhex("02 21 00 D7 00 3B 37 AB 04 20 00 82 00 01 02 03")
    with pytest.raises(PayloadError, match="needs at least 17 data bytes, got 16"):
        decode_payload(0x35, data, DEVICE)
    with pytest.raises(PayloadError):
        decode_payload(0x35, b"", DEVICE)


def test_later_additions_stay_in_extra() -> None:
    data = bytes.fromhex("04 03 02 AA BB")
    alarm = decode_payload(0x42, data, DEVICE)
    assert alarm == Alarm(4, 3, 2, b"\xaa\xbb")
    assert encode_payload(alarm) == data
    assert alarm.to_json()["extra"] == "AABB"


def test_field_names_and_json() -> None:
    assert device_type_name(0x31) == "field_device_31"
    assert host_type_name(0x55) == "field_host_55"
    reg = Registration(firmware=100, port_count=2, virtual_id=0, device_type=0x31)
    assert reg.to_json()["device_type_name"] == "field_device_31"
    hb = HostHeartbeat(100, 0, 0, 20, 3, "8986", 0x55, 0)
    assert hb.to_json()["host_type_name"] == "field_host_55"
    status = decode_payload(0x17, bytes.fromhex(FRAMES[1][0])[12:-2], DEVICE)
    assert isinstance(status, HostStatus)
    assert status.to_json()["current_a"] == 12.34
    assert status.to_json()["energy_kwh"] == 1234.56
    assert decode_payload(0x42, bytes([4, 3, 2]), DEVICE).to_json()["alarm_type_name"] == "smoke"


def test_required_answers() -> None:
    assert answer_host_upgrade_request(HostUpgradeRequest()) == HostUpgradeAnswer(0)
    request = FskParamsRequest(470)
    answer = answer_fsk_params_request(request, (SOCKET,))
    assert answer == FskParams(470, bytes(3), (SOCKET,))
    assert answer_fsk_params_request(request, (), frequency=433).frequency == 433
    assert encode_payload(answer) == bytes.fromhex("D6 01 00 00 00 01 3B 37 AB 04")


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_answers_round_trip(data: st.DataObject) -> None:
    for cls, command, sender in (
        (HostUpgradeRequest, 0x15, DEVICE),
        (HostUpgradeAnswer, 0x15, SERVER),
    ):
        payload = data.draw(payloads(cls))
        assert decode_payload(command, encode_payload(payload), sender) == payload


def test_upstream_table_lists_every_frame_a_device_sends_on_its_own() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
    text = doc.read_text(encoding="utf-8").split("## Upstream commands", 1)[1]
    upstream = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x11, 0x12, 0x15, 0x17, 0x20, 0x21, 0x22]
    upstream += [0x35, 0x3B, 0x41, 0x42, 0x43, 0x44, 0xFA]
    for command in upstream:
        models = models_for(command, DEVICE)
        assert models, hex(command)
        row = f"| 0x{command:02X} | `{command_name(command)}` | `{models[0].__name__}`"
        assert row in text, row
