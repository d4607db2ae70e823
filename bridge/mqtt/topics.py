"""The only place where topic strings are built (API.md section 3).

Every publisher and subscriber builds or parses topics through `Topics`, and so do the
generated documents (`bridge.contract` uses `Topics("{base}")` with `{parameter}` placeholders),
so a rename is one edit and a typo is impossible.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_KINDS = ("port", "order", "device")


@dataclass(frozen=True, slots=True)
class DeviceRequestTopic:
    device_id: str
    command: str


@dataclass(frozen=True, slots=True)
class Topics:
    base: str = "chargebridge"

    # --- gateways (presence and counters, one pair per gateway process) ----
    def gateway_state(self, gateway_id: str) -> str:
        """Retained presence; the gateway's MQTT will sets it `offline`."""
        return f"{self.base}/gateways/{gateway_id}/state"

    def gateway_stats(self, gateway_id: str) -> str:
        return f"{self.base}/gateways/{gateway_id}/stats"

    @property
    def all_gateway_states(self) -> str:
        return f"{self.base}/gateways/+/state"

    @property
    def all_gateway_stats(self) -> str:
        return f"{self.base}/gateways/+/stats"

    def parse_gateway_topic(self, topic: str) -> tuple[str, str] | None:
        """`{b}/gateways/{id}/state|stats` -> (gateway_id, "state"|"stats"), or None."""
        prefix = f"{self.base}/gateways/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 2 or not parts[0] or parts[1] not in ("state", "stats"):
            return None
        return parts[0], parts[1]

    # --- devices ----------------------------------------------------------
    def device(self, device_id: str) -> str:
        return f"{self.base}/devices/{device_id}"

    def port(self, device_id: str, port: int | str) -> str:
        """`port` is 1-based, as on MQTT everywhere (a str only as a `{port}` placeholder)."""
        return f"{self.base}/devices/{device_id}/ports/{port}"

    def event(self, device_id: str, kind: str) -> str:
        assert kind in EVENT_KINDS, kind
        return f"{self.base}/devices/{device_id}/event/{kind}"

    def device_request(self, device_id: str, command: str) -> str:
        return f"{self.base}/devices/{device_id}/request/{command}"

    def device_response(self, device_id: str, command: str) -> str:
        return f"{self.base}/devices/{device_id}/response/{command}"

    @property
    def all_device_requests(self) -> str:
        return f"{self.base}/devices/+/request/+"

    @property
    def all_devices(self) -> str:
        return f"{self.base}/devices/+"

    @property
    def all_ports(self) -> str:
        return f"{self.base}/devices/+/ports/+"

    @property
    def all_port_events(self) -> str:
        return f"{self.base}/devices/+/event/port"

    @property
    def all_order_events(self) -> str:
        return f"{self.base}/devices/+/event/order"

    @property
    def all_device_events(self) -> str:
        return f"{self.base}/devices/+/event/device"

    @property
    def all_device_responses(self) -> str:
        return f"{self.base}/devices/+/response/+"

    def parse_device_request(self, topic: str) -> DeviceRequestTopic | None:
        """`{b}/devices/{id}/request/{command}` -> parts, or None for any other topic."""
        prefix = f"{self.base}/devices/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 3 or parts[1] != "request" or not parts[0] or not parts[2]:
            return None
        return DeviceRequestTopic(parts[0], parts[2])

    def parse_device_topic(self, topic: str) -> tuple[str, str] | None:
        """`{b}/devices/{id}/{rest...}` -> (device_id, rest), or None."""
        prefix = f"{self.base}/devices/"
        if not topic.startswith(prefix):
            return None
        device_id, _, rest = topic[len(prefix) :].partition("/")
        return (device_id, rest) if device_id else None

    # --- charging service -------------------------------------------------
    def session(self, session_id: str) -> str:
        return f"{self.base}/sessions/{session_id}"

    @property
    def all_sessions(self) -> str:
        return f"{self.base}/sessions/+"

    @property
    def charging_stats(self) -> str:
        return f"{self.base}/charging/stats"

    @property
    def charging_state(self) -> str:
        """Retained presence of the charging service as a whole: `online` with the live
        instances, `offline` by the will of the last one (docs/scaling.md)."""
        return f"{self.base}/charging/state"

    def charging_instance(self, instance_id: str) -> str:
        """Retained presence of one service instance; its own will sets it `offline`."""
        return f"{self.base}/charging/instances/{instance_id}"

    @property
    def all_charging_instances(self) -> str:
        return f"{self.base}/charging/instances/+"

    def parse_charging_instance(self, topic: str) -> str | None:
        prefix = f"{self.base}/charging/instances/"
        rest = topic[len(prefix) :] if topic.startswith(prefix) else ""
        return rest if rest and "/" not in rest else None

    @property
    def webhook_stats(self) -> str:
        """The webhook unit's counters (retained), beside the service's statistics."""
        return f"{self.base}/charging/webhooks/stats"

    def charging_request(self, action: str) -> str:
        return f"{self.base}/charging/request/{action}"

    def charging_response(self, action: str) -> str:
        return f"{self.base}/charging/response/{action}"

    def adoption_probe(self, token: str) -> str:
        """A topic of the service's own: once its probe comes back, the broker has delivered
        every retained message subscribed before it. Two levels below `response/`, so
        subscribers of `charging/response/+` never see it."""
        return f"{self.base}/charging/response/adopt/{token}"

    @property
    def all_charging_requests(self) -> str:
        return f"{self.base}/charging/request/+"

    def parse_charging_request(self, topic: str) -> str | None:
        prefix = f"{self.base}/charging/request/"
        return topic[len(prefix) :] if topic.startswith(prefix) else None

    # --- MQTT v5 response topics ---------------------------------------------
    @property
    def replies(self) -> str:
        """Where requesters may ask for v5 responses inside the base topic."""
        return f"{self.base}/replies/"

    def allowed_response_topic(self, topic: str) -> bool:
        """A requester's v5 `response_topic` the bridge may publish to: not a wildcard, and
        outside the base topic or under `{b}/replies/`. The bridge user may write all of
        `{b}/#`, so honouring any topic there would let a client that may only send
        requests make the bridge overwrite sessions, device state or events for it."""
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            return False
        return not topic.startswith(f"{self.base}/") or topic.startswith(self.replies)

    def parse_session(self, topic: str) -> str | None:
        prefix = f"{self.base}/sessions/"
        rest = topic[len(prefix) :] if topic.startswith(prefix) else ""
        return rest if rest and "/" not in rest else None

    # --- bridge requests (capture) ----------------------------------------
    def bridge_request(self, name: str) -> str:
        return f"{self.base}/bridge/request/{name}"

    def bridge_response(self, name: str) -> str:
        return f"{self.base}/bridge/response/{name}"

    def capture_stream(self, capture_id: str) -> str:
        """Frames of one running capture (`chargebridge capture`), not retained."""
        return f"{self.base}/bridge/capture/{capture_id}"


@dataclass(frozen=True, slots=True)
class DiscoveryTopics:
    """Home Assistant MQTT discovery: `{prefix}/{component}/{node_id}/{object_id}/config`.

    `node_id` is the base topic made safe for one topic level, so that several bridges can
    share one Home Assistant; `prefix/status` is Home Assistant's birth message."""

    prefix: str = "homeassistant"
    node_id: str = "chargebridge"

    def config(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node_id}/{object_id}/config"

    @property
    def all_configs(self) -> str:
        return f"{self.prefix}/+/{self.node_id}/+/config"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def parse_config(self, topic: str) -> tuple[str, str] | None:
        """`{prefix}/{component}/{node_id}/{object_id}/config` -> (component, object_id)."""
        parts = topic.split("/")
        head = self.prefix.split("/")
        if parts[: len(head)] != head or len(parts) != len(head) + 4:
            return None
        component, node, object_id, last = parts[len(head) :]
        return (component, object_id) if node == self.node_id and last == "config" else None
