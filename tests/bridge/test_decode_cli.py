"""`chargebridge decode` as specified in API.md section 8."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest

from bridge.cli import main
from protocol import Sender, encode_frame
from protocol.describe import describe_frame, to_json_line

HEARTBEAT = "44 4E 59 10 00 3B 37 AB 04 01 00 21 98 08 02 00 00 09 05 EE 02"
REPLY = "444E590A003B37AB04010021003802"
KEYS = [
    "command",
    "command_name",
    "physical_id",
    "device_id",
    "message_id",
    "direction",
    "length",
    "checksum_ok",
    "payload",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = main(["decode", *argv])
    lines = capsys.readouterr().out.splitlines()
    return code, [json.loads(line) for line in lines]


def test_console_script_decodes_a_heartbeat() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "decode", HEARTBEAT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert list(obj)[: len(KEYS)] == KEYS
    assert obj["command"] == 0x21
    assert obj["command_name"] == "heartbeat"
    assert obj["physical_id"] == 0x04AB373B
    assert obj["device_id"] == "04AB373B"
    assert obj["message_id"] == 1
    assert obj["direction"] == "device_to_server"
    assert obj["length"] == 16
    assert obj["checksum_ok"] is True
    assert obj["payload"]["voltage"] == 2200
    assert obj["payload"]["voltage_v"] == 220.0
    assert obj["payload"]["port_statuses"] == [0, 0]
    assert obj["payload"]["temperature_c"] == -60.0


def test_direction_changes_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, objs = run(capsys, "--from", "server", REPLY)
    assert code == 0
    assert objs[0]["direction"] == "server_to_device"
    assert objs[0]["payload"] == {"result": 0, "model": "ResultReply"}
    code, objs = run(capsys, REPLY)  # a 1-byte 0x21 from a device is too short
    assert code == 1
    assert objs[0]["payload"] is None
    assert "0x21" in objs[0]["error"] and "1 data bytes" in objs[0]["error"]


def test_port_stays_zero_based_and_order_no_is_hex(capsys: pytest.CaptureFixture[str]) -> None:
    start = "444E5926003B37AB040200820064010000010100001234567812345678123456781234567880708813F808"
    code, objs = run(capsys, "--from", "server", start)
    assert code == 0
    payload = objs[0]["payload"]
    assert payload["port"] == 1
    assert payload["order_no"] == "12345678" * 4
    assert payload["overload_power_w"] == 500.0
    assert payload["rate_mode_name"] == "time"


def test_invalid_inputs_give_errors_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    bad_checksum = HEARTBEAT[:-5] + "EE 03"
    code, objs = run(capsys, "zz", "444E59", bad_checksum, HEARTBEAT)
    assert code == 1
    assert objs[0] == {"error": "invalid hex", "data_hex": "zz"}
    assert objs[1]["data_hex"] == "444E59" and "14 bytes" in objs[1]["error"]
    assert objs[2]["checksum_ok"] is False and objs[2]["error"] == "checksum mismatch"
    assert objs[3]["checksum_ok"] is True and "error" not in objs[3]


def test_stdin_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{HEARTBEAT}\n\n# comment\n{HEARTBEAT}\n"))
    code, objs = run(capsys)
    assert code == 0
    assert [obj["command"] for obj in objs] == [0x21, 0x21]


def test_stream_mode(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    iccid = b"89860412345678901234".hex()
    stream = iccid + b"link".hex() + HEARTBEAT.replace(" ", "")
    # The stream is split across lines at arbitrary points, including inside the frame.
    lines = "\n".join(stream[i : i + 14] for i in range(0, len(stream), 14))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines + "\n"))
    code, objs = run(capsys, "--stream")
    assert code == 0
    assert objs[0] == {"iccid": "89860412345678901234"}
    assert objs[1] == {"keepalive": True}
    assert objs[2]["command"] == 0x21


def test_stream_mode_reports_garbage_and_leftovers(capsys: pytest.CaptureFixture[str]) -> None:
    code, objs = run(capsys, "--stream", "0001", HEARTBEAT, "444E5910")
    assert code == 1
    assert objs[0] == {"error": "garbage", "count": 2, "data_hex": "0001"}
    assert objs[1]["command"] == 0x21
    assert objs[2] == {"error": "incomplete frame at end of input", "data_hex": "444E5910"}


def decode_process(data: bytes, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """The real command with `data` on its stdin (a pipe, read in blocks)."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", "decode", *argv],
        input=data,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_decode_loads_only_the_codec() -> None:
    # Start-up is most of a short decode: the CLI must not import the bridge's heavy parts.
    probe = (
        "import sys; from bridge.cli import main; code = main(['decode', sys.argv[1]]); "
        "heavy = ('pydantic', 'aiomqtt', 'paho', 'bridge.config', 'bridge.app', 'asyncio'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy), "
        "file=sys.stderr); raise SystemExit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, HEARTBEAT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "[]"
    assert json.loads(result.stdout)["command"] == 0x21


def test_output_is_the_dict_path_exactly_for_every_kind_of_line() -> None:
    # The fast paths (plain hex straight to bytes, frame bytes straight to text, output in
    # blocks) must print byte for byte what encoding describe_frame's dict prints.
    frames = [
        encode_frame(0x04000000 + i, i, command, bytes(range(i % 7, i % 7 + size)))
        for i, (command, size) in enumerate(
            [(0x21, 6), (0x21, 15), (0x06, 47), (0x03, 37), (0x20, 6), (0x21, 1), (0x77, 3)] * 40
        )
    ]
    bad_checksum = frames[0][:-1] + bytes([frames[0][-1] ^ 1])
    raws = [*frames, bad_checksum, frames[1][:10]]
    expected = [to_json_line(describe_frame(raw, Sender.DEVICE)[0]) for raw in raws]
    text_lines = [(raw.hex(" ") if i % 3 else raw.hex()).upper() for i, raw in enumerate(raws)]
    text_lines[4] = "0x" + text_lines[4]
    data = "\n".join(["# a comment", "", *text_lines, "zz"]).encode()
    expected.append(to_json_line({"error": "invalid hex", "data_hex": "zz"}))
    result = decode_process(data)
    assert result.returncode == 1  # the bad checksum, the short frame, zz
    assert result.stdout.decode().splitlines() == expected
    # Many blocks: lines cut across reads of stdin come out whole and in order.
    many = decode_process((frames[2].hex().upper() + "\r\n").encode() * 3000)
    assert many.returncode == 0
    assert many.stdout.decode().splitlines() == [expected[2]] * 3000


def test_bytes_that_are_not_utf8_are_invalid_hex(capsys: pytest.CaptureFixture[str]) -> None:
    result = decode_process(b"\xff\xfe41\n" + HEARTBEAT.encode() + b"\n")
    assert result.returncode == 1
    first, second = (json.loads(line) for line in result.stdout.decode().splitlines())
    assert first["error"] == "invalid hex"
    assert second["command"] == 0x21


def test_a_bad_line_among_good_ones_keeps_its_place() -> None:
    # Plain hex throughout (the block's fast way makes every line, one gives None) and then
    # a line that is not hex after good ones (the fast way stops on ValueError): each block
    # falls back line by line and keeps the order.
    good = [
        encode_frame(0x04000000 + i, i, command, bytes(range(size)))
        for i, (command, size) in enumerate([(0x21, 6), (0x06, 47), (0x03, 37), (0x20, 6)] * 5)
    ]
    bad_checksum = good[1][:-1] + bytes([good[1][-1] ^ 1])
    raws = [*good[:10], bad_checksum, *good[10:]]
    expected = [to_json_line(describe_frame(raw, Sender.DEVICE)[0]) for raw in raws]
    result = decode_process("".join(raw.hex().upper() + "\n" for raw in raws).encode())
    assert result.returncode == 1
    assert result.stdout.decode().splitlines() == expected
    tail = "".join(raw.hex().upper() + "\n" for raw in good) + "not hex\n" + good[0].hex() + "\n"
    result = decode_process(tail.encode())
    assert result.returncode == 1
    assert result.stdout.decode().splitlines() == [
        *(to_json_line(describe_frame(raw, Sender.DEVICE)[0]) for raw in good),
        to_json_line({"error": "invalid hex", "data_hex": "nothex"}),
        to_json_line(describe_frame(good[0], Sender.DEVICE)[0]),
    ]
