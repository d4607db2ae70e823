"""The charging service's presence: `{b}/charging/instances/{id}` and `{b}/charging/state`.

An MQTT connection has one will, and a service instance needs two: one saying that *it* is
gone, one saying that the *service* is gone in case it was the last instance. So the unit
keeps two small connections of its own (clean sessions, apart from the service's persistent
one, which it does not touch):

- the *instance* connection: will `{b}/charging/instances/{id}` = offline. Once connected it
  publishes that topic `online` (retained), subscribes to every instance's topic and to
  `{b}/charging/state`, and keeps the aggregate right: whenever what the broker retains
  there differs from `online` with the live instances it knows (itself always among them),
  it publishes its own view. Every live instance does so, so when one dies (its will marks
  only itself offline) the survivors put the aggregate right at once;
- the *last-will* connection: will `{b}/charging/state` = offline, nothing else. It connects
  first: while an instance is shown online there is always a will to take it back. When one
  of several instances dies, this will says `offline` for the moment until a survivor (which
  reacts to that very message) publishes `online` again; when the last one dies, it stays.

A stopping instance does what its wills would do (instance offline, then `charging/state`
offline) and leaves the correction to the survivors, so that two instances stopping at once
cannot leave `online` behind. docs/scaling.md describes the design.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from pydantic import ValidationError

from bridge.config import CommonSettings
from bridge.mqtt.client import MqttClient, Will, payload_bytes
from bridge.mqtt.payloads import ChargingInstanceState, ChargingState, MqttPayload, iso_utc
from bridge.mqtt.topics import Topics

log = logging.getLogger("chargebridge.charging")

P = TypeVar("P", bound=MqttPayload)


def instance_id(settings: CommonSettings) -> str:
    """This instance's id: `--instance-id` where the settings have it (several instances on
    one base topic), else the `gateway_id` option (the host name by default), which also
    names the service's MQTT client id."""
    return str(getattr(settings, "instance_id", "") or settings.gateway_id)


class ServicePresence:
    """`run()` until cancelled; on the way out it marks this instance (and, for a moment or
    for good, the service) offline."""

    def __init__(self, settings: CommonSettings, instance: str) -> None:
        self.topics = t = Topics(settings.base_topic)
        self.instance_id = instance
        self.others: set[str] = set()  # other instances whose retained presence is online
        self.seen: ChargingState | None = None  # what `charging/state` holds, as far as known
        self.up = False
        offline = ChargingInstanceState(state="offline", instance_id=instance)
        self.client = MqttClient(
            settings.mqtt_settings(
                client_id=f"chargebridge-presence-{instance}",
                clean_start=True,
                will=Will(topic=t.charging_instance(instance), payload=offline.to_json()),
            ),
            subscriptions=[(t.all_charging_instances, 1), (t.charging_state, 1)],
            on_connect=self._online,
        )
        self.last_will = MqttClient(
            settings.mqtt_settings(
                client_id=f"chargebridge-presence-{instance}-last",
                clean_start=True,
                will=Will(topic=t.charging_state, payload=ChargingState(state="offline").to_json()),
            )
        )

    @property
    def live(self) -> list[str]:
        return sorted({*self.others, self.instance_id} if self.up else self.others)

    async def run(self) -> None:
        async with self.last_will:
            await self.last_will.wait_connected()
            async with self.client:
                try:
                    async for message in self.client.messages:
                        self.handle(str(message.topic), payload_bytes(message))
                finally:
                    self.stop()  # submitted before the client's close flushes

    async def _online(self) -> None:
        """After every (re)connection of the instance connection (its will may have fired)."""
        self.up = True
        presence = ChargingInstanceState(
            state="online", instance_id=self.instance_id, since=iso_utc()
        )
        self._submit(self.topics.charging_instance(self.instance_id), presence)
        self.reconcile()
        log.info("charging service instance online", extra={"instance_id": self.instance_id})

    def handle(self, topic: str, payload: bytes) -> None:
        """A retained presence came in (or changed): update the view, then the aggregate."""
        if topic == self.topics.charging_state:
            self.seen = _parse(ChargingState, payload)
        elif (other := self.topics.parse_charging_instance(topic)) is not None:
            if other == self.instance_id:
                return  # our own state we know better than an old retained copy
            presence = _parse(ChargingInstanceState, payload)
            if presence is not None and presence.state == "online":
                self.others.add(other)
            else:
                self.others.discard(other)
        else:
            return
        self.reconcile()

    def desired(self) -> ChargingState:
        live = self.live
        return ChargingState(state="online" if live else "offline", instances=live)

    def reconcile(self) -> None:
        """Publish the aggregate if what the broker holds is not what we know."""
        if not self.up:
            return
        desired = self.desired()
        if self.seen != desired:
            self._submit(self.topics.charging_state, desired)
            self.seen = desired  # until the broker tells otherwise

    def stop(self) -> None:
        """What the wills would say: this instance offline, then the service offline; the
        survivors (they receive both) publish `online` with themselves again."""
        if not self.up:
            return
        self.up = False
        offline = ChargingInstanceState(state="offline", instance_id=self.instance_id)
        self._submit(self.topics.charging_instance(self.instance_id), offline)
        self._submit(self.topics.charging_state, ChargingState(state="offline"))
        log.info("charging service instance offline", extra={"instance_id": self.instance_id})

    def _submit(self, topic: str, payload: MqttPayload) -> None:
        fut = self.client.submit(topic, payload.to_json(), retain=True)
        fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())


def _parse(model: type[P], payload: bytes) -> P | None:
    """A presence payload, or None for an empty (cleared) or malformed one."""
    if not payload:
        return None
    try:
        return model.model_validate_json(payload)
    except ValidationError:
        log.warning("ignored a malformed presence message", extra={"model": model.__name__})
        return None
