"""`chargebridge simulate`: simulated chargers only, against a running gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from typing import Any, TextIO

from bridge.simulator.device import DeviceTiming
from bridge.simulator.fleet import KINDS, Fleet, FleetConfig, SerialTarget, TcpTarget

HELP = "run simulated chargers (DNY devices) against a gateway"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--connect", metavar="HOST:PORT", type=_tcp_target, help="gateway TCP listener"
    )
    target.add_argument(
        "--serial",
        metavar="URL",
        help="pyserial URL of one RS-485 line shared by all devices (e.g. /dev/ttyUSB0, "
        "socket://host:port)",
    )
    parser.add_argument("--devices", type=_positive_int, default=1, help="number of devices")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="2",
        help="ports per device; legacy: pre-2019 dual sockets (0x01 heartbeats with power, "
        "0x04 order confirmations, no 0x06); mixed: a 2/10/16 mix; mixed-legacy: the mix with "
        "every fifth device a legacy dual socket",
    )
    parser.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="time acceleration: 600 makes the 5-minute 0x06 interval last 0.5 s",
    )
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (reproducible runs)")
    parser.add_argument(
        "--ramp",
        metavar="PER_SECOND",
        type=_positive_float,
        default=500.0,
        help="new connections per second while starting",
    )
    parser.add_argument(
        "--duration", metavar="S", type=_positive_float, help="stop after S seconds"
    )
    parser.add_argument(
        "--auto-plug",
        action="store_true",
        help="simulate users: plug in, swipe cards, unplug",
    )
    parser.add_argument(
        "--heartbeat",
        metavar="S",
        type=_positive_float,
        default=DeviceTiming().heartbeat_s,
        help="heartbeat (0x21) interval in device seconds (vendor default 180)",
    )
    parser.add_argument(
        "--first-index", type=int, default=0, help="index of the first device (physical IDs)"
    )
    parser.add_argument(
        "--local-ip",
        metavar="IP",
        action="append",
        default=[],
        help="source address to connect from; repeat to spread devices over several "
        "(e.g. 127.0.0.2 and 127.0.0.3 to stay under a per-address connection limit)",
    )
    parser.add_argument("--baudrate", type=int, default=9600, help="serial line speed")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines, only the final JSON"
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    config = FleetConfig(
        devices=args.devices,
        kind=args.kind,
        speed=args.speed,
        seed=args.seed,
        ramp_per_s=args.ramp,
        auto_plug=args.auto_plug,
        first_index=args.first_index,
        timing=DeviceTiming(heartbeat_s=args.heartbeat),
        local_hosts=tuple(args.local_ip),
    )
    target: TcpTarget | SerialTarget = (
        args.connect if args.connect else SerialTarget(args.serial, args.baudrate)
    )
    summary: dict[str, Any] = {}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(config, target, args.duration, summary, None if args.quiet else sys.stderr))
    print(json.dumps(summary, indent=2))
    return 0


async def run(
    config: FleetConfig,
    target: TcpTarget | SerialTarget,
    duration: float | None,
    summary: dict[str, Any],
    progress: TextIO | None,
) -> None:
    """Run the fleet until `duration` elapses or the task is cancelled (Ctrl-C); `summary` is
    filled with the final figures in both cases."""
    async with Fleet(config, target) as fleet:
        try:
            async with asyncio.timeout(duration):
                while True:
                    await asyncio.sleep(1.0)  # reporting cadence, not synchronisation
                    if progress is not None:
                        print(_progress_line(fleet.snapshot()), file=progress, flush=True)
        except TimeoutError:
            pass
        finally:
            summary.update(fleet.snapshot())


def _progress_line(s: dict[str, Any]) -> str:
    lat = s["ack_latency_s"]["p50"]
    return (
        f"[{s['elapsed_s']:7.1f}s] connected {s['connected']}/{s['devices']} "
        f"registered {s['registered']} heartbeats {s['heartbeats_acked']}/{s['heartbeats_sent']} "
        f"sessions {s['sessions_started']} started {s['sessions_completed']} ended "
        f"settled {s['settlements_acked']} ({s['energy_reported_kwh']} kWh) "
        f"ack p50 {'-' if lat is None else f'{lat * 1000:.1f} ms'}"
    )


def _tcp_target(text: str) -> TcpTarget:
    try:
        return TcpTarget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value
