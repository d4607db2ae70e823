"""`chargebridge gateway`: the half of chargebridge facing the chargers, on its own."""

from __future__ import annotations

import argparse

from bridge.app import run_gateway
from bridge.commands.common import run_role
from bridge.config import GatewaySettings, add_settings_arguments
from bridge.web import with_dashboard

HELP = "run the gateway: device links (TCP, serial) <-> MQTT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, GatewaySettings)


def main(args: argparse.Namespace) -> int:
    return run_role("gateway", GatewaySettings, args, with_dashboard(run_gateway))
