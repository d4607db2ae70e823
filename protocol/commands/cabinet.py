"""Charging cabinets and alarms: 0x41, 0x42, 0x43 (see charging.ChargeFinished), 0x44, 0x72."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol.commands._model import (
    DEVICE,
    SERVER,
    U8,
    U32,
    OrderNo,
    Payload,
    Port,
    Tail,
    model,
    u8,
)
from protocol.enums import alarm_type_name, push_type_name


@model
@dataclass(frozen=True, slots=True)
class CabinetHeartbeat(Payload):
    """0x41 cabinet heartbeat: door (1 = open) and fan (1 = on) bitmaps; bit i = wire port i
    of the little-endian u32 (bit order not stated by the vendor; reference advice 4.7)."""

    COMMAND = 0x41
    SENDER = DEVICE

    port_count: U8
    doors: U32
    fans: U32
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class Alarm(Payload):
    """0x42 alarm push (not answered). `port` is the port for port alarms, the RS-485 sensor
    address (0 = own sensor) for water/smoke/temperature/level alarms; `inputs` the fired
    inputs of a multi-input sensor (presumably input 1 = bit 0)."""

    COMMAND = 0x42
    SENDER = DEVICE

    alarm_type: Annotated[int, u8(alarm_type_name)]
    port: Port
    inputs: U8
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class PortPush(Payload):
    """0x44 cabinet port push (1 = door not properly closed)."""

    COMMAND = 0x44
    SENDER = DEVICE

    push_type: Annotated[int, u8(push_type_name)]
    port: Port
    order_no: OrderNo
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class CabinetStop(Payload):
    """0x72 stop charging without opening the door; the order number must match the session."""

    COMMAND = 0x72
    SENDER = SERVER

    port: Port
    order_no: OrderNo
    extra: Tail = b""


@model
@dataclass(frozen=True, slots=True)
class CabinetStopReply(Payload):
    """0x72 device reply: result (0 success) and the order number."""

    COMMAND = 0x72
    SENDER = DEVICE

    result: U8
    order_no: OrderNo
    extra: Tail = b""
