"""`chargebridge service`: the charging service on its own (docs/charging.md)."""

from __future__ import annotations

import argparse

from bridge.app import run_service
from bridge.charging.settings import ChargingSettings
from bridge.commands.common import run_role
from bridge.config import add_settings_arguments
from bridge.web import with_dashboard

HELP = "run the charging service: sessions and statistics from the gateway's MQTT events"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, ChargingSettings)


def main(args: argparse.Namespace) -> int:
    return run_role("service", ChargingSettings, args, with_dashboard(run_service))
