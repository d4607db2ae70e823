"""Publishing: events, retained device/port states and the gateway's presence, all through one
`Publisher`.

Everything the gateway tells MQTT goes through here, so what is retained and what is an event
is decided in one place. A publish is fire-and-forget except the settlement (see `flows`),
whose future decides the device's acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal, Protocol

from bridge.gateway.registry import Device, PortRecord, Registry
from bridge.mqtt.client import MessageDropped
from bridge.mqtt.payloads import EventBase, GatewayState, Payload, PortState, iso_utc
from bridge.mqtt.payloads.fast import FastJson
from bridge.mqtt.topics import Topics

log = logging.getLogger(__name__)

CHARGING_CODES = (1, 5)  # charging, float charging: same codes in 0x01/0x21 and 0x06
MEASUREMENTS = (
    "energy_kwh",
    "voltage_v",
    "current_a",
    "temperature_c",
    "port_temperature_c",
    "measured_at",
)
_MEASURED = tuple((name, PortRecord._fields.index(name)) for name in MEASUREMENTS)
_FIRST_MEASURED = len(PortRecord._fields) - len(MEASUREMENTS)
assert PortRecord._fields[_FIRST_MEASURED:] == MEASUREMENTS  # the record's last fields
# Retained port states are published for every 0x06 and every changed heartbeat: their text is
# made from the record without a model, byte for byte what `PortState` would write.
PORT_STATE = FastJson(PortState)


class Publisher(Protocol):
    """What the gateway needs from `bridge.mqtt.client.MqttClient`."""

    def submit(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Any = None,
        critical: bool = False,
        key: str | None = None,
    ) -> asyncio.Future[None]: ...

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...

    def send_queued(self) -> None: ...

    @property
    def dropped(self) -> int: ...


class Publishing:
    """Turns gateway facts into MQTT messages; remembers the gateway state's submit, the
    last message at exit, to flush."""

    def __init__(self, mqtt: Publisher, topics: Topics, gateway_id: str) -> None:
        self.mqtt = mqtt
        self.topics = topics
        self.gateway_id = gateway_id
        self._last: asyncio.Future[None] | None = None

    def submit(self, topic: str, payload: Payload, *, retain: bool = False) -> None:
        self.submit_json(topic, payload.to_json(), retain=retain)

    def submit_json(self, topic: str, data: bytes, *, retain: bool = False) -> None:
        """`data`: a payload's JSON text (`MqttPayload.to_json()` or `FastJson`). Posted:
        nobody waits for it, so no future per message (`MqttClient.post`: a refusal is
        logged there, a drop counted)."""
        self.mqtt.post(topic, data, retain=retain)

    def event(self, dev: Device, kind: str, event: EventBase | bytes) -> None:
        """`event`: the model, or its JSON text already made."""
        data = event if isinstance(event, bytes) else event.to_json()
        self.submit_json(self.topics.event(dev.device_id, kind), data)

    def critical_event(
        self, dev: Device, kind: str, event: EventBase, key: str
    ) -> asyncio.Future[None]:
        """An event never dropped from the outbox and published once per `key`; the caller
        acts on the returned future (the broker's acknowledgement)."""
        return self.mqtt.submit(
            self.topics.event(dev.device_id, kind), event.to_json(), qos=1, critical=True, key=key
        )

    def device_state(self, dev: Device) -> None:
        data = dev.state_json(self.gateway_id)
        self.submit_json(self.topics.device(dev.device_id), data, retain=True)

    def port_state(self, dev: Device, state: PortRecord) -> None:
        """Publish a port state when it changed. Heartbeats carry no order number (0x21 no
        power either): while the port keeps charging, the values from 0x06 stay. The latest
        measurements (energy, voltage, current, temperatures, `measured_at`) stay whatever the
        status, so a late subscriber sees them at once; `measured_at` tells their age."""
        old = dev.ports.get(state.port)
        if old is not None:
            state = _kept(old, state)
            if old.same_as(state):
                return
        data = PORT_STATE.text(state)
        if data is None:
            # an unusual value: validated (a bad one raises, as the model always did) and
            # coerced by the model, then compared again
            model = PortState(**state._asdict())
            state, data = PortRecord.of(model), model.to_json()
            if old is not None and old.same_as(state):
                return
        dev.ports[state.port] = state
        self.submit_json(self.topics.port(dev.device_id, state.port), data, retain=True)

    def gateway_state(self, state: Literal["online", "offline"]) -> None:
        """This gateway's presence, `{b}/gateways/{gateway_id}/state` (the will's topic)."""
        since = iso_utc() if state == "online" else None
        presence = GatewayState(state=state, gateway_id=self.gateway_id, since=since)
        fut = self.mqtt.submit(
            self.topics.gateway_state(self.gateway_id), presence.to_json(), qos=1, retain=True
        )
        fut.add_done_callback(log_failure)
        self._last = fut  # `flush`: the last message at exit

    def republish(self, registry: Registry) -> None:
        """After every (re)connection: the will may have replaced our `online`, and a broker
        that lost its store lost our retained states too, so they are published again.
        The MQTT client runs this after its subscriptions are in place, so `online` also
        says that requests are being received."""
        self.gateway_state("online")
        for dev in registry.devices.values():
            self.device_state(dev)
            for record in dev.ports.values():
                self.submit(
                    self.topics.port(dev.device_id, record.port), record.model(), retain=True
                )

    async def flush(self, timeout_s: float) -> None:
        """Wait until the broker has the last gateway state submitted, at exit the last
        message (messages go out in order), or give up and say so."""
        last = self._last
        if last is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(last)
        except (TimeoutError, Exception):
            log.warning("could not flush all messages to the broker before exit")


def _kept(old: PortRecord, new: PortRecord) -> PortRecord:
    """`new` with what it does not report taken from `old` (see `Publishing.port_state`)."""
    keep: dict[str, Any] = (
        {name: old[i] for name, i in _MEASURED if new[i] is None and old[i] is not None}
        if None in new[_FIRST_MEASURED:]
        else {}  # a 0x06 reports them all
    )
    if new.status_code in CHARGING_CODES:
        if new.power_w is None:
            keep["power_w"] = old.power_w
            keep.setdefault("measured_at", old.measured_at)
        if new.order_no is None:
            keep["order_no"] = old.order_no
    return new._replace(**keep) if keep else new


def log_failure(fut: asyncio.Future[None]) -> None:
    """Dropped messages are counted (`events_dropped`), not logged one by one."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None and not isinstance(exc, MessageDropped):
        log.warning("publish failed", extra={"error": repr(exc)})
