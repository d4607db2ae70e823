"""One charging session on one simulated port: the power curve and energy integration.

Everything here runs on *device time* (seconds as the charger experiences them); the fleet maps
device time to wall-clock time with the speed factor. Energies are integrated from the sampled
power, so every figure the device reports (0x06 energy so far, the 0x03 total) comes from the
same running sum and is consistent and monotonic by construction.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# Stop reasons (Appendix A.12) the simulator produces.
STOP_FULL = 0x01
STOP_MAX_TIME = 0x02
STOP_PRESET_TIME = 0x03
STOP_PRESET_ENERGY = 0x04
STOP_UNPLUGGED = 0x05
STOP_BY_SERVER = 0x07

SAMPLE_S = 30.0
"""Power is sampled (and energy integrated) on a fixed 30 s grid from the session start; it
divides the 300 s 0x06 period, so each report closes exactly on a grid point."""

SECOND_MAX_WINDOW_S = 300.0
"""Window of the 0x03 "second max power" (0x84 default: the first 5 minutes)."""

NOISE = 0.02
"""Relative standard deviation of the sampled power (charger ripple, metering noise)."""


@dataclass(frozen=True, slots=True)
class PowerCurve:
    """What an e-bike charger draws: constant power (bulk), then an exponential taper.

    The battery counts as full when the taper falls below `full_w` (the device's float-charge
    detection); a session that must not stop when full keeps drawing `float_w` afterwards.
    """

    bulk_w: float
    bulk_s: float
    taper_tau_s: float
    full_w: float
    float_w: float

    @classmethod
    def random(cls, rng: random.Random, *, battery_full: bool = False) -> PowerCurve:
        """A plausible charger: 200-400 W for 1-3 h, tapering to full within about an hour.

        A battery that is already full only shows a short taper from a low power.
        """
        bulk_w = rng.uniform(200.0, 400.0)
        full_w = bulk_w * rng.uniform(0.12, 0.2)
        if battery_full:
            return cls(full_w * 1.6, 0.0, rng.uniform(120.0, 300.0), full_w, full_w * 0.4)
        return cls(
            bulk_w,
            rng.uniform(3600.0, 3 * 3600.0),
            rng.uniform(1200.0, 2400.0),
            full_w,
            full_w * 0.4,
        )

    @property
    def full_at_s(self) -> float:
        """Elapsed seconds at which the battery counts as full."""
        return self.bulk_s + self.taper_tau_s * math.log(self.bulk_w / self.full_w)

    def power_w(self, t: float) -> float:
        """Noise-free draw at `t` seconds into the session."""
        if t <= self.bulk_s:
            return self.bulk_w
        if t >= self.full_at_s:
            return self.float_w
        return self.bulk_w * math.exp(-(t - self.bulk_s) / self.taper_tau_s)


@dataclass(slots=True)
class PeriodStats:
    """Min / max / average power and energy since the previous 0x06 report."""

    min_w: float = math.inf
    max_w: float = 0.0
    energy_ws: float = 0.0
    seconds: float = 0.0

    def add(self, power_w: float, dt: float) -> None:
        self.min_w = min(self.min_w, power_w)
        self.max_w = max(self.max_w, power_w)
        self.energy_ws += power_w * dt
        self.seconds += dt

    @property
    def average_w(self) -> float:
        return self.energy_ws / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class PortSession:
    """A running session: limits as the server set them, and the metered figures so far.

    `energy_wh` is the exact running integral; the wire reports floor it to 0.01 kWh, so the
    reported values never decrease and the settlement is the last report plus the remainder.
    Power limits: `order_limit_w` is the 0x82 overload power of this order, `device_limit_w`
    the device's per-port overload power (0x85); the charger never draws more than either.
    """

    order_no: bytes
    start_mode: int
    card_id: bytes
    started_at: float
    curve: PowerCurve
    auto_stop: bool = True
    time_limit_s: float | None = None
    energy_limit_wh: float | None = None
    max_time_s: float | None = 36000.0
    unplug_after_s: float | None = None
    order_limit_w: float | None = None
    device_limit_w: float | None = None
    elapsed_s: float = 0.0
    energy_wh: float = 0.0
    power_w: float = 0.0
    max_power_w: float = 0.0
    second_max_power_w: float = 0.0
    period: PeriodStats = field(default_factory=PeriodStats)
    stop_reason: int | None = None

    @property
    def ended(self) -> bool:
        return self.stop_reason is not None

    @property
    def power_limit_w(self) -> float | None:
        """The lower of the order's and the device's limit (None: only the charger limits)."""
        limits = [w for w in (self.order_limit_w, self.device_limit_w) if w is not None]
        return min(limits) if limits else None

    def set_device_limit(self, watts: float | None) -> None:
        """A new device limit takes effect at once: the live power drops to it if above."""
        self.device_limit_w = watts
        limit = self.power_limit_w
        if limit is not None:
            self.power_w = min(self.power_w, limit)

    @property
    def floating(self) -> bool:
        """True once the battery is full but the session goes on (time/energy mode)."""
        return self.elapsed_s >= self.curve.full_at_s

    @property
    def energy_centi_kwh(self) -> int:
        """Energy so far in the wire unit, 0.01 kWh (= 10 Wh), rounded down."""
        return int(self.energy_wh // 10.0)

    def planned_end_s(self) -> float:
        """Elapsed seconds of the next end condition known in advance (inf if none)."""
        ends = [math.inf]
        if self.auto_stop:
            ends.append(self.curve.full_at_s)
        for limit in (self.time_limit_s, self.max_time_s, self.unplug_after_s):
            if limit is not None:
                ends.append(limit)
        return min(ends)

    def _end_reason_at(self, t: float) -> int | None:
        """Which end condition holds at elapsed `t` (priority: user, preset, device limits)."""
        if self.unplug_after_s is not None and t >= self.unplug_after_s:
            return STOP_UNPLUGGED
        if self.time_limit_s is not None and t >= self.time_limit_s:
            return STOP_PRESET_TIME
        if self.energy_limit_wh is not None and self.energy_wh >= self.energy_limit_wh:
            return STOP_PRESET_ENERGY
        if self.auto_stop and t >= self.curve.full_at_s:
            return STOP_FULL
        if self.max_time_s is not None and t >= self.max_time_s:
            return STOP_MAX_TIME
        return None

    def advance(self, now: float, rng: random.Random) -> None:
        """Integrate the power up to device time `now` or to the session's end, whichever is
        first. Only whole grid steps are taken, except the last step before an end condition."""
        end = self.planned_end_s()
        target = min(now - self.started_at, end)
        while self.stop_reason is None:
            self.stop_reason = self._end_reason_at(self.elapsed_s)
            if self.stop_reason is not None:
                break
            grid_next = (math.floor(self.elapsed_s / SAMPLE_S + 1e-9) + 1) * SAMPLE_S
            step_end = min(grid_next, end)
            if step_end > target + 1e-9:
                break
            self._sample(step_end, rng)

    def _sample(self, t_end: float, rng: random.Random) -> None:
        dt = t_end - self.elapsed_s
        power = max(0.0, self.curve.power_w((self.elapsed_s + t_end) / 2) * rng.gauss(1.0, NOISE))
        limit = self.power_limit_w
        if limit is not None:
            power = min(power, limit)
        self.energy_wh += power * dt / 3600.0
        self.period.add(power, dt)
        self.power_w = power
        self.max_power_w = max(self.max_power_w, power)
        if self.elapsed_s < SECOND_MAX_WINDOW_S:
            self.second_max_power_w = max(self.second_max_power_w, power)
        self.elapsed_s = t_end

    def stop(self, now: float, reason: int, rng: random.Random) -> None:
        """End the session at device time `now` (a stop command, an unplug), metering first."""
        self.advance(now, rng)
        if self.stop_reason is None:
            target = now - self.started_at
            if target > self.elapsed_s:
                self._sample(target, rng)
            self.stop_reason = reason
