"""Every example frame of the reference decodes to the breakdown printed beside it and
re-encodes to the same bytes (Appendix D lists 19)."""

from __future__ import annotations

import pytest

from protocol import (
    AdjustCharging,
    ChargeControl,
    ChargeControlReply,
    ChargeLimits,
    Empty,
    Frame,
    Heartbeat,
    LegacyHeartbeat,
    Payload,
    Registration,
    ResultReply,
    Sender,
    TimeReply,
    TimeRequest,
    decode_frame,
    decode_payload,
    encode_frame,
    encode_payload,
)
from protocol.ids import device_id, device_kind, device_number

DEVICE = Sender.DEVICE
SERVER = Sender.SERVER
SOCKET = 0x04AB373B  # wire 3B 37 AB 04, dual socket No. 11220795
HOST = 0x09D62684  # wire 84 26 D6 09, host No. 14034564
ORDER = bytes.fromhex("12345678" * 4)

# (hex, sender, physical id, message id, command, checksum, expected payload)
EXAMPLES: list[tuple[str, Sender, int, int, int, int, Payload]] = [
    (
        "44 4E 59 1D 00 3B 37 AB 04 B9 00 01 7E 00 8C 08 02 00 03 00 00 E4 00 00 00 3B 02 "
        "29 07 02 20 00 6D 05",
        DEVICE, SOCKET, 185, 0x01, 0x056D,
        LegacyHeartbeat(
            firmware=126, voltage=2188, port_statuses=(0, 3), powers=(0, 228),
            peak_powers=(0, 571), virtual_id=41, signal=7, device_type=2, temperature=32,
            work_mode=0,
        ),
    ),
    ("44 4E 59 0A 00 3B 37 AB 04 B9 00 01 00 D0 02", SERVER, SOCKET, 185, 0x01, 0x02D0,
     ResultReply(0)),
    ("44 4E 59 09 00 84 26 D6 09 05 00 12 94 02", DEVICE, HOST, 5, 0x12, 0x0294, TimeRequest()),
    ("44 4E 59 0D 00 84 26 D6 09 05 00 12 DE 5C A9 5F DA 04", SERVER, HOST, 5, 0x12, 0x04DA,
     TimeReply(1604934878)),
    (
        "44 4E 59 13 00 3B 37 AB 04 B9 00 20 7E 00 02 14 21 00 00 00 E4 00 91 04",
        DEVICE, SOCKET, 185, 0x20, 0x0491,
        Registration(firmware=126, port_count=2, virtual_id=20, device_type=0x21, work_mode=0,
                     power_board_version=0, extra=b"\xe4\x00"),
    ),
    ("44 4E 59 0A 00 3B 37 AB 04 B9 00 20 00 EF 02", SERVER, SOCKET, 185, 0x20, 0x02EF,
     ResultReply(0)),
    ("44 4E 59 10 00 3B 37 AB 04 01 00 21 98 08 02 00 00 09 05 EE 02", DEVICE, SOCKET, 1, 0x21,
     0x02EE, Heartbeat(voltage=2200, port_statuses=(0, 0), signal=9, temperature=5)),
    ("44 4E 59 0A 00 3B 37 AB 04 01 00 21 00 38 02", SERVER, SOCKET, 1, 0x21, 0x0238,
     ResultReply(0)),
    ("44 4E 59 09 00 3B 37 AB 04 B9 00 22 F0 02", DEVICE, SOCKET, 185, 0x22, 0x02F0,
     TimeRequest()),
    ("44 4E 59 0D 00 3B 37 AB 04 B9 00 22 09 0E A9 5F 13 04", SERVER, SOCKET, 185, 0x22, 0x0413,
     TimeReply(1604914697)),
    ("44 4E 59 09 00 3B 37 AB 04 01 00 81 97 02", SERVER, SOCKET, 1, 0x81, 0x0297, Empty()),
    (
        "44 4E 59 26 00 3B 37 AB 04 02 00 82 00 64 01 00 00 01 01 00 00 12 34 56 78 12 34 56 78 "
        "12 34 56 78 12 34 56 78 80 70 88 13 F8 08",
        SERVER, SOCKET, 2, 0x82, 0x08F8,
        ChargeControl(rate_mode=0, balance=356, port=1, command=1, duration=0, order_no=ORDER,
                      max_charge_time=28800, overload_power=5000),
    ),
    (
        "44 4E 59 1D 00 3B 37 AB 04 02 00 82 00 12 34 56 78 12 34 56 78 12 34 56 78 12 34 56 78 "
        "01 00 00 FE 06",
        DEVICE, SOCKET, 2, 0x82, 0x06FE,
        ChargeControlReply(result=0, order_no=ORDER, port=1, waiting_ports=0),
    ),
    ("44 4E 59 0D 00 3B 37 AB 04 02 00 85 A0 8C 20 4E 3A 04", SERVER, SOCKET, 2, 0x85, 0x043A,
     ChargeLimits(max_charge_time=36000, overload_power=20000)),
    ("44 4E 59 0A 00 3B 37 AB 04 02 00 85 00 9D 02", DEVICE, SOCKET, 2, 0x85, 0x029D,
     ResultReply(0)),
    ("44 4E 59 09 00 3B 37 AB 04 01 00 87 9D 02", SERVER, SOCKET, 1, 0x87, 0x029D, Empty()),
    ("44 4E 59 09 00 3B 37 AB 04 01 00 88 9E 02", SERVER, SOCKET, 1, 0x88, 0x029E, Empty()),
    ("44 4E 59 0D 00 3B 37 AB 04 02 00 8A 00 01 80 70 96 03", SERVER, SOCKET, 2, 0x8A, 0x0396,
     AdjustCharging(mode=0, port=1, limit=28800)),
    ("44 4E 59 0A 00 3B 37 AB 04 02 00 8A 00 A2 02", DEVICE, SOCKET, 2, 0x8A, 0x02A2,
     ResultReply(0)),
]  # fmt: skip


def test_appendix_d_has_19_frames() -> None:
    assert len(EXAMPLES) == 19


@pytest.mark.parametrize(
    ("text", "sender", "physical_id", "message_id", "command", "check", "expected"), EXAMPLES
)
def test_example_frame(
    text: str,
    sender: Sender,
    physical_id: int,
    message_id: int,
    command: int,
    check: int,
    expected: Payload,
) -> None:
    raw = bytes.fromhex(text)
    frame = decode_frame(raw)
    assert (frame.physical_id, frame.message_id, frame.command) == (
        physical_id,
        message_id,
        command,
    )
    assert raw[3] | raw[4] << 8 == len(frame.data) + 9
    assert raw[-2] | raw[-1] << 8 == check
    payload = decode_payload(frame.command, frame.data, sender)
    assert payload == expected
    assert type(payload) is type(expected)
    assert encode_frame(physical_id, message_id, command, encode_payload(payload)) == raw
    assert Frame(physical_id, message_id, command, frame.data).encode() == raw


def test_physical_id_breakdowns() -> None:
    assert (device_id(SOCKET), device_number(SOCKET), device_kind(SOCKET)) == (
        "04AB373B",
        11220795,
        "dual_socket",
    )
    assert (device_id(HOST), device_number(HOST), device_kind(HOST)) == (
        "09D62684",
        14034564,
        "host",
    )
    # Worked examples of reference 4.1.
    assert device_number(0x04CEAA40) == 13544000
    assert device_number(0x04D728D6) == 14100694


def test_breakdown_si_values() -> None:
    legacy = EXAMPLES[0][6]
    assert isinstance(legacy, LegacyHeartbeat)
    assert legacy.voltage_v == 218.8
    assert legacy.powers_w == (0.0, 22.8)
    assert legacy.peak_powers_w == (0.0, 57.1)
    assert legacy.temperature_c == -33.0
    heartbeat = EXAMPLES[6][6]
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.voltage_v == 220.0
    assert heartbeat.temperature_c == -60.0
    control = EXAMPLES[11][6]
    assert isinstance(control, ChargeControl)
    assert control.overload_power_w == 500.0
    limits = EXAMPLES[13][6]
    assert isinstance(limits, ChargeLimits)
    assert limits.overload_power_w == 2000.0
    assert limits.over_voltage_v is None
    reply = EXAMPLES[12][6]
    assert isinstance(reply, ChargeControlReply)
    assert reply.executed


def test_reference_build_frame_example() -> None:
    assert encode_frame(0x04AB373B, 0x0001, 0x81) == bytes.fromhex(
        "44 4E 59 09 00 3B 37 AB 04 01 00 81 97 02"
    )
