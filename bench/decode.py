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

The headline, `process`, times whole processes as a user runs them: `chargebridge decode`
reading 100,000 lines of hex from stdin and writing JSON lines into a pipe, against
`bench/_decode_floor.py` (stdlib only: unhex, checksum, header, a small JSON per frame) on the
same input. The two run in pairs, in alternating order (A B, B A, ...), after one warm-up each;
CPU time (user + system, from the kernel's accounting of the reaped child) and wall time are
taken per run, and the ratio per pair, so that a shared machine's drifting speed cancels out.
Medians are quoted, with the spread of the per-pair ratios (min/max and
quartiles: on a shared machine single pairs swing widely; 15 pairs by default). `startup` is
the same pairing on empty input (import time).

    python bench/decode.py [--process-frames 100000] [--pairs 15] [--frames 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from protocol import (
    Heartbeat,
    Payload,
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
FLOOR = Path(__file__).resolve().with_name("_decode_floor.py")
# Both commands run as a user's shell runs them: stdout buffered and byte code cached. Either
# variable, when set in the bench's own environment, would change the figures (unbuffered:
# one write per line for the floor; no .pyc: the codec compiled on every start).
ENV = {
    k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")
}


def mix(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    payload: Payload
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


def cli_command() -> list[str]:
    """`chargebridge` as installed beside this interpreter (what a user runs), else `-m`."""
    script = Path(sys.executable).with_name("chargebridge")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "bridge"]


def timed_run(argv: Sequence[str], stdin: Path) -> tuple[float, float, int]:
    """Run one process with `stdin` as its input and its output read through a pipe;
    (CPU seconds user + system, wall seconds, output lines). Fails on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with stdin.open("rb") as source:
        proc = subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE, env=ENV)
        assert proc.stdout is not None
        lines = 0
        while chunk := proc.stdout.read(1 << 16):
            lines += chunk.count(b"\n")
        code = proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {code}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu, wall, lines


def paired(
    a: Sequence[str], b: Sequence[str], stdin: Path, pairs: int, expect: int
) -> dict[str, object]:
    """A against B, `pairs` times in alternating order after one warm-up of each: medians of
    each side and of the per-pair ratios A/B."""
    timed_run(a, stdin)
    timed_run(b, stdin)
    runs: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for index in range(pairs):
        for side in ("a", "b") if index % 2 == 0 else ("b", "a"):
            cpu, wall, lines = timed_run(a if side == "a" else b, stdin)
            if lines != expect:
                raise SystemExit(f"{side}: {lines} output lines, expected {expect}")
            runs[side].append((cpu, wall))
    out: dict[str, object] = {}
    for pos, figure in enumerate(("cpu_s", "wall_s")):
        a_values = [run[pos] for run in runs["a"]]
        b_values = [run[pos] for run in runs["b"]]
        ratios = [x / y for x, y in zip(a_values, b_values, strict=True)]
        out[f"cli_{figure}"] = round(statistics.median(a_values), 3)
        out[f"floor_{figure}"] = round(statistics.median(b_values), 3)
        out[f"ratio_{figure[:-2]}"] = round(statistics.median(ratios), 3)
        out[f"ratio_{figure[:-2]}_min_max"] = [round(min(ratios), 3), round(max(ratios), 3)]
        quartiles = statistics.quantiles(ratios, n=4)
        out[f"ratio_{figure[:-2]}_quartiles"] = [round(quartiles[0], 3), round(quartiles[2], 3)]
    return out


def process_figures(count: int, pairs: int) -> dict[str, object]:
    """`chargebridge decode` against the floor script, whole processes, `count` frames."""
    hex_lines = "".join(frame.hex().upper() + "\n" for frame in mix(count))
    cli = [*cli_command(), "decode"]
    floor = [sys.executable, str(FLOOR)]
    folder = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    try:
        frames_file = folder / "frames.hex"
        frames_file.write_text(hex_lines)
        empty = folder / "empty.hex"
        empty.write_text("")
        return {
            "frames": count,
            "pairs": pairs,
            "cli": " ".join(cli[-2:]),
            "process": paired(cli, floor, frames_file, pairs, count),
            "startup": paired(cli, floor, empty, pairs, 0),
        }
    finally:
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process-frames", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--frames", type=int, default=20000, help="in-process figures")
    parser.add_argument("--repeat", type=int, default=5, help="in-process figures")
    parser.add_argument("--skip-in-process", action="store_true")
    args = parser.parse_args()
    report: dict[str, object] = process_figures(args.process_frames, args.pairs)
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if not args.skip_in_process:
        report["in_process"] = in_process_figures(args.frames, args.repeat)
    report["python"] = sys.version.split()[0]
    report["machine"] = platform.machine()
    report["cpus"] = os.cpu_count()
    print(json.dumps(report))


def in_process_figures(count: int, repeat: int) -> dict[str, object]:
    """The codec's layers inside one process (best of `repeat`), for the breakdown."""
    frames = mix(count)
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
        return round(1e6 / best(repeat, len(frames), run), 2)

    figures: dict[str, object] = {
        "frames": count,
        "frame_layer_fps": round(best(repeat, len(frames), frame_layer)),
        "stream_fps": round(best(repeat, len(frames), stream_layer)),
        "full_decode_json_fps": round(best(repeat, len(frames), full)),
        "minimal_parse_fps": round(best(repeat, len(frames), minimal)),
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
    figures["encoders_us_per_frame"] = encoders(frames, per_frame_us)
    return figures


def encoders(
    frames: list[bytes], per_frame_us: Callable[[Callable[[], None]], float]
) -> dict[str, object]:
    """The decode line built by the codec's generated text against building the dict and
    encoding it with the standard library, orjson or msgspec (when installed). The libraries
    write compact JSON (`{"a":1}`), not the CLI's `{"a": 1}`, so neither is a drop-in."""
    device = Sender.DEVICE

    def lines_with(encode: Callable[[dict[str, object]], object]) -> Callable[[], None]:
        def run() -> None:
            for raw in frames:
                encode(frame_json(decode_frame(raw), device))

        return run

    def generated() -> None:
        for raw in frames:
            describe_frame_line(raw, device)

    figures: dict[str, object] = {
        "generated_text": per_frame_us(generated),
        "dict_only": per_frame_us(lines_with(lambda obj: obj)),
        "dict_json": per_frame_us(lines_with(to_json_line)),
    }
    try:
        import orjson

        figures["dict_orjson"] = per_frame_us(lines_with(orjson.dumps))
    except ImportError:
        figures["dict_orjson"] = "not installed"
    try:
        import msgspec

        figures["dict_msgspec"] = per_frame_us(lines_with(msgspec.json.Encoder().encode))
    except ImportError:
        figures["dict_msgspec"] = "not installed"
    return figures


if __name__ == "__main__":
    main()
