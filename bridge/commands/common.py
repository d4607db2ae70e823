"""What every long-running sub-command shares: settings from args, logging, signals, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bridge.config import CommonSettings, ConfigError, settings_from_args
from bridge.errors import StartupError, leaves
from bridge.logs import setup_logging
from bridge.mqtt.client import MqttClientFailed

log = logging.getLogger("chargebridge")

S = TypeVar("S", bound=CommonSettings)


async def serve_until_signalled(coro: Coroutine[Any, Any, None]) -> None:
    """SIGINT/SIGTERM cancel `coro`, whose `finally` blocks then shut down in order."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await coro


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit: every charger holds a socket, and the
    usual soft default (1024) would refuse connections long before memory or CPU run out.
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is installed (the `fast` extra), else on asyncio's loop.
    uvloop's transports cut CPU per frame and memory per connection (docs/performance.md)."""
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def run_role(
    name: str,
    cls: type[S],
    args: argparse.Namespace,
    serve: Callable[[S], Coroutine[Any, Any, None]],
) -> int:
    """Load settings (a bad option is one line and exit 2), set up logging, serve.

    A role never dies silently while the process lives on: every role runs in the one task
    tree under `serve`, so any exception that ends one ends the process. A failure at start
    the operator must fix (`StartupError`, an `OSError` such as a port in use) is one line;
    anything else is logged once with its traceback. Both exit 1, so systemd restarts us."""
    try:
        settings = settings_from_args(cls, args)
    except ConfigError as exc:
        print(f"chargebridge {name}: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    try:
        run_async(serve_until_signalled(serve(settings)))
    except Exception as exc:  # the last line of defence, reported below
        return report_failure(name, exc)
    return 0


def report_failure(name: str, exc: BaseException) -> int:
    """One line per start-up failure; one traceback per unexpected error; exit status 1."""
    for leaf in _unique(leaves(exc)):
        if isinstance(leaf, StartupError | OSError | ConfigError):
            print(f"chargebridge {name}: {leaf}", file=sys.stderr)
        elif isinstance(leaf, MqttClientFailed):
            # Its traceback was logged when the client died; say only what it ended.
            log.critical("%s stopped: %s; exiting with status 1", name, leaf)
        elif not isinstance(leaf, asyncio.CancelledError):
            log.critical(
                "%s stopped on an unexpected error; exiting with status 1",
                name,
                exc_info=leaf,
            )
    return 1


def _unique(errors: list[BaseException]) -> list[BaseException]:
    """The same failure reached by several tasks (e.g. a dead client's readers) once."""
    seen: set[str] = set()
    out = []
    for e in errors:
        key = f"{type(e).__name__}:{e}" if isinstance(e, MqttClientFailed) else str(id(e))
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out
