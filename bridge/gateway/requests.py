"""Validated command requests -> protocol frames, and device replies -> response fields.

A request becomes a list of `Step`s (set_params may need both 0x83 and 0x84). Cross-field
rules pydantic cannot express per field raise ValueError naming the field; the request then
answers `invalid` and never reaches the device.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import protocol as p
from bridge.gateway.dispatcher import Reply
from bridge.mqtt.payloads import (
    PARAMS_1_FIELDS,
    PARAMS_2_FIELDS,
    AdjustChargingRequest,
    CommandRequest,
    LocateRequest,
    QueryStatusRequest,
    RawRequest,
    ReadParamsRequest,
    RebootRequest,
    SetLimitsRequest,
    SetParamsRequest,
    StartChargingRequest,
    StopChargingRequest,
)
from protocol.enums import adjust_result_name, charge_result_executed, charge_result_name
from protocol.ids import order_no_hex

RATE_MODES = {"time": 0, "monthly": 1, "energy": 2, "count": 3}
ADJUST_MODES = {"time": 0, "time_full_stop": 1, "energy": 2}
# Commands without data have no model: named by the reference's names, not by hex.
READ_COMMANDS = {
    "params_1": p.command_code("query_running_params_1"),
    "params_2": p.command_code("query_running_params_2"),
    "limits": p.command_code("query_charge_limits"),
    "card": p.command_code("query_card_params"),
}
QUERY_STATUS = p.command_code("query_status")
REBOOT = p.command_code("reboot")
NO_REPLY_COMMANDS = frozenset(
    {QUERY_STATUS, p.command_code("trigger_self_upgrade"), p.command_code("reserved_fe")}
)
RESPONSE_KEYS = ("request_id", "ok", "code", "result", "message")


@dataclass(frozen=True, slots=True)
class Step:
    command: int
    data: bytes
    expect_reply: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # fields for the response
    sent: Any = None  # the protocol payload, to interpret the reply (0x82)

    @classmethod
    def of(cls, model: p.Payload, **kw: Any) -> Step:
        """The step that sends `model` under its own command code."""
        assert model.COMMAND is not None, f"{type(model).__name__} has no command code"
        return cls(model.COMMAND, p.encode_payload(model), **kw)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    code: int | None
    result: str
    message: str
    fields: dict[str, Any]


def _tenths(value: float) -> int:
    return round(value * 10)


def _hundredths(value: float) -> int:
    return round(value * 100)


def plan(req: CommandRequest) -> list[Step]:
    match req:
        case StartChargingRequest():
            return [_start(req)]
        case StopChargingRequest():
            order_no = bytes.fromhex(req.order_no)
            control = p.ChargeControl(
                rate_mode=0,
                balance=0,
                port=req.port - 1,
                command=0,
                duration=0,
                order_no=order_no,
            )
            return [Step.of(control, extra={"order_no": req.order_no.upper()}, sent=control)]
        case AdjustChargingRequest():
            if req.mode == "energy":
                if req.energy_kwh is None:
                    raise ValueError("energy_kwh: required when mode is energy")
                limit = _hundredths(req.energy_kwh)
            else:
                if req.duration_s is None:
                    raise ValueError(f"duration_s: required when mode is {req.mode}")
                limit = req.duration_s
            adjust = p.AdjustCharging(mode=ADJUST_MODES[req.mode], port=req.port - 1, limit=limit)
            return [Step.of(adjust)]
        case QueryStatusRequest():
            return [Step(QUERY_STATUS, b"", expect_reply=False)]
        case RebootRequest():
            return [Step(REBOOT, b"")]
        case SetLimitsRequest():
            return [_limits(req)]
        case SetParamsRequest():
            return _params(req)
        case LocateRequest():
            return [Step.of(p.Locate(seconds=req.seconds))]
        case ReadParamsRequest():
            return [Step(READ_COMMANDS[req.which], b"")]
        case RawRequest():
            return [
                Step(
                    req.command,
                    bytes.fromhex(req.data_hex),
                    expect_reply=req.command not in NO_REPLY_COMMANDS,
                )
            ]
    raise ValueError(f"no frame for {type(req).__name__}")


def _start(req: StartChargingRequest) -> Step:
    if req.mode == "time":
        if req.duration_s is None:
            raise ValueError("duration_s: required when mode is time")
        value, implied = req.duration_s, "time"
    elif req.mode == "energy":
        if req.energy_kwh is None:
            raise ValueError("energy_kwh: required when mode is energy")
        value, implied = _hundredths(req.energy_kwh), "energy"
    else:
        value, implied = 0, None
    rate_mode = req.rate_mode or implied or "time"
    if implied is not None and rate_mode != implied:
        raise ValueError(f"rate_mode: must be {implied!r} when mode is {req.mode}")
    order_no = bytes.fromhex(req.order_no) if req.order_no else os.urandom(16)
    tail: dict[str, Any] = {}
    if req.max_duration_s is not None or req.max_power_w is not None:
        tail = {
            "max_charge_time": req.max_duration_s or 0,
            "overload_power": _tenths(req.max_power_w or 0),
        }
    control = p.ChargeControl(
        rate_mode=RATE_MODES[rate_mode],
        balance=req.balance_cents,
        port=0xFF if req.port == "auto" else req.port - 1,
        command=1,
        duration=value,
        order_no=order_no,
        **tail,
    )
    return Step.of(control, extra={"order_no": order_no_hex(order_no)}, sent=control)


def _limits(req: SetLimitsRequest) -> Step:
    if (req.over_voltage_v is None) != (req.under_voltage_v is None):
        missing = "under_voltage_v" if req.under_voltage_v is None else "over_voltage_v"
        raise ValueError(f"{missing}: required together with the other voltage limit")
    voltages: dict[str, Any] = {}
    if req.over_voltage_v is not None and req.under_voltage_v is not None:
        voltages = {
            "over_voltage": _tenths(req.over_voltage_v),
            "under_voltage": _tenths(req.under_voltage_v),
        }
    limits = p.ChargeLimits(
        max_charge_time=req.max_duration_s, overload_power=_tenths(req.max_power_w), **voltages
    )
    return Step.of(limits)


# request field -> field of the protocol payload, in frame order
_PARAMS_1 = dict(
    zip(
        PARAMS_1_FIELDS,
        (
            "unplug_power",
            "unplug_detection_time",
            "float_percentage",
            "float_detection_time",
            "float_time",
            "heartbeat_interval",
        ),
        strict=True,
    )
)
_PARAMS_2 = dict(
    zip(
        PARAMS_2_FIELDS,
        (
            "dynamic_overload_power",
            "dynamic_overload_time",
            "dynamic_overload_start",
            "unplug_interference_power",
            "unplug_interference_time",
            "float_stage2_time_point",
            "float_stage2_detection_time",
            "min_power",
            "min_power_time_point",
            "second_max_power_window",
            "ambient_alarm_temperature",
            "port_alarm_temperature",
            "unplug_detection",
            "qr_backlight",
        ),
        strict=True,
    )
)


def _wire_param(value: Any) -> Any:
    # Booleans mean "on"; both frames encode on as 0 and off as 1.
    return (0 if value else 1) if isinstance(value, bool) else value


def _params(req: SetParamsRequest) -> list[Step]:
    steps = []
    groups: tuple[tuple[dict[str, str], type[Any]], ...] = (
        (_PARAMS_1, p.RunningParams1),
        (_PARAMS_2, p.RunningParams2),
    )
    for names, payload_cls in groups:
        given = [n for n in names if getattr(req, n) is not None]
        if not given:
            continue
        missing = [n for n in names if getattr(req, n) is None]
        if missing:
            code = payload_cls.COMMAND
            raise ValueError(f"{missing[0]}: required with {given[0]} (frame 0x{code:02X})")
        payload = payload_cls(**{wire: _wire_param(getattr(req, n)) for n, wire in names.items()})
        steps.append(Step.of(payload))
    if not steps:
        raise ValueError("request: give every field of 0x83 or of 0x84")
    return steps


# ---------------------------------------------------------------------- replies


def reply_fields(payload: Any) -> dict[str, Any]:
    """A decoded reply as JSON-ready fields: raw bytes become upper-case hex."""
    if not dataclasses.is_dataclass(payload):
        return {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(payload):
        value = getattr(payload, f.name)
        if f.name == "extra" and not value:
            continue
        if isinstance(value, bytes):
            value = value.hex().upper()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def outcome(step: Step, got: Reply) -> Outcome:
    """The response fields of a reply, from its payload decoded once by the caller."""
    frame, reply = got.frame, got.payload
    if reply is None:
        return Outcome(
            False,
            None,
            "bad_reply",
            f"reply not decodable: {got.error}",
            {"data_hex": frame.data.hex().upper()},
        )
    if isinstance(reply, p.ChargeControlReply):
        code = reply.result
        fields: dict[str, Any] = {}
        if reply.order_no is not None:
            fields["order_no"] = order_no_hex(reply.order_no)
        if reply.port is not None and reply.port != 0xFF:
            fields["port"] = reply.port + 1
        if reply.waiting_ports:
            fields["waiting_ports"] = [i + 1 for i in range(16) if reply.waiting_ports >> i & 1]
        ok = charge_result_executed(code)
        name = charge_result_name(code)
        return Outcome(ok, code, "ok" if code == 0 else name, name.replace("_", " "), fields)
    if isinstance(reply, p.RawPayload):
        return Outcome(True, None, "ok", "reply received", {"data_hex": reply.data.hex().upper()})
    fields = reply_fields(reply)
    code = fields.pop("result", None)
    for key in RESPONSE_KEYS:
        fields.pop(key, None)
    if not isinstance(code, int):
        return Outcome(True, None, "ok", "reply received", fields)
    # Parameter commands answer 0 for success; 0x8A has its own codes (reference A.14, A.21).
    name = (
        adjust_result_name(code)
        if frame.command == p.AdjustCharging.COMMAND
        else ("ok" if code == 0 else "failed")
    )
    return Outcome(code == 0, code, name, name.replace("_", " "), fields)
