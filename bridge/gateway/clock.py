"""The gateway's clock, injectable so that unit tests move time instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds for intervals (idle timeout, rate limit)."""

    def time(self) -> float:
        """Unix time for what goes on the wire or into events (0x22 replies, last_seen)."""


class SystemClock:
    """`time.monotonic` and `time.time`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
