"""Device command requests and responses (API.md section 5):
`{b}/devices/{device_id}/request/{command}` and `.../response/{command}`.

`StartFields` (with the rule that mode `time` needs `duration_s` and `energy` needs
`energy_kwh`) is shared with the charging service's start request, so the two cannot drift.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from bridge.mqtt.payloads.common import OrderNo, PortNumber, PortOrAuto, U16Raw, U16Seconds

StartMode = Literal["full", "time", "energy"]
StartDuration = Annotated[StrictInt, Field(ge=1, le=0xFFFF)]
StartEnergy = Annotated[float, Field(gt=0, le=655.35)]
BalanceCents = Annotated[StrictInt, Field(ge=0, le=0xFFFFFFFF)]
MaxPowerW = Annotated[float, Field(ge=0, le=6553.5)]
_LIMIT_FOR_MODE = {"time": "duration_s", "energy": "energy_kwh"}


class StartFields(BaseModel):
    """The fields of a start, shared by the `start_charging` device command and the charging
    service's `start` request; subclasses set the defaults of `mode` and `balance_cents`.

    Float fields follow the subclass's strictness: the device command is strict, the charging
    request (parsed from a dict) accepts what pydantic's lax mode accepts, as it always did."""

    port: PortOrAuto
    order_no: OrderNo | None = Field(default=None, description="generated when absent")
    mode: StartMode
    duration_s: StartDuration | None = Field(default=None, validate_default=True)
    energy_kwh: StartEnergy | None = Field(default=None, validate_default=True)
    balance_cents: BalanceCents | None = None
    max_power_w: MaxPowerW | None = None

    @field_validator("duration_s", "energy_kwh")
    @classmethod
    def _limit_for_mode(cls, value: Any, info: ValidationInfo) -> Any:
        """Mode `time` needs `duration_s`, mode `energy` needs `energy_kwh`."""
        mode = info.data.get("mode")
        if value is None and _LIMIT_FOR_MODE.get(str(mode)) == info.field_name:
            raise PydanticCustomError(
                "limit_for_mode",
                "mode '{mode}' needs {field}",
                {"mode": mode, "field": info.field_name},
            )
        return value


class CommandRequest(BaseModel):
    """Base of `{b}/devices/{device_id}/request/{command}` payloads. Validated strictly from
    JSON: unknown keys, `"2"` for a number or `true` for a port are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str | None = Field(default=None, description="echoed in the response")


class StartChargingRequest(StartFields, CommandRequest):
    """0x82 start. `mode` full = until full; time needs `duration_s`; energy needs `energy_kwh`."""

    rate_mode: Literal["time", "monthly", "energy", "count"] | None = Field(
        default=None, description="billing model for the voice prompt; default follows mode"
    )
    balance_cents: BalanceCents = 0
    max_duration_s: U16Seconds | None = Field(default=None, description="0/absent: device value")


class StopChargingRequest(CommandRequest):
    """0x82 stop: the device stops only when `order_no` matches the running session."""

    port: PortNumber
    order_no: OrderNo


class AdjustChargingRequest(CommandRequest):
    """0x8A: switch a running session to a time or energy limit."""

    port: PortNumber
    mode: Literal["time", "time_full_stop", "energy"]
    duration_s: U16Seconds | None = None
    energy_kwh: Annotated[float, Field(ge=0, le=655.35)] | None = None


class QueryStatusRequest(CommandRequest):
    """0x81: the device answers by resending 0x20 and its heartbeats, not with a reply."""


class RebootRequest(CommandRequest):
    """0x87: the reply is best effort; a timeout may still mean the device rebooted."""


class SetLimitsRequest(CommandRequest):
    """0x85; the voltages (both or neither) need firmware from 2024-08 on."""

    max_duration_s: U16Seconds
    max_power_w: Annotated[float, Field(ge=0, le=6553.5)]
    over_voltage_v: Annotated[float, Field(ge=0, le=6553.5)] | None = None
    under_voltage_v: Annotated[float, Field(ge=0, le=6553.5)] | None = None


class SetParamsRequest(CommandRequest):
    """0x83 (first group) and/or 0x84 (second group); a group is sent only when complete.

    Power values of these frames have no documented unit and are passed through raw."""

    # 0x83 running parameters 1.1
    unplug_power: U16Raw | None = None
    unplug_detection_s: U16Seconds | None = None
    float_percent: Annotated[int, Field(ge=1, le=100)] | None = None
    float_detection_s: U16Seconds | None = None
    float_charge_s: U16Seconds | None = None
    heartbeat_interval_s: U16Seconds | None = None
    # 0x84 running parameters 1.2
    dynamic_overload_power: U16Raw | None = None
    dynamic_overload_detection_s: U16Seconds | None = None
    dynamic_overload_start_s: U16Seconds | None = None
    unplug_interference_power: Annotated[int, Field(ge=0, le=255)] | None = None
    unplug_interference_s: U16Seconds | None = None
    float_second_stage_point_s: U16Seconds | None = None
    float_second_stage_detection_s: U16Seconds | None = None
    minimum_power: U16Raw | None = None
    minimum_power_point_s: U16Seconds | None = None
    second_max_power_window_s: U16Seconds | None = None
    ambient_alarm_temperature_c: Annotated[int, Field(ge=0, le=255)] | None = None
    port_alarm_temperature_c: Annotated[int, Field(ge=0, le=255)] | None = None
    unplug_detection: bool | None = Field(default=None, description="opto-coupler detection on")
    qr_backlight: bool | None = Field(default=None, description="QR backlight on")


PARAMS_1_FIELDS = (
    "unplug_power",
    "unplug_detection_s",
    "float_percent",
    "float_detection_s",
    "float_charge_s",
    "heartbeat_interval_s",
)
PARAMS_2_FIELDS = tuple(
    name
    for name in SetParamsRequest.model_fields
    if name not in PARAMS_1_FIELDS and name != "request_id"
)


class LocateRequest(CommandRequest):
    """0x96: sound and light for `seconds`."""

    seconds: Annotated[int, Field(ge=1, le=255)]


class ReadParamsRequest(CommandRequest):
    """0x90-0x93."""

    which: Literal["params_1", "params_2", "limits", "card"]


class RawRequest(CommandRequest):
    """Any command code with raw data; the reply is decoded where the codec knows it."""

    command: Annotated[int, Field(ge=0, le=255)]
    data_hex: str = ""

    @field_validator("data_hex")
    @classmethod
    def _hex(cls, value: str) -> str:
        bytes.fromhex(value)  # ValueError names the field through pydantic
        return value


class AdjustPowerRequest(CommandRequest):
    """Change a running order's power limit: 0x85 overload power (0.1 W, per port; the
    reference has no per-order power command after the start). 0x85 is the device's setting,
    so it bounds every port of the charger, and it also carries the max charge time, which the
    gateway reads first (0x92) and sends back unchanged."""

    port: PortNumber
    order_no: OrderNo
    max_power_w: Annotated[float, Field(gt=0, le=2000)] = Field(
        description="watts; the device refuses more than its limit (2000 W dual/multi-port)"
    )


FIRMWARE_FILE_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class UpgradeFirmwareRequest(CommandRequest):
    """Firmware upgrade from an image in the gateway's `firmware_dir`: 0xE0 (with the check
    packet) or 0xF8 by the device type of its 0x20, 0xFA/0xF9 for hosts. The response comes
    when the transfer ended; `upgrade_progress` events report on the way."""

    file: Annotated[str, Field(pattern=FIRMWARE_FILE_RE)] = Field(
        description="a plain file name inside firmware_dir (no directories)"
    )
    target: Literal["device", "host", "extension"] = "device"
    version: Annotated[str, Field(pattern=r"^\d{1,3}\.\d{2}$")] | None = Field(
        default=None,
        description='firmware version the image installs, e.g. "2.16", for the 0xE0 check '
        "packet; default: the device's current version",
    )


class CardReplyRequest(CommandRequest):
    """Answer to a `card_swipe` event when `card_policy = authorize`."""

    card_id: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{8}$")]
    message_id: Annotated[int, Field(ge=0, le=0xFFFF)] | None = Field(
        default=None, description="the swipe event's message_id, to pick one of several swipes"
    )
    account_status: Annotated[int, Field(ge=0, le=255)] = Field(
        default=0, description="0 = OK; other codes make the device play a prompt (A.8)"
    )
    rate_mode: Literal["time", "monthly", "energy", "count"] = "time"
    balance_cents: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = Field(
        default=0, description="balance in fen, or for monthly mode the expiry as unix time"
    )


DEVICE_COMMAND_REQUESTS: dict[str, type[CommandRequest]] = {
    "start_charging": StartChargingRequest,
    "stop_charging": StopChargingRequest,
    "adjust_charging": AdjustChargingRequest,
    "query_status": QueryStatusRequest,
    "reboot": RebootRequest,
    "set_limits": SetLimitsRequest,
    "set_params": SetParamsRequest,
    "locate": LocateRequest,
    "read_params": ReadParamsRequest,
    "raw": RawRequest,
    "card_reply": CardReplyRequest,
    "adjust_power": AdjustPowerRequest,
    "upgrade_firmware": UpgradeFirmwareRequest,
}


class CommandResponse(BaseModel):
    """`{b}/devices/{device_id}/response/{command}`; decoded reply fields follow these keys.

    `result` is `ok`, a reason from the device's reply (e.g. `no_charger`), or one of
    `invalid`, `offline`, `timeout`, `busy`, `expired`, `shutdown`."""

    model_config = ConfigDict(extra="allow")

    request_id: str | None
    ok: bool
    code: int | None
    result: str
    message: str

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def response(
    request_id: str | None,
    ok: bool,
    result: str,
    message: str,
    code: int | None = None,
    **fields: Any,
) -> CommandResponse:
    """A response with the five fixed keys first; decoded reply fields follow as extras."""
    return CommandResponse(
        request_id=request_id, ok=ok, code=code, result=result, message=message, **fields
    )
