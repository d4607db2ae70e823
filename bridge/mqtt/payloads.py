"""Every MQTT payload shape, one pydantic model per topic kind (API.md sections 3-5).

This is the one place payload shapes are defined: the gateway builds its messages from these
models, the charging service parses events with them, and `bridge.mqtt.schema` renders them
into docs/gateway.md. Units follow API.md section 2: SI floats (`voltage_v`, `power_w`,
`energy_kwh`, `current_a`), 1-based ports, `device_id` as 8 upper-case hex digits, order numbers
as 32 upper-case hex digits, timestamps as ISO 8601 UTC with milliseconds and `Z`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

DEVICE_ID_RE = re.compile(r"^[0-9A-F]{8}$")
ORDER_NO_RE = r"^[0-9A-Fa-f]{32}$"


def iso_utc(t: float | datetime | None = None) -> str:
    """Unix seconds (or an aware datetime, or now) -> `2026-01-02T03:04:05.678Z`."""
    if t is None:
        dt = datetime.now(UTC)
    elif isinstance(t, datetime):
        dt = t.astimezone(UTC)
    else:
        dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Payload(BaseModel):
    """Base of every outgoing payload: compact JSON, keys exactly as declared."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# --------------------------------------------------------------------------- bridge topics


class BridgeState(Payload):
    """`{b}/bridge/state`, retained; the MQTT will publishes `offline`."""

    state: Literal["online", "offline"]


class BridgeStats(Payload):
    """`{b}/bridge/stats`, retained: gateway counters since start."""

    connections: int = Field(description="open device connections (TCP and serial)")
    devices_online: int
    frames_in: int = Field(description="valid frames received, resends included")
    frames_out: int
    bytes_in: int
    bytes_out: int
    decode_errors: int = Field(description="bad frames and payloads too short for their command")
    checksum_errors: int
    commands_sent: int = Field(description="device commands sent (a resend counts again)")
    command_timeouts: int
    duplicates: int = Field(description="upstream resends answered but not published again")
    garbage_bytes: int = Field(description="bytes between frames that were neither ICCID nor link")
    connections_dropped: int = Field(
        description="connections closed because their write buffer overflowed or per-IP limit"
    )
    connections_refused_per_ip: int = Field(
        description="connections refused at once because `max_connections_per_ip` were open"
    )
    device_limit_frames: int = Field(
        description="frames ignored because they came from a new physical id while "
        "`max_devices` devices were online"
    )
    commands_rate_limited: int = Field(
        description="device command requests answered `rate_limited` (`max_commands_per_minute`)"
    )
    events_dropped: int = Field(
        description="outgoing messages dropped unpublished because the outbox held "
        "`max_queued_messages` (settlements are never dropped)"
    )
    uptime_s: int
    updated_at: str


# --------------------------------------------------------------------------- retained state


class DeviceState(Payload):
    """`{b}/devices/{device_id}`, retained."""

    device_id: str
    device_number: int = Field(description="low 3 bytes of the physical id, printed on the QR")
    device_kind: str
    online: bool
    iccid: str | None = Field(description="SIM ICCID sent by the module when it connected")
    firmware: str | None = Field(description='firmware version, e.g. "1.26"')
    port_count: int | None
    voltage_v: float | None
    signal: int | None
    temperature_c: float | None
    last_seen: str | None
    gateway_id: str


class PortState(Payload):
    """`{b}/devices/{device_id}/ports/{port}`, retained; `port` is 1-based."""

    port: int
    status: str
    status_code: int
    power_w: float | None
    order_no: str | None
    updated_at: str


# --------------------------------------------------------------------------- events


class EventBase(Payload):
    """Fields every event carries. `command`/`message_id` are those of the device frame that
    caused the event (null for `offline`, which no frame causes)."""

    ts: str
    device_id: str
    gateway_id: str
    command: int | None
    message_id: int | None


class PortStatusEvent(EventBase):
    type: Literal["status"] = "status"
    port: int
    status: str
    status_code: int


class PortPowerEvent(EventBase):
    """From 0x06, every 5 min per charging port."""

    type: Literal["power"] = "power"
    port: int
    status: str
    status_code: int
    order_no: str
    duration_s: int
    energy_kwh: float = Field(description="order total so far")
    power_w: float
    max_power_w: float = Field(description="highest power since the previous report")
    min_power_w: float
    avg_power_w: float
    peak_power_w: float | None = Field(description="highest power over the whole session")
    voltage_v: float | None
    current_a: float | None
    temperature_c: float | None
    port_temperature_c: float | None
    start_mode: str = Field(description="offline, online or code")
    start_mode_code: int


class OrderResultEvent(EventBase):
    """From the device's reply to 0x82. Results 0, 3 and 9 count as executed."""

    type: Literal["started", "stopped", "start_failed", "stop_failed"]
    port: int | None
    order_no: str | None
    result: str
    result_code: int
    reason: str | None = Field(description="readable reason for failures")
    waiting_ports: list[int] | None = Field(
        default=None, description="1-based ports with a charger waiting (result 5)"
    )


class OrderConfirmedEvent(EventBase):
    """From 0x04 (legacy devices only)."""

    type: Literal["confirmed"] = "confirmed"
    port: int
    order_no: str
    start_mode: str
    start_mode_code: int
    card_id: str
    duration_s: int


class OrderSettledEvent(EventBase):
    """From 0x03; the device is answered only after the broker acknowledged this event."""

    type: Literal["settled"] = "settled"
    port: int
    order_no: str
    duration_s: int
    max_power_w: float
    energy_kwh: float
    start_mode: str
    start_mode_code: int
    card_id: str = Field(description="8 hex digits; all zeros for online starts")
    stop_reason: str
    stop_reason_code: int
    second_max_power_w: float | None = None
    device_time: str | None = Field(default=None, description="device clock; debugging only")
    occupied_minutes: int | None = None


class CardSwipeEvent(EventBase):
    """From 0x02. With `card_policy = authorize` the device waits for a `card_reply` request."""

    type: Literal["card_swipe"] = "card_swipe"
    port: int | Literal["balance_query"]
    card_id: str = Field(description="the 4 UID bytes as 8 hex digits")
    card_number: int = Field(description="the UID read big-endian, as printed on vendor cards")
    card_type: str
    card_type_code: int
    balance_cents: int
    awaiting_reply: bool = Field(description="true when a card_reply request is expected")


class DeviceOnlineEvent(EventBase):
    type: Literal["online"] = "online"
    peer: str = Field(description="link the device is reachable on, e.g. tcp:10.0.0.5:40312")
    iccid: str | None


class DeviceOfflineEvent(EventBase):
    type: Literal["offline"] = "offline"
    reason: Literal["closed", "idle", "shutdown"]


class RegisterEvent(EventBase):
    """From 0x20."""

    type: Literal["register"] = "register"
    firmware: str
    port_count: int
    virtual_id: int
    device_type: int
    work_mode: int | None
    power_board_firmware: str | None


class HeartbeatPort(BaseModel):
    port: int
    status: str
    status_code: int
    power_w: float | None = None
    peak_power_w: float | None = None


class HeartbeatEvent(EventBase):
    """From 0x21, 0x01 (with powers) or 0x11 (host: module fields, no ports)."""

    type: Literal["heartbeat"] = "heartbeat"
    firmware: str | None = None
    voltage_v: float | None = None
    port_count: int | None = None
    ports: list[HeartbeatPort] = Field(default_factory=list)
    signal: int | None = None
    temperature_c: float | None = None
    iccid: str | None = None
    imei: str | None = None
    module_type: int | None = None
    host_time: str | None = None


class TimeSyncEvent(EventBase):
    """From 0x12/0x22; `unix_time` is what the gateway answered."""

    type: Literal["time_sync"] = "time_sync"
    unix_time: int


class AlarmEvent(EventBase):
    """From 0x42."""

    type: Literal["alarm"] = "alarm"
    alarm: str
    alarm_code: int
    port: int | None = Field(description="1-based port for port alarms, else null")
    sensor_address: int
    inputs: int


class UnknownEvent(EventBase):
    """A valid frame whose command has no decoder, or whose data is too short for it."""

    type: Literal["unknown"] = "unknown"
    command_name: str
    data_hex: str
    error: str | None = None


PortEvent = Annotated[PortStatusEvent | PortPowerEvent, Field(discriminator="type")]
OrderEvent = Annotated[
    OrderResultEvent | OrderConfirmedEvent | OrderSettledEvent | CardSwipeEvent,
    Field(discriminator="type"),
]
DeviceEvent = Annotated[
    DeviceOnlineEvent
    | DeviceOfflineEvent
    | RegisterEvent
    | HeartbeatEvent
    | TimeSyncEvent
    | AlarmEvent
    | UnknownEvent,
    Field(discriminator="type"),
]
port_event_adapter: TypeAdapter[PortEvent] = TypeAdapter(PortEvent)
order_event_adapter: TypeAdapter[OrderEvent] = TypeAdapter(OrderEvent)
device_event_adapter: TypeAdapter[DeviceEvent] = TypeAdapter(DeviceEvent)

# --------------------------------------------------------------------------- commands

PortNumber = Annotated[int, Field(ge=1, le=254, description="1-based port")]
OrderNo = Annotated[str, Field(pattern=ORDER_NO_RE, description="32 hex digits")]
U16Seconds = Annotated[int, Field(ge=0, le=0xFFFF)]
U16Raw = Annotated[int, Field(ge=0, le=0xFFFF)]


# Requests are small JSON objects (the largest, a `raw` frame of 1024 data bytes in hex, is
# about 2 KB); anything bigger is refused unread, so a client cannot make us parse megabytes.
MAX_REQUEST_BYTES = 16384


def oversized(payload: bytes) -> str | None:
    """Why a request payload is refused for its size, or None."""
    if len(payload) <= MAX_REQUEST_BYTES:
        return None
    return f"payload of {len(payload)} bytes; requests are limited to {MAX_REQUEST_BYTES} bytes"


class CommandRequest(BaseModel):
    """Base of `{b}/devices/{device_id}/request/{command}` payloads. Validated strictly from
    JSON: unknown keys, `"2"` for a number or `true` for a port are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str | None = Field(default=None, description="echoed in the response")


class StartChargingRequest(CommandRequest):
    """0x82 start. `mode` full = until full; time needs `duration_s`; energy needs `energy_kwh`."""

    port: PortNumber | Literal["auto"]
    order_no: OrderNo | None = Field(default=None, description="generated when absent")
    mode: Literal["full", "time", "energy"]
    duration_s: Annotated[int, Field(ge=1, le=0xFFFF)] | None = None
    energy_kwh: Annotated[float, Field(gt=0, le=655.35)] | None = None
    rate_mode: Literal["time", "monthly", "energy", "count"] | None = Field(
        default=None, description="billing model for the voice prompt; default follows mode"
    )
    balance_cents: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 0
    max_duration_s: U16Seconds | None = Field(default=None, description="0/absent: device value")
    max_power_w: Annotated[float, Field(ge=0, le=6553.5)] | None = None


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
}

CommandResult = Literal[
    "ok", "failed", "invalid", "offline", "timeout", "busy", "expired", "shutdown"
]


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
    return CommandResponse(
        request_id=request_id, ok=ok, code=code, result=result, message=message, **fields
    )
