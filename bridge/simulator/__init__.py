"""Simulated DNY chargers: a pure per-device state machine (`device`) and the asyncio fleet
that runs many of them over TCP or one shared serial line (`fleet`)."""

from bridge.simulator.device import DeviceTiming, SimulatedDevice, UserBehaviour
from bridge.simulator.fleet import Fleet, FleetConfig, SerialTarget, TcpTarget
from bridge.simulator.stats import FleetStats

__all__ = [
    "DeviceTiming",
    "Fleet",
    "FleetConfig",
    "FleetStats",
    "SerialTarget",
    "SimulatedDevice",
    "TcpTarget",
    "UserBehaviour",
]
