"""The README's commands are checked here, so the docs cannot drift from the code.

The first block must be the two-command promise; every `chargebridge …` line must parse; the
decode example must print what it shows; every `mosquitto_pub` example must be a valid
request for its topic.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.charging.messages import parse_request
from bridge.cli import build_parser
from bridge.mqtt.payloads import DEVICE_COMMAND_REQUESTS
from bridge.mqtt.topics import Topics

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.M | re.S)


def shell_commands() -> list[str]:
    """Commands of the sh blocks, with backslash continuations joined."""
    out = []
    for lang, body in BLOCKS:
        if lang != "sh":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip().rstrip("&").strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_first_block_is_the_two_command_promise() -> None:
    lang, body = BLOCKS[0]
    assert lang == "sh"
    assert body.split("\n")[:-1] == ["./run.sh demo", "./run.sh test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run.sh test" in ci and "demo" not in ci


CHARGEBRIDGE = [c for c in shell_commands() if c.startswith("chargebridge ")]


def test_readme_shows_the_main_commands() -> None:
    used = {shlex.split(c)[1] for c in CHARGEBRIDGE}
    assert {"run", "decode", "simulate"} <= used


@pytest.mark.parametrize("command", CHARGEBRIDGE)
def test_every_chargebridge_command_parses(command: str) -> None:
    build_parser().parse_args(shlex.split(command)[1:])


def test_decode_example_prints_what_the_readme_shows() -> None:
    [command] = [c for c in CHARGEBRIDGE if c.startswith("chargebridge decode")]
    shown = next(body for lang, body in BLOCKS if lang == "json")
    out = subprocess.run(
        [sys.executable, "-m", "bridge", *shlex.split(command)[1:]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == json.loads(shown)


PUBLISHES = [c for c in shell_commands() if c.startswith("mosquitto_pub ")]


@pytest.mark.parametrize("command", PUBLISHES)
def test_every_mosquitto_pub_example_is_a_valid_request(command: str) -> None:
    args = shlex.split(command)
    topic, payload = args[args.index("-t") + 1], json.loads(args[args.index("-m") + 1])
    topics = Topics()
    if (action := topics.parse_charging_request(topic)) is not None:
        parse_request(action, payload)
    else:
        parsed = topics.parse_device_request(topic)
        assert parsed is not None, topic
        DEVICE_COMMAND_REQUESTS[parsed.command].model_validate(payload)
