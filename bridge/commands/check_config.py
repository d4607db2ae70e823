"""`chargebridge check-config`: validate a configuration and print the effective settings.

Reads the same sources as the role would (environment `CHARGEBRIDGE_*`, then `--config FILE`,
then defaults) and prints one `option = value` line per setting in TOML syntax, passwords in
URLs redacted, so the output can be pasted back into a config file. A bad value, or a key in the
file that no role knows (a typo would otherwise be ignored silently), is one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

from bridge.charging.settings import ChargingSettings
from bridge.commands.run import RunSettings
from bridge.config import ConfigError, GatewaySettings, load_settings

HELP = "validate a configuration (file and environment) and print the effective settings"

ROLES: dict[str, type[BaseSettings]] = {
    "run": RunSettings,
    "gateway": GatewaySettings,
    "service": ChargingSettings,
}
SECRET_NAMES = re.compile(r"password|secret|token", re.I)
URL_PASSWORD = re.compile(r"^(\w+://[^:/@]*):[^@/]*@")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--role", choices=list(ROLES), default="run", help="whose options to check (default run)"
    )


def redact(name: str, value: Any) -> Any:
    if isinstance(value, str):
        if SECRET_NAMES.search(name):
            return "***"
        return URL_PASSWORD.sub(r"\1:***@", value)
    return value


def effective(settings: BaseSettings) -> list[str]:
    """`option = value` lines (TOML) in declaration order, secrets redacted."""
    lines = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, Path):
            value = str(value)
        lines.append(f"{name} = {json.dumps(redact(name, value), ensure_ascii=False)}")
    return lines


def unknown_keys(config_file: Path) -> list[str]:
    """Top-level keys of the file that no role has (keys of other roles are fine)."""
    with open(config_file, "rb") as fh:
        data = tomllib.load(fh)
    known = set(RunSettings.model_fields)
    return [key for key in data if key not in known]


def check(role: str, config_file: Path | None) -> list[str]:
    """The effective settings; raises ConfigError with one line."""
    settings = load_settings(ROLES[role], {}, config_file)  # reads and parses the file first
    if config_file is not None:
        unknown = unknown_keys(config_file)
        if unknown:
            raise ConfigError(f"config: {config_file}: unknown option(s) {', '.join(unknown)}")
    return effective(settings)


def main(args: argparse.Namespace) -> int:
    try:
        lines = check(args.role, args.config)
    except ConfigError as exc:
        print(f"chargebridge check-config: {exc}", file=sys.stderr)
        return 2
    print(f"# effective settings of `chargebridge {args.role}`")
    print("\n".join(lines))
    return 0
