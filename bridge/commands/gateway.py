"""`chargebridge gateway`: the half of chargebridge facing the chargers, on its own; with
`--workers N`, N gateway processes under one supervisor (bridge/workers.py)."""

from __future__ import annotations

import argparse

from bridge.commands.common import run_role
from bridge.config import GatewaySettings, add_settings_arguments
from bridge.web import with_dashboard
from bridge.workers import run_gateways

HELP = "run the gateway: device links (TCP, serial) <-> MQTT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, GatewaySettings)


def main(args: argparse.Namespace) -> int:
    return run_role("gateway", GatewaySettings, args, with_dashboard(run_gateways))
