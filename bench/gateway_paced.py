"""The gateway's CPU per 0x06 at an ordinary rate, in process; prints one JSON object.

The real `Gateway`, `MqttClient` and `SqliteOutbox` against a real Mosquitto (started here as
the tests do); the chargers are in-memory transports (what a device socket costs is not in
it: `throughput.py` has it). 1,000 chargers register, then `--frames` 0x06 reports are handed
to `Gateway.data_received` one per loop turn at `--rate` frames/s, as a gateway that keeps up
sees them; CPU = user + system of the process from the first report until the broker has
acknowledged every message, per frame. Unlike `throughput.py` on a loaded machine, the
gateway cannot fall behind here (a backlog shares per-turn costs between frames and hides
them).

`--baseline DIR` (another checkout) measures that code alike, rounds interleaved, so both saw
the same load; `--callgrind` counts instructions (valgrind, deterministic: use a low
`--rate`, e.g. 10, and the default commit window scaled by `--window`, e.g. 0.5 s, so that
the slowed process sees its PUBACKs within the window as it would at full speed).

    .venv/bin/python bench/gateway_paced.py [--rounds 3] [--baseline DIR] [--callgrind]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEVICES = 1000


async def child(frames: int, rate: float, window: float, callgrind: bool) -> dict[str, Any]:
    """Runs inside the measured tree (its directory first on sys.path)."""
    import protocol as p
    from bridge.app import gateway_mqtt_settings
    from bridge.gateway.core import Gateway
    from bridge.links.base import Connection
    from bridge.mqtt.client import MqttClient
    from bridge.mqtt.outbox import SqliteOutbox
    from bridge.mqtt.topics import Topics
    from tests.bridge.gateway.fakes import settings
    from tests.broker import Mosquitto

    class Transport:
        def write(self, data: bytes) -> None: ...

        def close(self) -> None: ...

        def abort(self) -> None: ...

    registration = p.encode_payload(p.Registration(126, 2, 0, 0x21, 0, 0))
    tmp = Path(tempfile.mkdtemp(prefix="gateway-paced-"))
    broker = Mosquitto(tmp / "broker")
    broker.start()
    try:
        gw_settings = settings(tmp / "gw", mqtt=broker.url, gateway_id="bench")
        topics = Topics("chargebridge")
        outbox = SqliteOutbox(tmp / "gw" / "outbox.sqlite", commit_window_s=window)
        mqtt = MqttClient(
            gateway_mqtt_settings(gw_settings, topics), outbox=outbox, retain_as_published=True
        )
        gw = Gateway(gw_settings, mqtt, topics)
        mqtt.on_connect = gw.on_mqtt_connect
        async with mqtt:
            await mqtt.wait_connected()
            chargers = []
            for i in range(DEVICES):
                conn = Connection(Transport(), "tcp", f"tcp:127.0.0.2:{10000 + i}")  # type: ignore[arg-type]
                gw.connection_made(conn)
                pid = 0x04 << 24 | (0x100000 + i)
                hello = f"8986{i:016d}".encode() + p.encode_frame(pid, 1, 0x20, registration)
                gw.data_received(conn, hello)
                chargers.append((conn, pid))
                await asyncio.sleep(0)
            while len(mqtt.outbox):  # noqa: ASYNC110 (posted messages have no future)
                await asyncio.sleep(0.05)
            reports = []
            for k in range(frames):
                conn, pid = chargers[k % DEVICES]
                duration = k // DEVICES + 1
                r = p.PortPowerReport(
                    0, 1, duration, duration // 10, 1, 2300, 2500, 2100, 2300, bytes(16), 12,
                    2600, 2212, 1050, 90, 95, 1_700_000_000, 0,
                )  # fmt: skip
                data = p.encode_frame(pid, k % 0xFFFF + 1, 0x06, p.encode_payload(r))
                reports.append((conn, data))
            written = outbox.rows_written
            loop = asyncio.get_running_loop()
            if callgrind:
                toggle = ["callgrind_control", "-i", "on", str(os.getpid())]
                subprocess.run(toggle, check=True)  # noqa: ASYNC221 (before the measured part)
            before = os.times()
            start = loop.time()
            for k, (conn, data) in enumerate(reports):
                gw.data_received(conn, data)
                await asyncio.sleep(max(0.0, start + (k + 1) / rate - loop.time()))
            while len(mqtt.outbox):  # noqa: ASYNC110 (posted messages have no future)
                await asyncio.sleep(0.001)
            after = os.times()
            elapsed = loop.time() - start
            if callgrind:
                toggle = ["callgrind_control", "-i", "off", str(os.getpid())]
                subprocess.run(toggle, check=True)  # noqa: ASYNC221 (after it)
        cpu = (after.user - before.user) + (after.system - before.system)
        return {
            "cpu_us_per_frame": round(cpu / frames * 1e6, 1),
            "user_us_per_frame": round((after.user - before.user) / frames * 1e6, 1),
            "system_us_per_frame": round((after.system - before.system) / frames * 1e6, 1),
            "elapsed_s": round(elapsed, 2),
            "messages_written_share": round((outbox.rows_written - written) / (2 * frames), 3),
        }
    finally:
        broker.stop()


def measure(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child", str(tree), "--frames", str(args.frames),
        "--rate", str(args.rate), "--window", str(args.window),
    ]  # fmt: skip
    out_file = None
    if args.callgrind:
        out_file = tempfile.mktemp(prefix="gateway-paced-", suffix=".callgrind")
        command[:0] = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out_file}",
        ]  # fmt: skip
        command.append("--callgrind")
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if out_file is not None:
        for line in Path(out_file).read_text().splitlines():
            if line.startswith("totals:"):
                result["instructions_per_frame"] = int(line.split()[1]) // args.frames
        Path(out_file).unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=1000.0, help="frames/s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=0.01, help="the outbox's commit window")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alike")
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        sys.path.insert(0, str(args.child))
        import uvloop

        print(json.dumps(uvloop.run(child(args.frames, args.rate, args.window, args.callgrind))))
        return
    trees = {"this": Path(__file__).resolve().parent.parent}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    started = time.time()
    for _ in range(args.rounds):
        for name, tree in trees.items():
            rounds[name].append(measure(tree, args))
    summary = {
        name: {
            key: statistics.median(r[key] for r in runs)
            for key in runs[0]
            if isinstance(runs[0][key], int | float)
        }
        for name, runs in rounds.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "gateway_paced",
                "frames": args.frames,
                "rate": args.rate,
                "commit_window_s": args.window,
                "callgrind": args.callgrind,
                "trees": {name: str(tree) for name, tree in trees.items()},
                "load_average": os.getloadavg(),
                "seconds": round(time.time() - started, 1),
                "rounds": rounds,
                "median": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
