"""Load process of the connection benchmarks: `bridge.simulator.fleet` chargers, reporting
milestones as JSON lines on stdout (read by `_harness.LineReader`). Not a benchmark itself.

Events: `all_registered` once every device is registered and has a heartbeat acknowledged;
then, per `--cycles`, `dropped` when the gateway went away and `all_registered` again when
every device is back. The fleet keeps its connections until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from bridge.simulator.stats import FleetStats


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def main(args: argparse.Namespace) -> None:
    config = FleetConfig(
        devices=args.devices,
        ramp_per_s=args.ramp,
        max_connecting=args.max_connecting,
        local_hosts=tuple(
            f"127.0.0.{i}" for i in range(args.first_source, args.first_source + args.sources)
        ),
        reconnect_min_s=args.reconnect_min_s,
        connect_timeout_s=30.0,
        seed=args.seed,
        first_index=args.first_index,
    )
    n = args.devices
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    fleet = Fleet(config, TcpTarget("127.0.0.1", args.port))
    say("starting")
    async with fleet:

        def all_back(s: FleetStats) -> bool:
            return s.registered >= n and s.connected >= n

        await fleet.wait_until(lambda s: s.connected >= n)
        say("all_connected", stats=fleet.snapshot())
        await fleet.wait_until(all_back)
        await fleet.wait_until(lambda s: s.heartbeats_acked >= n)
        say("all_registered", stats=fleet.snapshot(), latencies_s=fleet.stats.latencies_s)
        for _ in range(args.cycles):
            await fleet.wait_until(lambda s: s.registered < n)
            say("dropped", stats=fleet.snapshot())
            acked = fleet.stats.heartbeats_acked
            since = time.monotonic()

            def back(s: FleetStats, want: int = acked + n) -> bool:
                return all_back(s) and s.heartbeats_acked >= want

            await fleet.wait_until(back)
            say(
                "all_registered",
                stats=fleet.snapshot(),
                latencies_s=fleet.stats.latencies_s,
                # When each failed attempt STARTED (CLOCK_MONOTONIC) and why it failed.
                failures=[[t, why] for t, why in fleet.stats.failed_connects if t >= since],
            )
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--ramp", type=float, default=20000.0)
    parser.add_argument("--max-connecting", type=int, default=256)
    parser.add_argument("--sources", type=int, default=8, help="127.0.0.2.. source addresses")
    parser.add_argument("--first-source", type=int, default=2)
    parser.add_argument("--reconnect-min-s", type=float, default=0.5)
    parser.add_argument("--cycles", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-index", type=int, default=0, help="physical ids start here")
    args = parser.parse_args()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main(args))
    sys.exit(0)
