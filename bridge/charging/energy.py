"""The session's `energy_kwh_estimated`: energy integrated from the live power reports, pure.

Legacy piles (0x01 heartbeats, 0x04, no 0x06) report no energy until they settle, so the
service integrates the power they do report; it does the same for 0x06 chargers, beside
the energy they report. The settled `energy_kwh` stays the billing figure.

The rule (docs/charging.md, "Estimated energy"), with W = `energy_calculation_window_s`:

- Samples are `(ts, power_w)`: the `power_w` of a 0x06 report and the per-port power of a
  0x01 heartbeat, at the gateway's `ts`.
- Left Riemann sum: the power of the last integrated sample (the *anchor*) holds until the
  next sample, which then becomes the anchor.
- At most once per W: a sample less than W after the anchor (or earlier than it) updates
  the live `power_w` only; it is not integrated and does not move the anchor.
- A gap counts for at most `GAP_WINDOWS` x W (10 min by default): a charger silent for
  longer (lost reports, a broker outage) adds no energy it was not seen to deliver.
- The first sample counts from the start of charging (a 0x06's `ts - duration_s`, else the
  session's `start_time`), the last until the settlement (its `ts`), both within the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

GAP_WINDOWS = 10
"""A silence counts for at most this many calculation windows."""

DEFAULT_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One live power report: when (Unix s, the gateway's clock) and how much (W)."""

    ts: float
    power_w: float


def _kwh(power_w: float, seconds: float, window: float) -> float:
    held = min(max(0.0, seconds), GAP_WINDOWS * window)
    return max(0.0, power_w) * held / 3_600_000.0


def advance(
    kwh: float, anchor: Sample | None, sample: Sample, window: float, start: float
) -> tuple[float, Sample | None]:
    """The estimate and anchor after `sample`; `start` is when charging began (used for
    the first sample only)."""
    if anchor is None:
        return kwh + _kwh(sample.power_w, sample.ts - start, window), sample
    if sample.ts - anchor.ts < window:
        return kwh, anchor
    return kwh + _kwh(anchor.power_w, sample.ts - anchor.ts, window), sample


def close(kwh: float, anchor: Sample | None, end: float, window: float) -> float:
    """The estimate when charging ended at `end`: the anchor's power held until then."""
    if anchor is None:
        return kwh
    return kwh + _kwh(anchor.power_w, end - anchor.ts, window)
