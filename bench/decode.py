"""Decode throughput on a realistic upstream mix; prints one JSON object.

Mix (per 10 frames): 5 heartbeats 0x21 (2- and 10-port), 3 port power reports 0x06 (full 47
bytes), 1 settlement 0x03 (37 bytes), 1 registration 0x20. Measured on one core, best of
`--repeat` runs:
- `frame_layer`: decode_frame on each frame's bytes; `stream`: the same frames as one byte
  stream through StreamDecoder (4 KiB reads);
- `full_decode_json`: hex -> bytes -> frame -> typed payload -> json.dumps of the decode-CLI
  object (protocol.describe, the code `chargebridge decode` runs);
- `minimal_parse`: hex -> bytes, checksum, header unpack, JSON of the same header keys the
  decode CLI prints (everything but `payload`) — the floor any decoder of this output pays.

    python bench/decode.py [--frames 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import struct
import sys
import time
from collections.abc import Callable

from protocol import (
    Heartbeat,
    PortPowerReport,
    Registration,
    Sender,
    Settlement,
    StreamDecoder,
    command_name,
    decode_frame,
    decode_payload,
    encode_frame,
)
from protocol.describe import describe_frame_line, frame_json, to_json_line

HEAD = struct.Struct("<3sHIHB")


def mix(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(count):
        pid = 0x04000000 | rng.randrange(1 << 24)
        kind = i % 10
        if kind < 5:
            ports = 2 if kind % 2 else 10
            payload = Heartbeat(
                rng.randrange(2100, 2400), tuple(rng.choice((0, 1, 3)) for _ in range(ports)), 0, 90
            )
            command = 0x21
        elif kind < 8:
            payload = PortPowerReport(
                rng.randrange(2), 1, rng.randrange(20000), rng.randrange(500), 1,
                2342, 2500, 2100, 2300, rng.randbytes(16), 12, 2600, 2212, 1050, 90, 95,
                1_700_000_000, 0,
            )  # fmt: skip
            command = 0x06
        elif kind == 8:
            payload = Settlement(
                rng.randrange(20000), 2500, 135, 1, 1, bytes(4), 1, rng.randbytes(16), 2400,
                1_700_000_000, 0,
            )  # fmt: skip
            command = 0x03
        else:
            payload = Registration(126, 2, 0, 0x21, 0, 0)
            command = 0x20
        out.append(encode_frame(pid, i & 0xFFFF, command, payload.encode()))
    return out


def best(repeat: int, count: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return count / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    frames = mix(args.frames)
    hexes = [frame.hex().upper() for frame in frames]
    stream = b"".join(frames)
    device = Sender.DEVICE

    def frame_layer() -> None:
        for raw in frames:
            decode_frame(raw)

    def stream_layer() -> None:
        decoder = StreamDecoder()
        for start in range(0, len(stream), 4096):
            decoder.feed(stream[start : start + 4096])

    def full() -> None:
        for text in hexes:
            describe_frame_line(bytes.fromhex(text), device)

    def minimal() -> None:
        for text in hexes:
            raw = bytes.fromhex(text)
            ok = sum(raw[:-2]) & 0xFFFF == raw[-2] | raw[-1] << 8
            _, length, pid, mid, command = HEAD.unpack_from(raw)
            to_json_line(
                {
                    "command": command,
                    "command_name": command_name(command),
                    "physical_id": pid,
                    "device_id": f"{pid:08X}",
                    "message_id": mid,
                    "direction": "device_to_server",
                    "length": length,
                    "checksum_ok": ok,
                }
            )

    parsed = [decode_frame(raw) for raw in frames]
    payloads = [decode_payload(f.command, f.data, device) for f in parsed]
    objects = [frame_json(f, device) for f in parsed]

    def payload_decode() -> None:
        for f in parsed:
            decode_payload(f.command, f.data, device)

    def payload_dicts() -> None:
        for payload in payloads:
            payload.to_json()

    def json_encode() -> None:
        for obj in objects:
            to_json_line(obj)

    def payload_text() -> None:
        for payload in payloads:
            payload.to_json_text()

    def per_frame_us(run: Callable[[], None]) -> float:
        return round(1e6 / best(args.repeat, len(frames), run), 2)

    figures: dict[str, object] = {
        "frames": args.frames,
        "frame_layer_fps": round(best(args.repeat, len(frames), frame_layer)),
        "stream_fps": round(best(args.repeat, len(frames), stream_layer)),
        "full_decode_json_fps": round(best(args.repeat, len(frames), full)),
        "minimal_parse_fps": round(best(args.repeat, len(frames), minimal)),
    }
    full_fps, minimal_fps = figures["full_decode_json_fps"], figures["minimal_parse_fps"]
    assert isinstance(full_fps, int) and isinstance(minimal_fps, int)
    figures["minimal_over_full_ratio"] = round(minimal_fps / full_fps, 2)
    figures["breakdown_us_per_frame"] = {
        "decode_frame": per_frame_us(frame_layer),
        "decode_payload": per_frame_us(payload_decode),
        "payload_to_json": per_frame_us(payload_dicts),
        "payload_to_json_text": per_frame_us(payload_text),
        "dict_path_json_encode_object": per_frame_us(json_encode),
    }
    figures["python"] = sys.version.split()[0]
    figures["machine"] = platform.machine()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
