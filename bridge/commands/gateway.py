"""`chargebridge gateway`: the half of chargebridge facing the chargers, on its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from bridge.app import run_gateway
from bridge.commands.common import run_async
from bridge.config import ConfigError, GatewaySettings, add_settings_arguments, settings_from_args
from bridge.logs import setup_logging

HELP = "run the gateway: device links (TCP, serial) <-> MQTT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, GatewaySettings)


async def serve_until_signalled(settings: GatewaySettings) -> None:
    """SIGINT/SIGTERM cancel the gateway, which then shuts down in order."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run_gateway(settings)


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(GatewaySettings, args)
    except ConfigError as exc:
        print(f"chargebridge gateway: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    try:
        run_async(serve_until_signalled(settings))
    except OSError as exc:
        print(f"chargebridge gateway: {exc}", file=sys.stderr)
        return 1
    return 0
