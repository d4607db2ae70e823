"""What the gateway publishes per device (API.md sections 3 and 4): the retained device and
port state, and the events on `{b}/devices/{device_id}/event/{port,order,device}`, one model
per event `type`, with a discriminated union per event topic for readers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
    gateway_id: str = Field(description="the gateway holding (or that last held) the charger")
    connected_at: str | None = Field(
        default=None,
        description="when the charger's current connection to that gateway began (its first "
        "frame there); with several gateways the newest connection holds the charger",
    )
    device_type: str | None = Field(
        default=None, description="0x20 device type name (A.2), e.g. new_485_dual_mode"
    )
    device_type_code: int | None = None
    host_type: str | None = Field(default=None, description="0x11 host type name (A.3)")
    host_type_code: int | None = None


class PortState(MqttPayload):
    """`{b}/devices/{device_id}/ports/{port}`, retained; `port` is 1-based."""

    port: int
    status: str
    status_code: int
    power_w: float | None
    order_no: str | None
    updated_at: str
    energy_kwh: float | None = Field(default=None, description="order total, from 0x06")
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None
    port_temperature_c: float | None = None
    measured_at: str | None = Field(
        default=None, description="when the measurements above were reported (0x06 or 0x01)"
    )


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
    reason: Literal["closed", "idle", "shutdown", "rate_limited"]


class SecurityEvent(EventBase):
    """A frame, connection or report refused for the device's safety (v1.1).

    From the gateway (`source: gateway`): at most one per device and `reason` every
    `security_event_interval_s`; `frames` counts the refusals it stands for, and
    `command`/`message_id` are those of the frame that triggered it. From the charging service
    (`source: charging_service`, reason `foreign_order`): a report naming the order of a
    session on another device or port, published on the *reporting* device; the `order_no`,
    `port`, `report` and `session_*` fields say which."""

    type: Literal["security"] = "security"
    reason: str = Field(
        description="pin_mismatch (ICCID differs from the pinned one, or none over TCP), "
        "not_allowed (not on device_allowlist), rate_limited (over frame_rate_limit), "
        "foreign_order (a report naming another device's or port's session)"
    )
    source: Literal["gateway", "charging_service"] = "gateway"
    peer: str | None = Field(
        default=None, description="the connection the frames came on, e.g. tcp:10.0.0.5:40312"
    )
    iccid: str | None = Field(default=None, description="the ICCID that connection sent, if any")
    frames: int | None = Field(
        default=None, description="frames refused for this reason since the previous event"
    )
    action: Literal["dropped", "closed"] | None = Field(
        default=None,
        description="dropped: the frames were ignored; closed: the connection was closed too",
    )
    order_no: str | None = Field(default=None, description="foreign_order: the order named")
    port: int | None = Field(default=None, description="foreign_order: the port reported")
    report: str | None = Field(
        default=None, description="foreign_order: the refused event's type (power, settled, ...)"
    )
    session_device_id: str | None = Field(
        default=None, description="foreign_order: the device that holds the session"
    )
    session_port: int | None = Field(default=None, description="foreign_order: the session's port")


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


class UpgradeRequestEvent(EventBase):
    """From 0x05 (device), 0x15 (old 485 host) or an 0xFA request from a host: the device asks
    for firmware; a running upgrade of it restarts at packet 1."""

    type: Literal["upgrade_request"] = "upgrade_request"
    device_type: str | None = None
    device_type_code: int | None = None
    firmware: str | None = Field(default=None, description="installed version (2024 layout)")
    package_type: int | None = None
    data_hex: str = Field(default="", description="the undocumented data of older forms")


class HostStatusEvent(EventBase):
    """From 0x17 (hosts, every 30 min). Bicycle-pile hosts fill the fields up to
    `smoke_alarm` only."""

    type: Literal["host_status"] = "host_status"
    breaker_closed: bool
    temperature_c: float | None
    voltage_v: float
    current_a: float
    energy_kwh: float
    meter_current_a: float
    meter_energy_kwh: float
    smoke_alarm: bool
    alarm_relay: bool
    leakage_current_ma: int
    live_temperature_c: float | None
    neutral_temperature_c: float | None
    breaker_locked: bool
    breaker_model: int


class ExtensionVersion(BaseModel):
    extension_type: str
    extension_type_code: int
    lowest_firmware: str
    device_id: str = Field(description="the extension that has the lowest version")


class ExtensionVersionsEvent(EventBase):
    """From 0x35: per extension type, the lowest firmware among the host's extensions."""

    type: Literal["extension_versions"] = "extension_versions"
    extensions: list[ExtensionVersion]


class CabinetHeartbeatEvent(EventBase):
    """From 0x41 (cabinets): 1-based ports whose door is open and whose fan runs (bit i of the
    little-endian bitmaps = wire port i; the vendor does not state the bit order)."""

    type: Literal["cabinet_heartbeat"] = "cabinet_heartbeat"
    port_count: int
    doors_open: list[int]
    fans_on: list[int]


class ChargeFinishedEvent(EventBase):
    """From 0x43 (cabinets): charging ended, not settled; the settlement (0x03) follows."""

    type: Literal["charge_finished"] = "charge_finished"
    port: int
    order_no: str
    duration_s: int
    max_power_w: float
    energy_kwh: float
    start_mode: str
    start_mode_code: int
    card_id: str
    stop_reason: str
    stop_reason_code: int


class PortPushEvent(EventBase):
    """From 0x44 (cabinets), e.g. `door_not_closed`."""

    type: Literal["port_push"] = "port_push"
    port: int
    push: str
    push_code: int
    order_no: str


class FskParamsEvent(EventBase):
    """From 0x3B: the host asked for its FSK parameters and was sent a 0x3A with these."""

    type: Literal["fsk_params"] = "fsk_params"
    frequency_mhz: int
    extension_ids: list[str]


class FrameEvent(EventBase):
    """A documented frame with no event of its own (0x00, 0x09 and 0x0A never reach a server
    in the reference; a host's 0x3A result answers our 0x3A): its decoded fields."""

    type: Literal["frame"] = "frame"
    command_name: str
    fields: dict[str, Any]


class PowerLimitEvent(EventBase):
    """The gateway changed a port's power limit (0x85): `power_limited` when the site cap
    (`site_power_limit_w`) lowered it, `power_restored` when it was raised again."""

    type: Literal["power_limited", "power_restored"]
    port: int | None = Field(description="null: the 0x85 limit applies to every port")
    limit_w: float
    site_power_w: float = Field(description="live power of all ports of this gateway")
    site_power_limit_w: float


class UpgradeProgressEvent(EventBase):
    """`upgrade_firmware` progress: after every acknowledged packet (at most one event per
    percent) and at the end (`state` done or failed)."""

    type: Literal["upgrade_progress"] = "upgrade_progress"
    file: str
    target: str
    upgrade_command: int
    state: Literal["running", "waiting", "done", "failed"]
    percent: int
    packet: int
    total: int
    reason: str | None = None


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
    | UpgradeRequestEvent
    | HostStatusEvent
    | ExtensionVersionsEvent
    | CabinetHeartbeatEvent
    | ChargeFinishedEvent
    | PortPushEvent
    | FskParamsEvent
    | FrameEvent
    | PowerLimitEvent
    | UpgradeProgressEvent
    | SecurityEvent
    | UnknownEvent,
    Field(discriminator="type"),
]
port_event_adapter: TypeAdapter[PortEvent] = TypeAdapter(PortEvent)
order_event_adapter: TypeAdapter[OrderEvent] = TypeAdapter(OrderEvent)
device_event_adapter: TypeAdapter[DeviceEvent] = TypeAdapter(DeviceEvent)
