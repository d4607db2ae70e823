#!/usr/bin/env python3
"""Mutation check: plant one small deliberate bug at a time and see whether the tests notice.

Each mutation is a file, an exact source snippet and its replacement, found by text (not by
line number) so the list survives refactoring; a snippet that is no longer there (or is there
more than once) is reported `not_found` and skipped, which tells you to update the list. The
file is always restored byte for byte, also on Ctrl-C or SIGTERM.

    .venv/bin/python scripts/mutation.py --fast           # each mutation's own tests (minutes)
    .venv/bin/python scripts/mutation.py                  # the whole suite, -x -q, per mutation
    .venv/bin/python scripts/mutation.py --only busy-limit-removed --only checksum-off-by-one
    .venv/bin/python scripts/mutation.py --list           # names, files, and whether found
    .venv/bin/python scripts/mutation.py -- -k settlement # extra pytest arguments

Prints progress on stderr and a JSON object {mutation: caught|survived|not_found} on stdout;
exits 1 if any mutation survived. See docs/testing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    find: str  # must occur exactly once
    replace: str
    tests: tuple[str, ...]  # what --fast runs
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    # --- the six that survived the whole suite in issue 12 ------------------------------------
    Mutation(
        "settlement-max-power-energy-swapped",
        "protocol/commands/charging.py",
        "    duration: Duration\n    max_power: Power\n    energy: Energy\n",
        "    duration: Duration\n    energy: Energy\n    max_power: Power\n",
        ("tests/protocol/test_reference_fixtures.py",),
        "0x03 fields 2 and 4 swapped in the shared 0x03/0x43 prefix",
    ),
    Mutation(
        "settlement-acked-when-refused",
        "bridge/gateway/flows.py",
        "if not fut.cancelled() and fut.exception() is None:",
        "if not fut.cancelled():",
        (
            "tests/bridge/gateway/test_guards.py"
            "::test_a_settlement_the_broker_refuses_is_not_acknowledged",
        ),
        "the gateway answers 0x03 although the broker refused the settled event",
    ),
    Mutation(
        "already-settled-always-false",
        "bridge/charging/service.py",
        "return self.state.has_seen(batch, settlement_key(e.device_id, e.port, e.order_no))",
        "return False",
        ("tests/bridge/charging/test_resent_settlement.py",),
        "a settlement resent after its session was cleared counts again",
    ),
    Mutation(
        "serial-idle-never-offline",
        "bridge/gateway/loops.py",
        "if dev.online and now - dev.last_rx > idle:",
        "if False:",
        (
            "tests/bridge/gateway/test_guards.py"
            "::test_a_silent_device_on_a_serial_line_goes_offline",
        ),
        "a silent device on a serial (RS-485) line is never marked offline",
    ),
    Mutation(
        "outbox-write-failure-drops-pending",
        "bridge/mqtt/outbox.py",
        "            self._write_failing = True\n            return\n",
        "            self._write_failing = True\n"
        "            self._inserts.clear()\n"
        "            self._deletes.clear()\n"
        "            return\n",
        ("tests/bridge/mqtt/test_outbox.py", "tests/bridge/gateway/test_outbox.py"),
        "a failed outbox write forgets the writes it should retry",
    ),
    Mutation(
        "busy-limit-removed",
        "bridge/gateway/commands.py",
        "if dev.queued >= MAX_QUEUED_PER_DEVICE:",
        "if False:",
        (
            "tests/bridge/gateway/test_guards.py"
            "::test_commands_beyond_sixteen_queued_for_one_device_are_busy",
        ),
        "no `busy` answer beyond 16 commands queued for one device",
    ),
    # --- more ------------------------------------------------------------------------------
    Mutation(
        "checksum-off-by-one",
        "protocol/frame.py",
        "return body + _U16.pack(sum(body) & 0xFFFF)",
        "return body + _U16.pack((sum(body) + 1) & 0xFFFF)",
        ("tests/protocol/test_examples.py", "tests/protocol/test_reference_fixtures.py"),
        "encoded frames carry checksum + 1",
    ),
    Mutation(
        "stream-checksum-off-by-one",
        "protocol/frame.py",
        "if sum(buf[pos : end - 2]) & 0xFFFF == buf[end - 2] | buf[end - 1] << 8:",
        "if (sum(buf[pos : end - 2]) + 1) & 0xFFFF == buf[end - 2] | buf[end - 1] << 8:",
        ("tests/protocol/test_reference_fixtures.py", "tests/protocol/test_frame.py"),
        "the stream decoder expects checksum + 1",
    ),
    Mutation(
        "power-report-max-min-swapped",
        "protocol/commands/charging.py",
        "    max_power: Power  # since the previous 0x06\n"
        "    min_power: Power  # since the previous 0x06",
        "    min_power: Power  # since the previous 0x06\n"
        "    max_power: Power  # since the previous 0x06",
        ("tests/protocol/test_reference_fixtures.py",),
        "0x06 max and min power of the period swapped",
    ),
    Mutation(
        "event-port-off-by-one",
        "bridge/gateway/events.py",
        "def _port(wire: int) -> int:\n    return wire + 1\n",
        "def _port(wire: int) -> int:\n    return wire\n",
        (
            "tests/bridge/gateway/test_guards.py"
            "::test_hand_written_frames_become_the_documented_events",
        ),
        "events give the 0-based wire port instead of the 1-based label",
    ),
    Mutation(
        "start-port-off-by-one",
        "bridge/gateway/requests.py",
        'port=0xFF if req.port == "auto" else req.port - 1,',
        'port=0xFF if req.port == "auto" else req.port,',
        ("tests/bridge/gateway/test_commands.py",),
        "start_charging sends the 1-based port on the wire",
    ),
)


class Stop(Exception):
    """SIGTERM: leave through `finally`, which restores the file."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stop


def run_one(m: Mutation, fast: bool, extra: list[str], timeout: float | None) -> str:
    path = ROOT / m.path
    if not path.exists():
        print(f"{m.name}: {m.path} not found", file=sys.stderr)
        return "not_found"
    original = path.read_bytes()
    text = original.decode()
    count = text.count(m.find)
    if count != 1:
        print(f"{m.name}: snippet not found in {m.path} ({count} matches)", file=sys.stderr)
        return "not_found"
    selection = list(m.tests) if fast else []
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += selection + extra
    # No bytecode from the mutant: a restored file of the same size written within the same
    # second could otherwise be shadowed by the mutant's .pyc.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "400"}
    started = time.monotonic()
    try:
        path.write_bytes(text.replace(m.find, m.replace).encode())
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            print(f"{m.name}: tests timed out: caught", file=sys.stderr)
            return "caught"
    finally:
        path.write_bytes(original)
    seconds = time.monotonic() - started
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    last = lines[-1:] or [""]
    for line in lines:
        if line.startswith(("FAILED ", "ERROR tests")):
            print(f"    {line[:300]}", file=sys.stderr)
    if done.returncode == 5:
        print(f"{m.name}: no tests collected ({last[0]})", file=sys.stderr)
        return "not_found"
    verdict = "survived" if done.returncode == 0 else "caught"
    print(f"{m.name}: {verdict} in {seconds:.0f} s ({last[0]})", file=sys.stderr)
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="run only each mutation's tests")
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per test run (default: none)"
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args(argv)
    known = {m.name for m in MUTATIONS}
    if unknown := set(args.only) - known:
        parser.error(f"unknown mutation(s) {sorted(unknown)}; known: {sorted(known)}")
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            found = (ROOT / m.path).exists() and (ROOT / m.path).read_text().count(m.find) == 1
            print(f"{m.name:40} {m.path:32} {'ok' if found else 'NOT FOUND':9} {m.why}")
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    summary: dict[str, str] = {}
    try:
        for m in chosen:
            summary[m.name] = run_one(m, args.fast, args.pytest_args, args.timeout)
    except (Stop, KeyboardInterrupt):
        print("interrupted; every file restored", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2))
    return 1 if "survived" in summary.values() else 0


if __name__ == "__main__":
    sys.exit(main())
