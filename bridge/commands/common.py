"""What every long-running sub-command shares: settings from args, logging, signals, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bridge.config import CommonSettings, ConfigError, settings_from_args
from bridge.logs import setup_logging

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
    """Load settings (a bad option is one line and exit 2), set up logging, serve."""
    try:
        settings = settings_from_args(cls, args)
    except ConfigError as exc:
        print(f"chargebridge {name}: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    try:
        run_async(serve_until_signalled(serve(settings)))
    except OSError as exc:
        print(f"chargebridge {name}: {exc}", file=sys.stderr)
        return 1
    return 0
