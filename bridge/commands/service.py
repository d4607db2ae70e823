"""`chargebridge service`: the charging service alone (docs/charging.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from bridge.charging.service import run_service
from bridge.charging.settings import ChargingSettings, load_settings

HELP = "run the charging service: sessions and statistics from the gateway's MQTT events"

# option -> help; every option is also CHARGEBRIDGE_<OPTION> in the environment.
KNOBS: dict[str, str] = {
    "command_timeout_s": "seconds to wait for a device command's response",
    "max_retries": "resends of a start/stop_charging that timed out",
    "retry_backoff_s": "first back-off before a resend, doubling",
    "cleanup_interval_s": "how often silent sessions are checked",
    "session_timeout_s": "no update for so long marks a session `timeout`",
    "session_retention_s": "finished sessions stay retained so long",
    "stats_interval_s": "statistics are published at most this often",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file (top level or [charging] table)")
    parser.add_argument("--mqtt", help="broker URL, mqtt://user:pass@host:port (mqtts:// TLS)")
    parser.add_argument("--base-topic", dest="base_topic", help="MQTT base topic")
    parser.add_argument("--state-dir", dest="state_dir", type=Path, help="SQLite store directory")
    parser.add_argument("--gateway-id", dest="gateway_id", help="names the MQTT client id")
    parser.add_argument("--client-id", dest="client_id", help="MQTT client id (fixed!)")
    for name, text in KNOBS.items():
        kind = int if ChargingSettings.model_fields[name].annotation is int else float
        default = ChargingSettings.model_fields[name].default
        option = "--" + name.replace("_", "-")
        parser.add_argument(option, dest=name, type=kind, help=f"{text} (default {default})")
    for name in ("event_logging", "session_tracking"):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            action=argparse.BooleanOptionalAction,
            help=ChargingSettings.model_fields[name].description,
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    names = ["mqtt", "base_topic", "state_dir", "gateway_id", "client_id", *KNOBS]
    names += ["event_logging", "session_tracking"]
    try:
        settings = load_settings(args.config, **{n: getattr(args, n) for n in names})
    except (ValidationError, OSError, ValueError) as exc:
        print(f"chargebridge service: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_service(settings))
    except KeyboardInterrupt:
        return 0
    return 0
