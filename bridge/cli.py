"""`chargebridge` command line: a thin dispatcher over `bridge.commands.*`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bridge import __version__

# sub-command -> module in bridge.commands; order is the order shown in --help.
SUBCOMMANDS: dict[str, str] = {
    "run": "run",
    "gateway": "gateway",
    "service": "service",
    "demo": "demo",
    "simulate": "simulate",
    "decode": "decode",
    "capture": "capture",
    "replay": "replay",
    "check-config": "check_config",
}


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every sub-command, or only `commands` (each imports its own module, and
    some of those import pydantic, aiomqtt and the whole bridge: `decode` needs none of it)."""
    parser = argparse.ArgumentParser(
        prog="chargebridge",
        description="MQTT bridge for DNY (AP3000) electric-bicycle charging piles.",
    )
    parser.add_argument("--version", action="version", version=f"chargebridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        if commands is not None and name not in commands:
            continue
        module = importlib.import_module(f"bridge.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top level has only flags without values, so the first other word is the sub-command.
    chosen = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser([chosen] if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args._main(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `chargebridge decode ... | head` closes our stdout early; that is not an error.
        sys.stderr.close()
        return 0
