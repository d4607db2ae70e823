"""Frame layer and StreamDecoder: exact behaviour on hand-written inputs."""

from __future__ import annotations

import pytest

from protocol import (
    BadFrame,
    ChecksumError,
    Frame,
    FrameError,
    Garbage,
    Iccid,
    Keepalive,
    LengthError,
    StreamDecoder,
    TruncatedError,
    decode_frame,
    encode_frame,
)
from protocol.frame import GARBAGE_SAMPLE

HEARTBEAT = bytes.fromhex("44 4E 59 10 00 3B 37 AB 04 01 00 21 98 08 02 00 00 09 05 EE 02")
ICCID = b"89860412345678901234"
FRAME = Frame(0x04AB373B, 1, 0x21, bytes.fromhex("98 08 02 00 00 09 05"))


def test_decode_frame_errors() -> None:
    with pytest.raises(TruncatedError):
        decode_frame(HEARTBEAT[:10])
    with pytest.raises(TruncatedError):
        decode_frame(HEARTBEAT[:-1])
    with pytest.raises(LengthError):
        decode_frame(HEARTBEAT + b"\x00")
    with pytest.raises(ChecksumError):
        decode_frame(HEARTBEAT[:-1] + b"\x03")
    with pytest.raises(FrameError):
        decode_frame(b"XNY" + HEARTBEAT[3:])
    with pytest.raises(LengthError):
        decode_frame(b"DNY\x08\x00" + bytes(9))


def test_encode_frame_rejects_out_of_range_header() -> None:
    with pytest.raises(FrameError):
        encode_frame(1 << 32, 0, 0x21)
    with pytest.raises(FrameError):
        encode_frame(0, 0x10000, 0x21)


def test_stream_mixed_tokens_whole_and_bytewise() -> None:
    stream = ICCID + HEARTBEAT + b"link" + HEARTBEAT
    expected = [Iccid(ICCID.decode()), FRAME, Keepalive(), FRAME]
    assert StreamDecoder().feed(stream) == expected
    decoder = StreamDecoder()
    items = [item for i in range(len(stream)) for item in decoder.feed(stream[i : i + 1])]
    assert items == expected
    assert decoder.buffered == b""


def test_garbage_is_reported_and_frames_survive() -> None:
    items = StreamDecoder().feed(b"xyz" + HEARTBEAT + b"\x00\x01D8l" + HEARTBEAT)
    assert items == [Garbage(b"xyz"), FRAME, Garbage(b"\x00\x01D8l"), FRAME]


def test_bad_checksum_drops_one_byte_and_resyncs() -> None:
    corrupt = HEARTBEAT[:-1] + b"\x03"
    items = StreamDecoder().feed(corrupt + HEARTBEAT)
    assert isinstance(items[0], BadFrame)
    assert isinstance(items[0].error, ChecksumError)
    assert items[0].data == corrupt
    assert items[-1] == FRAME
    garbage = [item for item in items if isinstance(item, Garbage)]
    assert sum(g.count for g in garbage) == len(corrupt) - 1


def test_length_out_of_range_is_bad_frame() -> None:
    decoder = StreamDecoder(max_length=300)
    items = decoder.feed(b"DNY\x08\x00" + HEARTBEAT)
    assert isinstance(items[0], BadFrame) and isinstance(items[0].error, LengthError)
    assert items[-1] == FRAME
    items = decoder.feed(b"DNY\x2d\x01" + HEARTBEAT)  # L = 301 > 300
    assert isinstance(items[0], BadFrame) and isinstance(items[0].error, LengthError)
    assert items[-1] == FRAME


def test_waits_on_prefixes() -> None:
    decoder = StreamDecoder()
    for prefix in (b"D", b"DN", b"DNY", HEARTBEAT[:5], HEARTBEAT[:-1], b"l", b"lin", b"8", b"89"):
        decoder = StreamDecoder()
        assert decoder.feed(prefix) == []
        assert decoder.buffered == prefix
    assert decoder.feed(ICCID[2:]) == [Iccid(ICCID.decode())]


def test_iccid_with_hex_letters_and_non_iccid_eight() -> None:
    assert StreamDecoder().feed(b"8986ABCDEF0123456789") == [Iccid("8986ABCDEF0123456789")]
    assert StreamDecoder().feed(b"8x") == [Garbage(b"8x")]


def test_garbage_sample_is_capped_but_counted() -> None:
    blob = b"\x00" * 100_000
    items = StreamDecoder().feed(blob)
    assert len(items) == 1
    assert isinstance(items[0], Garbage)
    assert items[0].count == len(blob)
    assert len(items[0].data) == GARBAGE_SAMPLE


def test_buffer_bounded_by_one_maximal_frame() -> None:
    decoder = StreamDecoder(max_length=300)
    header = b"DNY\x2c\x01"  # L = 300: waits for 305 bytes
    assert decoder.feed(header + bytes(200)) == []
    assert len(decoder.buffered) <= 305
    items = decoder.feed(bytes(200))
    assert isinstance(items[0], BadFrame)
    assert len(decoder.buffered) <= 305


def test_max_length_must_allow_upgrade_frames() -> None:
    with pytest.raises(ValueError, match="max_length"):
        StreamDecoder(max_length=268)
    assert StreamDecoder(max_length=269).max_length == 269


def test_enum_fallback_names() -> None:
    from protocol.enums import charge_result_executed, port_status_name, stop_reason_name

    assert port_status_name(1) == "charging"
    assert port_status_name(0x0C) == "unknown_0C"
    assert stop_reason_name(0xAB) == "unknown_AB"
    assert [code for code in range(16) if charge_result_executed(code)] == [0, 3, 9]


def test_trailing_partial_frame_stays_buffered_untouched() -> None:
    decoder = StreamDecoder()
    partial = HEARTBEAT[:9]
    assert decoder.feed(HEARTBEAT + b"link" + partial) == [FRAME, Keepalive()]
    assert decoder.buffered == partial
    assert decoder.feed(HEARTBEAT[9:]) == [FRAME]
    assert decoder.buffered == b""


def test_feed_accepts_bytearray_and_memoryview() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(bytearray(HEARTBEAT[:7])) == []
    assert decoder.feed(memoryview(HEARTBEAT)[7:]) == [FRAME]


def test_encode_frame_takes_the_code_from_the_model() -> None:
    import protocol as p

    locate = p.Locate(seconds=5)
    assert encode_frame(1, 2, locate) == encode_frame(1, 2, 0x96, bytes.fromhex("05"))
    with pytest.raises(FrameError, match="ResultReply has no command code"):
        encode_frame(1, 2, p.ResultReply(0))


def test_every_model_code_is_the_one_the_decoder_table_says() -> None:
    """`COMMAND`/`SENDER` and the decoder table cannot disagree: each model decodes under the
    code it is sent with, and every model of the table has a code or is one of the shared."""
    from protocol.commands import registry
    from protocol.commands._model import Payload
    from protocol.commands.heartbeats import TimeRequest

    shared = {"ResultReply", "Empty", "TimeRequest", "TimeReply", "FirmwarePacket", "UpgradeReply"}
    models: set[type[Payload]] = set()
    for command, sender in registry.DECODERS:
        models.update(registry.models_for(command, sender))
    assert {m.__name__ for m in models if m.COMMAND is None} == shared
    for m in models:
        if m.COMMAND is not None:
            assert m.SENDER is not None
            assert m in registry.models_for(m.COMMAND, m.SENDER), m.__name__
    assert registry.commands_for(TimeRequest, registry.DEVICE) == (0x12, 0x22)
    assert registry.command_code("reboot") == 0x87
