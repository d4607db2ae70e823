"""Wire units -> SI: the one place where raw protocol integers become physical quantities.

Convention (chosen once, used everywhere): payload fields keep the WIRE integer under the plain
field name (`voltage` in 0.1 V, `power` in 0.1 W, `energy` in 0.01 kWh, `current` in 0.001 A,
`temperature` in degC + 65 with 0 meaning "no sensor"); the SI value is a read-only property or a
JSON key with a unit suffix (`voltage_v`, `power_w`, `energy_kwh`, `current_a`, `temperature_c`,
`duration_s`). Raw values round-trip byte-exactly; SI values are derived and never encoded.
Exceptions noted by the reference (0x17 currents in 0.01 A, leakage in mA, 0x84 alarm
temperatures in plain degC, 0x82 full power in whole W) get their own `Unit` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def volts(raw: int) -> float:
    """0.1 V -> V."""
    return raw / 10


def watts(raw: int) -> float:
    """0.1 W -> W."""
    return raw / 10


def kwh(raw: int) -> float:
    """0.01 kWh -> kWh."""
    return raw / 100


def amps(raw: int) -> float:
    """0.001 A -> A."""
    return raw / 1000


def centiamps(raw: int) -> float:
    """0.01 A -> A (0x17 host status currents)."""
    return raw / 100


def celsius(raw: int) -> float | None:
    """degC + 65 in one byte -> degC; raw 0 means the device has no such sensor (None)."""
    return None if raw == 0 else float(raw - 65)


def seconds(raw: int) -> int:
    """Durations are already whole seconds on the wire."""
    return raw


def optional(convert: Callable[[int], float | None], raw: int | None) -> float | None:
    """Apply `convert` to an optional trailing field (None when the device did not send it)."""
    return None if raw is None else convert(raw)


@dataclass(frozen=True, slots=True)
class Unit:
    """A wire unit: the JSON key suffix for the SI value, the conversion function and the same
    conversion as an expression template (`{0}` = raw value) for generated code."""

    suffix: str
    convert: Callable[[int], float | int | None]
    inline: str
    # The SI value is raw / divisor (0: some other conversion): generated code can then write
    # its JSON text from integers, `repr(raw / 10)` being `f"{raw // 10}.{raw % 10}"` for any
    # raw >= 0 (shortest repr, fewer than 16 digits; checked by the tests).
    divisor: int = 0


VOLTAGE = Unit("_v", volts, "{0} / 10", 10)
POWER = Unit("_w", watts, "{0} / 10", 10)
ENERGY = Unit("_kwh", kwh, "{0} / 100", 100)
CURRENT = Unit("_a", amps, "{0} / 1000", 1000)
CENTIAMPS = Unit("_a", centiamps, "{0} / 100", 100)
TEMPERATURE = Unit("_c", celsius, "(None if {0} == 0 else float({0} - 65))")
DURATION = Unit("_s", seconds, "{0}")
