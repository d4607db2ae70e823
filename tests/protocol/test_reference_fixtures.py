"""Hand-written bytes from the reference's field tables, checked field by field.

The round-trip properties (test_payload_properties.py) build their bytes with our own models,
so a layout mistake that encode and decode share (two fields swapped, a tail field in the wrong
place) passes them. Here every data block is typed in by hand from the tables of
/work/shared/protocol/DNY-PROTOCOL.md (section 9: 0x03, 0x06, 0x21, 0x82 reply), one field per
line, with values chosen all different so that any swap shows; frames are assembled and
checksummed by `_frame` below from section 3, not by `protocol`. Optional trailing fields are
checked at every length the table allows (section 7: decode a field only when it is complete).
"""

from __future__ import annotations

import struct

import pytest

from protocol import (
    ChargeControlReply,
    Frame,
    Heartbeat,
    PayloadError,
    PortPowerReport,
    Sender,
    Settlement,
    StreamDecoder,
    decode_frame,
    decode_payload,
    encode_payload,
)

PID = 0x04AB373B  # wire 3B 37 AB 04 (the reference's dual socket)
ORDER_HEX = "12 34 56 78 9A BC DE F0 01 23 45 67 89 AB CD EF"
ORDER = bytes.fromhex(ORDER_HEX)


def _hex(*fields: str) -> bytes:
    return bytes.fromhex(" ".join(fields))


def _frame(physical_id: int, message_id: int, command: int, data: bytes) -> bytes:
    """Section 3.1/3.2, written out: `DNY`, u16 length n + 9, u32 id, u16 message id,
    command, data, then the low 16 bits of the sum of every preceding byte (LE)."""
    head = b"DNY" + struct.pack("<HIHB", len(data) + 9, physical_id, message_id, command)
    body = head + data
    return body + struct.pack("<H", sum(body) & 0xFFFF)


# --- 0x03 settlement (section 9, 0x03; mandatory prefix 29 bytes) ---------------------------

SETTLEMENT_PREFIX = _hex(
    "10 0E",  # 0  charge duration u16 s: 3600
    "29 09",  # 2  max power u16 0.1 W: 2345 = 234.5 W
    "87 00",  # 4  energy u16 0.01 kWh: 135 = 1.35 kWh
    "01",  # 6  port u8, 0-based: port 2
    "03",  # 7  start mode: 3 verification-code start
    "A1 B2 C3 D4",  # 8  card ID / code bytes[4]
    "05",  # 12 stop reason: 5 user unplugged
    ORDER_HEX,  # 13 order number bytes[16]
)
SETTLEMENT_TAIL = _hex(
    "A2 08",  # 29 second max power u16 0.1 W: 2210
    "38 50 97 5A",  # 31 timestamp u32: 1519865912
    "07 00",  # 35 occupied time u16 minutes: 7
)


def test_settlement_prefix_decodes_field_by_field() -> None:
    assert len(SETTLEMENT_PREFIX) == 29
    s = decode_payload(0x03, SETTLEMENT_PREFIX, Sender.DEVICE)
    assert isinstance(s, Settlement)
    assert s.duration == 3600 and s.duration_s == 3600
    assert s.max_power == 2345 and s.max_power_w == pytest.approx(234.5)
    assert s.energy == 135 and s.energy_kwh == pytest.approx(1.35)
    assert s.port == 1
    assert s.start_mode == 3
    assert bytes(s.card_id) == bytes.fromhex("A1B2C3D4")
    assert s.stop_reason == 5
    assert bytes(s.order_no) == ORDER
    assert (s.second_max_power, s.timestamp, s.occupied_time) == (None, None, None)


@pytest.mark.parametrize(
    ("length", "second_max_power", "timestamp", "occupied_time"),
    [
        (29, None, None, None),
        (30, None, None, None),  # half a field is not a field
        (31, 2210, None, None),
        (34, 2210, None, None),
        (35, 2210, 1519865912, None),
        (36, 2210, 1519865912, None),
        (37, 2210, 1519865912, 7),
    ],
)
def test_settlement_tail_fields_by_length(
    length: int, second_max_power: int | None, timestamp: int | None, occupied_time: int | None
) -> None:
    data = (SETTLEMENT_PREFIX + SETTLEMENT_TAIL)[:length]
    s = decode_payload(0x03, data, Sender.DEVICE)
    assert isinstance(s, Settlement)
    assert (s.energy, s.max_power, bytes(s.order_no)) == (135, 2345, ORDER)
    assert s.second_max_power == second_max_power
    assert s.timestamp == timestamp
    assert s.occupied_time == occupied_time
    if second_max_power is not None:
        assert s.second_max_power_w == pytest.approx(221.0)


def test_settlement_ignores_bytes_beyond_the_last_known_field() -> None:
    data = SETTLEMENT_PREFIX + SETTLEMENT_TAIL + _hex("EE FF")  # newer firmware appends
    s = decode_payload(0x03, data, Sender.DEVICE)
    assert isinstance(s, Settlement)
    assert (s.energy, s.occupied_time) == (135, 7)


def test_settlement_shorter_than_its_prefix_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        decode_payload(0x03, SETTLEMENT_PREFIX[:28], Sender.DEVICE)


def test_settlement_encodes_to_the_hand_written_bytes() -> None:
    """The other direction (the simulator sends 0x03 with our encoder)."""
    full = decode_payload(0x03, SETTLEMENT_PREFIX + SETTLEMENT_TAIL, Sender.DEVICE)
    assert encode_payload(full) == SETTLEMENT_PREFIX + SETTLEMENT_TAIL
    assert encode_payload(
        Settlement(
            duration=3600,
            max_power=2345,
            energy=135,
            port=1,
            start_mode=3,
            card_id=bytes.fromhex("A1B2C3D4"),
            stop_reason=5,
            order_no=ORDER,
        )
    ) == bytes(SETTLEMENT_PREFIX)


# --- 0x06 port power report (section 9, 0x06; mandatory prefix 31 bytes) --------------------

POWER_PREFIX = _hex(
    "00",  # 0  port u8, 0-based: port 1
    "01",  # 1  port status: 1 charging
    "2C 01",  # 2  charge duration u16 s: 300
    "1B 00",  # 4  energy so far u16 0.01 kWh: 27 = 0.27 kWh
    "01",  # 6  start mode: 1 online
    "0B 07",  # 7  power now u16 0.1 W: 1803
    "40 07",  # 9  max power in period: 1856
    "D6 06",  # 11 min power in period: 1750
    "08 07",  # 13 average power in period: 1800
    ORDER_HEX,  # 15 order number bytes[16]
)
POWER_TAIL = _hex(
    "C0 12",  # 31 period energy u16 raw: 4800
    "DB 07",  # 33 peak power u16 0.1 W: 2011
    "FA 08",  # 35 voltage u16 0.1 V: 2298 = 229.8 V
    "11 03",  # 37 current u16 0.001 A: 785 = 0.785 A
    "5D",  # 39 ambient temperature u8, -65: 93 = 28 C
    "00",  # 40 port temperature: 0 = not supported
    "38 50 97 5A",  # 41 timestamp u32: 1519865912
    "09 00",  # 45 occupied time u16 minutes: 9
)


def test_power_report_prefix_decodes_field_by_field() -> None:
    assert len(POWER_PREFIX) == 31
    r = decode_payload(0x06, POWER_PREFIX, Sender.DEVICE)
    assert isinstance(r, PortPowerReport)
    assert (r.port, r.status, r.start_mode) == (0, 1, 1)
    assert r.duration == 300 and r.duration_s == 300
    assert r.energy == 27 and r.energy_kwh == pytest.approx(0.27)
    assert r.power == 1803 and r.power_w == pytest.approx(180.3)
    assert r.max_power == 1856 and r.max_power_w == pytest.approx(185.6)
    assert r.min_power == 1750 and r.min_power_w == pytest.approx(175.0)
    assert r.average_power == 1800 and r.average_power_w == pytest.approx(180.0)
    assert bytes(r.order_no) == ORDER
    assert r.period_energy is None and r.peak_power is None and r.voltage is None


# (length, period energy, peak power, voltage, current, ambient, port temp, timestamp, occupied)
POWER_LENGTHS = [
    (31, None, None, None, None, None, None, None, None),
    (32, None, None, None, None, None, None, None, None),
    (33, 4800, None, None, None, None, None, None, None),
    (35, 4800, 2011, None, None, None, None, None, None),
    (37, 4800, 2011, 2298, None, None, None, None, None),
    (38, 4800, 2011, 2298, None, None, None, None, None),
    (39, 4800, 2011, 2298, 785, None, None, None, None),
    (40, 4800, 2011, 2298, 785, 93, None, None, None),
    (41, 4800, 2011, 2298, 785, 93, 0, None, None),
    (44, 4800, 2011, 2298, 785, 93, 0, None, None),
    (45, 4800, 2011, 2298, 785, 93, 0, 1519865912, None),
    (47, 4800, 2011, 2298, 785, 93, 0, 1519865912, 9),
]


@pytest.mark.parametrize("expected", POWER_LENGTHS, ids=[str(row[0]) for row in POWER_LENGTHS])
def test_power_report_tail_fields_by_length(expected: tuple[int | None, ...]) -> None:
    length = expected[0]
    assert length is not None
    r = decode_payload(0x06, (POWER_PREFIX + POWER_TAIL)[:length], Sender.DEVICE)
    assert isinstance(r, PortPowerReport)
    assert (r.energy, r.power, bytes(r.order_no)) == (27, 1803, ORDER)
    got = (
        r.period_energy,
        r.peak_power,
        r.voltage,
        r.current,
        r.ambient_temperature,
        r.port_temperature,
        r.timestamp,
        r.occupied_time,
    )
    assert got == expected[1:]


def test_power_report_si_values_of_the_tail() -> None:
    r = decode_payload(0x06, POWER_PREFIX + POWER_TAIL, Sender.DEVICE)
    assert isinstance(r, PortPowerReport)
    assert r.peak_power_w == pytest.approx(201.1)
    assert r.voltage_v == pytest.approx(229.8)
    assert r.current_a == pytest.approx(0.785)
    assert r.ambient_temperature_c == pytest.approx(28.0)
    assert r.port_temperature_c is None  # 0 = no sensor
    assert encode_payload(r) == POWER_PREFIX + POWER_TAIL


def test_power_report_shorter_than_its_prefix_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        decode_payload(0x06, POWER_PREFIX[:30], Sender.DEVICE)


# --- whole frames through the stream decoder ---------------------------------------------


def test_hand_built_frames_come_out_of_the_stream_decoder_whole() -> None:
    settlement = _frame(PID, 0x0102, 0x03, SETTLEMENT_PREFIX + SETTLEMENT_TAIL)
    power = _frame(PID, 0x0103, 0x06, POWER_PREFIX + POWER_TAIL)
    assert settlement[:5] == _hex("44 4E 59 2E 00")  # DNY, length 37 + 9 = 46
    assert power[5:12] == _hex("3B 37 AB 04 03 01 06")  # id, message id, command
    items = list(StreamDecoder().feed(settlement + power))
    assert [type(i) for i in items] == [Frame, Frame]
    first, second = items
    assert isinstance(first, Frame) and isinstance(second, Frame)
    assert (first.physical_id, first.message_id, first.command) == (PID, 0x0102, 0x03)
    assert (second.physical_id, second.message_id, second.command) == (PID, 0x0103, 0x06)
    assert first.data == SETTLEMENT_PREFIX + SETTLEMENT_TAIL
    assert second.data == POWER_PREFIX + POWER_TAIL
    assert decode_frame(settlement).data == first.data


# --- 0x21 heartbeat and the 0x82 reply ------------------------------------------------------

HEARTBEAT = _hex(
    "A5 08",  # 0 voltage u16 0.1 V: 2213
    "04",  # 2 port count n = 4
    "00 01 03 02",  # 3 port statuses: idle, charging, full, plugged-in
    "1F",  # 3+n signal: 31
    "5A",  # 4+n temperature: 90 = 25 C
)


def test_heartbeat_with_four_ports() -> None:
    hb = decode_payload(0x21, HEARTBEAT, Sender.DEVICE)
    assert isinstance(hb, Heartbeat)
    assert hb.voltage == 2213
    assert tuple(hb.port_statuses) == (0, 1, 3, 2)
    assert (hb.signal, hb.temperature) == (31, 90)
    # tolerant decoding: 3 + n bytes are enough, signal and temperature then absent
    short = decode_payload(0x21, HEARTBEAT[:7], Sender.DEVICE)
    assert isinstance(short, Heartbeat)
    assert tuple(short.port_statuses) == (0, 1, 3, 2)
    assert (short.signal, short.temperature) == (None, None)
    with pytest.raises(PayloadError):
        decode_payload(0x21, HEARTBEAT[:6], Sender.DEVICE)  # the port statuses cut short


CHARGE_REPLY = _hex(
    "05",  # 0  result: 5 several ports waiting
    ORDER_HEX,  # 1  order number echo
    "FF",  # 17 port: the 0xFF of the request
    "03 00",  # 18 waiting ports bitmap: wire ports 0 and 1
)


def test_charge_control_reply_with_and_without_its_v62_fields() -> None:
    reply = decode_payload(0x82, CHARGE_REPLY, Sender.DEVICE)
    assert isinstance(reply, ChargeControlReply)
    assert reply.result == 5 and not reply.executed
    assert bytes(reply.order_no or b"") == ORDER
    assert (reply.port, reply.waiting_ports) == (0xFF, 3)
    old = decode_payload(0x82, _hex("03"), Sender.DEVICE)  # before v6.2: the result only
    assert isinstance(old, ChargeControlReply)
    assert (old.result, old.executed, old.order_no, old.port) == (3, True, None, None)
