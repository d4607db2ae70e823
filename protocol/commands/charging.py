"""Charging business: 0x82 start/stop, 0x8A adjust, 0x06 power report, 0x03 settlement,
0x04 legacy order confirmation (and the 0x43 cabinet record sharing the settlement prefix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol import units
from protocol.commands._model import (
    DEVICE,
    SERVER,
    U8,
    U16,
    U32,
    CardId,
    Duration,
    Energy,
    OrderNo,
    Payload,
    Port,
    Power,
    Tail,
    Temperature,
    Voltage,
    Wire,
    model,
    u8,
)
from protocol.enums import (
    adjust_mode_name,
    charge_result_executed,
    charge_result_name,
    charging_status_name,
    rate_mode_name,
    start_mode_name,
    stop_reason_name,
)
from protocol.units import CURRENT

StartMode = Annotated[int, u8(start_mode_name)]
RateMode = Annotated[int, u8(rate_mode_name)]
Current = Annotated[int, Wire("H", unit=CURRENT)]  # 0.001 A


@model
@dataclass(frozen=True, slots=True)
class ChargeControl(Payload):
    """0x82 start (command=1) / stop (command=0) charging (server -> device).

    `duration` is seconds in time mode and 0.01 kWh in energy mode; 0 = charge until full.
    Mandatory prefix 25 bytes; the tail fields were added over time (v7.5, v8.0, v8.6, 2023)
    and are sent up to the last one set. Units: `max_charge_time` s, `overload_power` 0.1 W,
    `extra_float_time` s, `full_power` WHOLE watts, `full_power_check_time` minutes.
    """

    COMMAND = 0x82
    SENDER = SERVER

    rate_mode: RateMode
    balance: U32  # fen, or expiry Unix time for monthly passes; for the voice prompt only
    port: Port  # 0xFF = device chooses
    command: U8  # 1 start, 0 stop
    duration: U16
    order_no: OrderNo
    max_charge_time: U16 | None = None
    overload_power: Power | None = None
    qr_backlight: U8 | None = None
    long_charge: U8 | None = None
    extra_float_time: U16 | None = None
    short_circuit_check: U8 | None = None  # 0/1 no check, 2 normal check (ambiguity 24)
    ignore_unplug: U8 | None = None
    force_auto_stop: U8 | None = None
    full_power: U8 | None = None
    full_power_check_time: U8 | None = None
    extra: Tail = b""

    @property
    def overload_power_w(self) -> float | None:
        return units.optional(units.watts, self.overload_power)


@model
@dataclass(frozen=True, slots=True)
class ChargeControlReply(Payload):
    """0x82 device reply. Old devices (before v6.2) send the result byte only; order number,
    port and the waiting-ports bitmap (bit i = wire port i, valid for result 5) follow."""

    COMMAND = 0x82
    SENDER = DEVICE

    result: Annotated[int, u8(charge_result_name)]
    order_no: OrderNo | None = None
    port: Port | None = None
    waiting_ports: U16 | None = None
    extra: Tail = b""

    @property
    def executed(self) -> bool:
        """Results 0, 3 and 9 mean the command was carried out (reference A.13)."""
        return charge_result_executed(self.result)


@model
@dataclass(frozen=True, slots=True)
class AdjustCharging(Payload):
    """0x8A modify the limit of a running session; `limit` is s (modes 0/1) or 0.01 kWh (2).
    The device replies ResultReply with A.14 codes (enums.adjust_result_name)."""

    COMMAND = 0x8A
    SENDER = SERVER

    mode: Annotated[int, u8(adjust_mode_name)]
    port: Port
    limit: U16
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class PortPowerReport(Payload):
    """0x06 power heartbeat of a charging port (every 5 min, not answered).

    Mandatory prefix 31 bytes (through the order number); later fields were appended in order,
    so each is decoded when the data holds it completely. `period_energy` is a raw counter
    (divide by 4800; debugging only), `occupied_time` is in minutes (cabinets).
    """

    COMMAND = 0x06
    SENDER = DEVICE

    port: Port
    status: Annotated[int, u8(charging_status_name)]
    duration: Duration
    energy: Energy
    start_mode: StartMode
    power: Power
    max_power: Power  # since the previous 0x06
    min_power: Power  # since the previous 0x06 (the vendor note says "max" by mistake)
    average_power: Power
    order_no: OrderNo
    period_energy: U16 | None = None
    peak_power: Power | None = None
    voltage: Voltage | None = None
    current: Current | None = None
    ambient_temperature: Temperature | None = None
    port_temperature: Temperature | None = None
    timestamp: U32 | None = None
    occupied_time: U16 | None = None
    extra: Tail = b""

    @property
    def duration_s(self) -> int:
        return self.duration

    @property
    def energy_kwh(self) -> float:
        return units.kwh(self.energy)

    @property
    def power_w(self) -> float:
        return units.watts(self.power)

    @property
    def max_power_w(self) -> float:
        return units.watts(self.max_power)

    @property
    def min_power_w(self) -> float:
        return units.watts(self.min_power)

    @property
    def average_power_w(self) -> float:
        return units.watts(self.average_power)

    @property
    def peak_power_w(self) -> float | None:
        return units.optional(units.watts, self.peak_power)

    @property
    def voltage_v(self) -> float | None:
        return units.optional(units.volts, self.voltage)

    @property
    def current_a(self) -> float | None:
        return units.optional(units.amps, self.current)

    @property
    def ambient_temperature_c(self) -> float | None:
        return units.optional(units.celsius, self.ambient_temperature)

    @property
    def port_temperature_c(self) -> float | None:
        return units.optional(units.celsius, self.port_temperature)


@dataclass(frozen=True, slots=True)
class SessionEnd(Payload):
    """The 29-byte end-of-session prefix shared by 0x03 and 0x43."""

    duration: Duration
    max_power: Power
    energy: Energy
    port: Port
    start_mode: StartMode
    card_id: CardId  # zeros for online starts; the card ID or verification code otherwise
    stop_reason: Annotated[int, u8(stop_reason_name)]
    order_no: OrderNo

    @property
    def duration_s(self) -> int:
        return self.duration

    @property
    def max_power_w(self) -> float:
        return units.watts(self.max_power)

    @property
    def energy_kwh(self) -> float:
        return units.kwh(self.energy)


@model
@dataclass(frozen=True, slots=True)
class Settlement(SessionEnd):
    """0x03 settlement (the server must answer ResultReply(0) once the record is safe).

    The device re-sends it every 30 min until answered, so it can arrive many times and late.
    Mandatory prefix 29 bytes; `second_max_power` (0.1 W, first 5 min), `timestamp`
    (debugging only) and `occupied_time` (minutes, cabinets) follow by length.
    """

    COMMAND = 0x03
    SENDER = DEVICE

    second_max_power: Power | None = None
    timestamp: U32 | None = None
    occupied_time: U16 | None = None
    extra: Tail = b""

    @property
    def second_max_power_w(self) -> float | None:
        return units.optional(units.watts, self.second_max_power)


@model
@dataclass(frozen=True, slots=True)
class ChargeFinished(SessionEnd):
    """0x43 cabinet: charging finished, not settled (the same 29 bytes as the 0x03 prefix)."""

    COMMAND = 0x43
    SENDER = DEVICE

    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class OrderConfirmation(Payload):
    """0x04 legacy order confirmation (old devices; answer OrderConfirmationReply)."""

    COMMAND = 0x04
    SENDER = DEVICE

    port: Port
    start_mode: StartMode
    card_id: CardId
    duration: Duration
    order_no: OrderNo
    extra: Tail = b""

    @property
    def duration_s(self) -> int:
        return self.duration


@model
@dataclass(frozen=True, slots=True)
class OrderConfirmationReply(Payload):
    """0x04 server reply: the port echoed and an answer byte (values undocumented; send 0)."""

    COMMAND = 0x04
    SENDER = SERVER

    port: Port
    answer: U8
    extra: Tail = b""
