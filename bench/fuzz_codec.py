"""Fuzz the codec: N random and mutated inputs through StreamDecoder and every payload decoder.

Each input is either pure random bytes or a mutation (bit flips, byte changes, insertions,
deletions, truncation, length-field tampering, splices, garbage prefixes) of a valid stream of
frames built from every model, plus ICCIDs and keepalives. For each input:
- the bytes are fed to a StreamDecoder in 1-4 random chunks; nothing may raise, the buffer
  must stay below one maximal frame, and every emitted Frame must re-encode to its own bytes;
- every emitted frame's payload is decoded for both senders (only PayloadError allowed), and an
  accepted payload must re-encode to exactly the same data block and produce its JSON;
- the input's bytes are also decoded as the data block of one registered (command, sender)
  pair, cycling through all of them.
Prints {"inputs", "seconds", "failures", ...} as JSON; exit status 1 if anything failed.

    python bench/fuzz_codec.py [--inputs 1000000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from protocol import (
    Frame,
    Payload,
    PayloadError,
    Sender,
    StreamDecoder,
    decode_payload,
    encode_frame,
)
from protocol.commands._model import ASCII, BYTES, INT, LIST, RECORDS, TAIL, VARBYTES
from protocol.commands.registry import DECODERS, models_for
from protocol.describe import frame_json, to_json_line

MAX_LENGTH = 1024
PAIRS = sorted(DECODERS, key=lambda pair: (pair[0], pair[1].value))


def random_payload(rng: random.Random, cls: type[Payload]) -> Payload:
    """A random instance of a model from its Wire specs (all optional fields present)."""
    count = rng.randrange(0, 17)
    values: dict[str, Any] = {}
    for spec in cls.SPEC:
        wire = spec.wire
        if wire.kind == INT:
            values[spec.name] = rng.randrange(1 << (8 * wire.size))
        elif wire.kind == BYTES:
            values[spec.name] = rng.randbytes(wire.size)
        elif wire.kind == ASCII:
            values[spec.name] = "".join(chr(rng.randrange(32, 127)) for _ in range(wire.size // 2))
        elif wire.kind in (TAIL, VARBYTES):
            values[spec.name] = b"" if spec.name == "extra" else rng.randbytes(rng.randrange(40))
        elif wire.kind == LIST:
            top = 1 << (8 * {"B": 1, "H": 2, "I": 4}[wire.code])
            values[spec.name] = tuple(rng.randrange(top) for _ in range(count))
        elif wire.kind == RECORDS:
            assert wire.record is not None
            values[spec.name] = tuple(random_payload(rng, wire.record) for _ in range(count))
    return cls(**values)


def seed_frames(rng: random.Random) -> list[bytes]:
    frames = []
    for command, sender in PAIRS:
        for cls in models_for(command, sender):
            data = random_payload(rng, cls).encode()
            frames.append(
                encode_frame(rng.randrange(1 << 32), rng.randrange(1 << 16), command, data)
            )
    return frames


def mutate(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randrange(1, 4)):
        choice = rng.randrange(8)
        size = len(data)
        if choice == 0 and size:
            data[rng.randrange(size)] ^= 1 << rng.randrange(8)
        elif choice == 1 and size:
            data[rng.randrange(size)] = rng.randrange(256)
        elif choice == 2:
            data[rng.randrange(size + 1) : 0] = rng.randbytes(rng.randrange(1, 8))
        elif choice == 3 and size:
            start = rng.randrange(size)
            del data[start : start + rng.randrange(1, 8)]
        elif choice == 4 and size:
            del data[rng.randrange(size) :]
        elif choice == 5:
            at = data.find(b"DNY")
            if at >= 0 and at + 5 <= size:
                data[at + 3 : at + 5] = rng.randrange(1 << 16).to_bytes(2, "little")
        elif choice == 6:
            data[0:0] = rng.choice((b"DNY", b"DN", b"lin", b"8986", b"D", rng.randbytes(5)))
        elif choice == 7 and size:
            at = rng.randrange(size)
            data[at:at] = data[: rng.randrange(size)]


def make_input(rng: random.Random, seeds: list[bytes]) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    parts = []
    for _ in range(rng.randrange(1, 4)):
        pick = rng.randrange(12)
        if pick == 0:
            parts.append(
                b"89" + "".join(rng.choice("0123456789ABCDEF") for _ in range(18)).encode()
            )
        elif pick == 1:
            parts.append(b"link")
        else:
            parts.append(rng.choice(seeds))
    data = bytearray(b"".join(parts))
    if kind > 1:
        mutate(rng, data)
    return bytes(data)


def check(
    rng: random.Random, raw: bytes, pair: tuple[int, Sender], stats: dict[str, int]
) -> str | None:
    decoder = StreamDecoder(MAX_LENGTH)
    cuts = sorted(rng.randrange(len(raw) + 1) for _ in range(rng.randrange(4)))
    start = 0
    for cut in [*cuts, len(raw)]:
        for item in decoder.feed(raw[start:cut]):
            stats[type(item).__name__] = stats.get(type(item).__name__, 0) + 1
            if isinstance(item, Frame):
                if item.encode() not in raw:
                    return "frame does not re-encode to bytes of the input"
                for sender in Sender:
                    problem = check_payload(item.command, item.data, sender)
                    if problem:
                        return problem
                    to_json_line(frame_json(item, sender))
        start = cut
        if len(decoder.buffered) >= 5 + MAX_LENGTH:
            return f"buffer grew to {len(decoder.buffered)} bytes"
    return check_payload(pair[0], raw, pair[1])


def check_payload(command: int, data: bytes, sender: Sender) -> str | None:
    try:
        payload = decode_payload(command, data, sender)
    except PayloadError:
        return None
    if payload.encode() != data:
        return f"0x{command:02X} {type(payload).__name__} does not re-encode to its data"
    payload.to_json()
    return None


def fuzz(inputs: int, seed: int) -> dict[str, Any]:
    """Run `inputs` inputs from `seed`; the report has `failures` (a count) and `examples`."""
    rng = random.Random(seed)
    seeds = seed_frames(rng)
    failures: list[dict[str, str]] = []
    stats: dict[str, int] = {}
    started = time.perf_counter()
    for index in range(inputs):
        raw = make_input(rng, seeds)
        try:
            problem = check(rng, raw, PAIRS[index % len(PAIRS)], stats)
        except Exception as exc:  # the point of fuzzing: anything but PayloadError is a bug
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            failures.append({"problem": problem, "input_hex": raw.hex().upper()})
    return {
        "inputs": inputs,
        "seconds": round(time.perf_counter() - started, 1),
        "failures": len(failures),
        "seed": seed,
        "seed_frames": len(seeds),
        "decoder_pairs": len(PAIRS),
        "stream_items": dict(sorted(stats.items())),
        "examples": failures[:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    report = fuzz(args.inputs, args.seed)
    print(json.dumps(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
