"""Counters shared by every simulated device of a fleet (one object, no per-device copies)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

LATENCY_SAMPLES = 10_000
"""Reservoir size for acknowledgement latencies: enough for percentiles, bounded memory."""
FAILURES_KEPT = 10_000
"""The most recent failed connection attempts kept (when and why), for benchmarks."""


@dataclass(slots=True)
class FleetStats:
    """What the benchmarks and the demo's live view read. Latencies are in device seconds
    (divide by the speed factor for wall-clock seconds; `Fleet.snapshot()` does that)."""

    devices: int = 0
    connected: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    registered: int = 0
    heartbeats_sent: int = 0
    heartbeats_acked: int = 0
    sessions_started: int = 0
    sessions_completed: int = 0
    settlements_sent: int = 0
    settlements_acked: int = 0
    energy_reported_wh: float = 0.0
    """Energy of the settlements the server acknowledged."""
    upgrades_completed: int = 0
    upgrades_failed: int = 0
    """Transfers refused at the end (checksum, device type, no check packet)."""
    frames_sent: int = 0
    frames_received: int = 0
    bad_frames: int = 0
    latencies_s: list[float] = field(default_factory=list)
    failed_connects: deque[tuple[float, str]] = field(
        default_factory=lambda: deque(maxlen=FAILURES_KEPT)
    )
    """(time.monotonic() when the attempt STARTED, why it failed) of recent failed connects."""
    _latency_seen: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def ack_latency(self, seconds: float) -> None:
        """Keep a uniform sample (reservoir sampling) of every latency ever observed."""
        self._latency_seen += 1
        if len(self.latencies_s) < LATENCY_SAMPLES:
            self.latencies_s.append(seconds)
            return
        slot = self._rng.randrange(self._latency_seen)
        if slot < LATENCY_SAMPLES:
            self.latencies_s[slot] = seconds

    def as_dict(self, time_scale: float = 1.0) -> dict[str, Any]:
        """Counters plus latency percentiles in seconds (device seconds / `time_scale`)."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not f.name.startswith("_") and f.name not in ("latencies_s", "failed_connects")
        }
        samples = sorted(round(x / time_scale, 6) for x in self.latencies_s)
        out["energy_reported_kwh"] = round(out.pop("energy_reported_wh") / 1000.0, 3)
        out["ack_latency_s"] = {
            "count": self._latency_seen,
            **{f"p{q}": _percentile(samples, q) for q in (50, 90, 99)},
            "max": samples[-1] if samples else None,
        }
        return out


def _percentile(sorted_samples: list[float], q: int) -> float | None:
    if not sorted_samples:
        return None
    index = min(len(sorted_samples) - 1, round(q / 100 * (len(sorted_samples) - 1)))
    return sorted_samples[index]
