"""`chargebridge service`: the charging service on its own (docs/charging.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from bridge.charging.service import run_service
from bridge.charging.settings import ChargingSettings
from bridge.commands.common import run_async
from bridge.config import ConfigError, add_settings_arguments, settings_from_args
from bridge.logs import setup_logging

HELP = "run the charging service: sessions and statistics from the gateway's MQTT events"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, ChargingSettings)


async def serve_until_signalled(settings: ChargingSettings) -> None:
    """SIGINT/SIGTERM cancel the service, which flushes what it publishes and stops."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run_service(settings)


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(ChargingSettings, args)
    except ConfigError as exc:
        print(f"chargebridge service: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    try:
        run_async(serve_until_signalled(settings))
    except OSError as exc:
        print(f"chargebridge service: {exc}", file=sys.stderr)
        return 1
    return 0
