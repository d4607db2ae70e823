"""What the gateway publishes per device (API.md sections 3 and 4): the retained device and
port state, and the events on `{b}/devices/{device_id}/event/{port,order,device}`, one model
per event `type`, with a discriminated union per event topic for readers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from bridge.mqtt.payloads.common import MqttPayload

# --------------------------------------------------------------------------- retained state


class DeviceState(MqttPayload):
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


class PortState(MqttPayload):
    """`{b}/devices/{device_id}/ports/{port}`, retained; `port` is 1-based."""

    port: int
    status: str
    status_code: int
    power_w: float | None
    order_no: str | None
    updated_at: str


# --------------------------------------------------------------------------- events


class EventBase(MqttPayload):
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
