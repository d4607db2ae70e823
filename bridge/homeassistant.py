"""Home Assistant MQTT discovery (opt-in `--homeassistant`), a self-contained unit.

It reads only what any MQTT client can read, the retained device and port states of API.md
section 3, and publishes retained discovery configs under `--homeassistant-prefix`:

- each charger is a Home Assistant device (identifier `chargebridge_{device_id}`) with a
  connectivity binary sensor, voltage / temperature / signal sensors, reboot and locate
  buttons, and two diagnostic sensors with the last results: "Last command" (the `result` of
  any device command response, `{b}/devices/{id}/response/+`, the whole response as
  attributes) and "Last charging request" (the charging service's responses,
  `{b}/charging/response/+`, to this charger's buttons, recognised by their request id
  `homeassistant:{device_id}:{port}:{action}`; other responses keep the state);
- each port is a device of its own linked to the charger with `via_device`, with status
  (enum), power, session energy, voltage, current and temperature sensors and Start charging
  (mode `full`, the service's defaults) and Stop charging buttons. Home Assistant resolves
  `via_device` only when it creates a device, so a port's configs are sent only after its
  charger's (a port state arriving first waits), also when everything is announced again;
- availability is the presence of the gateway holding the charger,
  `{b}/gateways/{gateway_id}/state` with the `gateway_id` of the charger's retained state (this
  unit's own gateway until one is known), AND the device's `online` flag
  (`availability_mode: all`), except for the connectivity sensor, which must stay available to
  show `off`. When the charger moves to another gateway its configs are sent again naming the
  new one. What goes through the charging service (Start/Stop charging, Last charging request)
  also needs `{b}/charging/state` online: without a live service those buttons do nothing;
- every template is guarded with `value_json is defined`: clearing a retained state (how a
  device is forgotten) makes Home Assistant render it once with no JSON before the entity
  is removed;
- `unique_id`s derive from the base topic, the device id and the port, so they are stable
  across restarts and across gateways;
- a device is *forgotten* when its retained state `{b}/devices/{id}` is cleared (an empty
  retained message, e.g. `mosquitto_pub -r -n -t chargebridge/devices/04AB373B`): all its
  entities are removed with empty retained configs; clearing one port's state removes that
  port's entities. Configs already retained under our node id are learnt at start, so this
  works after a restart too.

Port voltage, current, temperature and session energy: when the retained port state carries
`energy_kwh` (with `voltage_v`, `current_a`, `port_temperature_c`: the latest 0x06 figures),
those sensors read it, so they are known at once after a Home Assistant restart. Otherwise they
read `event/port` (0x06 `power` events, every 5 min while charging) and render an empty string
for events of other types or ports, which Home Assistant's numeric MQTT sensors ignore (the
state stays). A null value renders `None`, which Home Assistant shows as unknown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from bridge import __version__
from bridge.config import GatewaySettings
from bridge.mqtt.client import MqttClient
from bridge.mqtt.payloads import DEVICE_ID_RE
from bridge.mqtt.topics import DiscoveryTopics, Topics
from protocol.enums import CHARGING_STATUSES, PORT_STATUSES
from protocol.ids import device_number, parse_device_id

log = logging.getLogger(__name__)

LOCATE_SECONDS = 10
PORT_STATUS_OPTIONS = sorted({*PORT_STATUSES.values(), *CHARGING_STATUSES.values(), "unknown"})

Config = dict[str, Any]


def node_id(base_topic: str) -> str:
    """The base topic as one discovery topic level (Home Assistant allows [a-zA-Z0-9_-])."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", base_topic)


def numeric(field: str) -> str:
    """A value of the state, guarded: an empty (cleared) state renders '' (ignored by numeric
    sensors), a null `None` (shown as unknown)."""
    return f"{{{{ value_json.{field} if value_json is defined else '' }}}}"


def request_id(device_id: str, action: str = "", port: int | None = None) -> str:
    """`homeassistant:{device_id}:...`: the request id of our buttons' requests, by which the
    charger's "Last charging request" sensor recognises its own responses."""
    parts = ["homeassistant", device_id, *([str(port)] if port is not None else []), action]
    return ":".join(parts) if action else f"homeassistant:{device_id}:"


class Discovery:
    """Builds the discovery configs of one bridge (pure: no I/O)."""

    def __init__(
        self, topics: Topics, discovery: DiscoveryTopics, gateway_id: str = "chargebridge"
    ) -> None:
        self.topics = topics
        self.disc = discovery
        self.node = discovery.node_id
        self.gateway_id = gateway_id  # whose presence counts until a charger names its own

    # ------------------------------------------------------------------ common parts

    def _ident(self, device_id: str, port: int | None = None) -> str:
        suffix = "" if port is None else f"_port{port}"
        return f"{self.node}_{device_id}{suffix}"

    def holder(self, state: Config | None) -> str:
        """The gateway holding a charger: the one its retained state names, else ours."""
        named = state.get("gateway_id") if state else None
        return named if isinstance(named, str) and named else self.gateway_id

    def _presence(self, topic: str) -> Config:
        return {
            "topic": topic,
            "value_template": "{{ value_json.state if value_json is defined else 'offline' }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }

    def _availability(
        self, device_id: str | None, gateway_id: str, *, charging: bool = False
    ) -> Config:
        """The holding gateway's presence; with `device_id` also the device's `online`; with
        `charging` also the charging service's presence. All must be online."""
        entries = [self._presence(self.topics.gateway_state(gateway_id))]
        if charging:
            entries.append(self._presence(self.topics.charging_state))
        if device_id is None:
            return (
                {"availability": entries, "availability_mode": "all"}
                if len(entries) > 1
                else {"availability": entries}
            )
        device = {
            "topic": self.topics.device(device_id),
            "value_template": (
                "{{ ('online' if value_json.online else 'offline') "
                "if value_json is defined else 'offline' }}"
            ),
            "payload_available": "online",
            "payload_not_available": "offline",
        }
        return {"availability": [*entries, device], "availability_mode": "all"}

    def _entity(
        self, device_id: str, port: int | None, key: str, name: str, device: Config
    ) -> Config:
        object_id = f"{device_id}_{key}" if port is None else f"{device_id}_p{port}_{key}"
        return {
            "name": name,
            "unique_id": f"{self.node}_{object_id}",
            "device": device,
            "origin": {"name": "chargebridge", "sw_version": __version__},
            "_object": object_id,
        }

    def charger_device(self, device_id: str, state: Config | None) -> Config:
        number = device_number(parse_device_id(device_id))
        device: Config = {
            "identifiers": [self._ident(device_id)],
            "name": f"Charger {number}",
            "manufacturer": "DNY",
            "model": "AP3000",
            "serial_number": device_id,
        }
        if state:
            device["model"] = f"AP3000 {state.get('device_kind', '')}".strip()
            if state.get("firmware"):
                device["sw_version"] = state["firmware"]
        return device

    def port_device(self, device_id: str, port: int) -> Config:
        number = device_number(parse_device_id(device_id))
        return {
            "identifiers": [self._ident(device_id, port)],
            "name": f"Charger {number} port {port}",
            "manufacturer": "DNY",
            "model": "AP3000 port",
            "via_device": self._ident(device_id),
        }

    # ------------------------------------------------------------------ configs

    def device_configs(self, device_id: str, state: Config) -> dict[str, Config]:
        """Topic -> config of the charger-level entities."""
        dev = self.charger_device(device_id, state)
        state_topic = self.topics.device(device_id)
        gateway_id = self.holder(state)
        avail = self._availability(device_id, gateway_id)
        own = request_id(device_id)
        out: list[tuple[str, Config]] = [
            (
                "binary_sensor",
                {
                    **self._entity(device_id, None, "connectivity", "Connectivity", dev),
                    **self._availability(None, gateway_id),
                    "state_topic": state_topic,
                    "value_template": (
                        "{{ ('ON' if value_json.online else 'OFF') "
                        "if value_json is defined else 'OFF' }}"
                    ),
                    "device_class": "connectivity",
                    "entity_category": "diagnostic",
                },
            ),
            (
                "sensor",
                {
                    **self._entity(device_id, None, "voltage", "Voltage", dev),
                    **avail,
                    "state_topic": state_topic,
                    "value_template": numeric("voltage_v"),
                    "device_class": "voltage",
                    "state_class": "measurement",
                    "unit_of_measurement": "V",
                },
            ),
            (
                "sensor",
                {
                    **self._entity(device_id, None, "temperature", "Temperature", dev),
                    **avail,
                    "state_topic": state_topic,
                    "value_template": numeric("temperature_c"),
                    "device_class": "temperature",
                    "state_class": "measurement",
                    "unit_of_measurement": "°C",
                },
            ),
            (
                "sensor",
                {
                    # CSQ 0..31 of the GSM module, not dBm: no device class.
                    **self._entity(device_id, None, "signal", "Signal", dev),
                    **avail,
                    "state_topic": state_topic,
                    "value_template": numeric("signal"),
                    "state_class": "measurement",
                    "entity_category": "diagnostic",
                    "icon": "mdi:signal",
                },
            ),
            (
                "sensor",
                {
                    # The device commands' responses (API.md section 5): `success`,
                    # `offline`, `timeout`, ...; the whole response as attributes.
                    **self._entity(device_id, None, "last_command", "Last command", dev),
                    **self._availability(None, gateway_id),
                    "state_topic": self.topics.device_response(device_id, "+"),
                    "value_template": "{{ value_json.result if value_json is defined and "
                    "value_json.result is defined else this.state }}",
                    "json_attributes_topic": self.topics.device_response(device_id, "+"),
                    "json_attributes_template": "{{ value_json | tojson "
                    "if value_json is defined else '{}' }}",
                    "entity_category": "diagnostic",
                    "icon": "mdi:console",
                },
            ),
            (
                "sensor",
                {
                    # The charging service answers every requester on one topic per action;
                    # our buttons' request ids name the charger, so each charger keeps its own.
                    **self._entity(device_id, None, "last_charging", "Last charging request", dev),
                    **self._availability(None, gateway_id, charging=True),
                    "state_topic": self.topics.charging_response("+"),
                    "value_template": (
                        "{% set mine = value_json is defined and value_json.request_id is "
                        f"string and value_json.request_id.startswith('{own}') %}}"
                        "{{ (('ok' if value_json.ok else 'failed') ~ ': ' ~ value_json.message)"
                        "[:255] if mine else this.state }}"
                    ),
                    "entity_category": "diagnostic",
                    "icon": "mdi:ev-plug-type2",
                },
            ),
            (
                "button",
                {
                    **self._entity(device_id, None, "reboot", "Reboot", dev),
                    **avail,
                    "command_topic": self.topics.device_request(device_id, "reboot"),
                    "payload_press": json.dumps({"request_id": request_id(device_id, "reboot")}),
                    "device_class": "restart",
                    "entity_category": "config",
                },
            ),
            (
                "button",
                {
                    **self._entity(device_id, None, "locate", "Locate", dev),
                    **avail,
                    "command_topic": self.topics.device_request(device_id, "locate"),
                    "payload_press": json.dumps(
                        {"request_id": request_id(device_id, "locate"), "seconds": LOCATE_SECONDS}
                    ),
                    "device_class": "identify",
                },
            ),
        ]
        return self._by_topic(out)

    def port_configs(
        self, device_id: str, port: int, state: Config | None = None, gateway_id: str = ""
    ) -> dict[str, Config]:
        """Topic -> config of one port's entities. Voltage, current, temperature and session
        energy read the retained port state when it carries them (`energy_kwh` present:
        see the module docstring), else the 0x06 `power` events."""
        dev = self.port_device(device_id, port)
        port_topic = self.topics.port(device_id, port)
        events = self.topics.event(device_id, "port")
        avail = self._availability(device_id, gateway_id or self.gateway_id)
        via_service = self._availability(device_id, gateway_id or self.gateway_id, charging=True)
        from_state = state is not None and "energy_kwh" in state

        def measured(key: str, name: str, field: str, **extra: Any) -> Config:
            if from_state:
                source = {"state_topic": port_topic, "value_template": numeric(field)}
            else:
                # An empty result is ignored by numeric MQTT sensors: other events keep the
                # state.
                source = {
                    "state_topic": events,
                    "value_template": (
                        f"{{{{ (value_json.{field} if value_json.type == 'power' and "
                        f"value_json.port == {port} else '') if value_json is defined "
                        "else '' }}"
                    ),
                }
            return {**self._entity(device_id, port, key, name, dev), **avail, **source, **extra}

        def request(action: str) -> str:
            return json.dumps(
                {
                    "request_id": request_id(device_id, action, port),
                    "device_id": device_id,
                    "port": port,
                }
            )

        out: list[tuple[str, Config]] = [
            (
                "sensor",
                {
                    **self._entity(device_id, port, "status", "Status", dev),
                    **avail,
                    "state_topic": port_topic,
                    # `unknown` is one of the options; '' would not be
                    "value_template": (
                        "{{ ('unknown' if value_json.status.startswith('unknown_') "
                        "else value_json.status) if value_json is defined else 'unknown' }}"
                    ),
                    "device_class": "enum",
                    "options": PORT_STATUS_OPTIONS,
                },
            ),
            (
                "sensor",
                {
                    **self._entity(device_id, port, "power", "Power", dev),
                    **avail,
                    "state_topic": port_topic,
                    # idle: 0 W; null (no power report yet) renders '' which Home Assistant's
                    # numeric sensors ignore, where `None` would be logged as a bad value
                    "value_template": "{{ (0 if value_json.status == 'idle' else "
                    "(value_json.power_w if value_json.power_w is not none else '')) "
                    "if value_json is defined else '' }}",
                    "device_class": "power",
                    "state_class": "measurement",
                    "unit_of_measurement": "W",
                },
            ),
            (
                "sensor",
                measured(
                    "energy",
                    "Session energy",
                    "energy_kwh",
                    device_class="energy",
                    state_class="total_increasing",
                    unit_of_measurement="kWh",
                ),
            ),
            (
                "sensor",
                measured(
                    "voltage",
                    "Voltage",
                    "voltage_v",
                    device_class="voltage",
                    state_class="measurement",
                    unit_of_measurement="V",
                ),
            ),
            (
                "sensor",
                measured(
                    "current",
                    "Current",
                    "current_a",
                    device_class="current",
                    state_class="measurement",
                    unit_of_measurement="A",
                ),
            ),
            (
                "sensor",
                measured(
                    "temperature",
                    "Temperature",
                    "port_temperature_c",
                    device_class="temperature",
                    state_class="measurement",
                    unit_of_measurement="°C",
                ),
            ),
            (
                "button",
                {
                    # Through the charging service (API.md section 6): it makes the order
                    # number and applies the port's defaults (mode `full`: until full).
                    **self._entity(device_id, port, "start", "Start charging", dev),
                    **via_service,
                    "command_topic": self.topics.charging_request("start"),
                    "payload_press": request("start"),
                    "icon": "mdi:ev-station",
                },
            ),
            (
                "button",
                {
                    # API.md section 5's stop_charging needs the running order number, which a
                    # static press payload cannot carry; the charging service's stop request
                    # finds the port's session itself.
                    **self._entity(device_id, port, "stop", "Stop charging", dev),
                    **via_service,
                    "command_topic": self.topics.charging_request("stop"),
                    "payload_press": request("stop"),
                    "icon": "mdi:power-plug-off",
                },
            ),
        ]
        return self._by_topic(out)

    def _by_topic(self, entities: list[tuple[str, Config]]) -> dict[str, Config]:
        out = {}
        for component, config in entities:
            object_id = config.pop("_object")
            out[self.disc.config(component, object_id)] = config
        return out

    def owner(self, object_id: str) -> tuple[str, int | None] | None:
        """Object id -> (device id, port or None) of the entity, for removal."""
        device_id, _, rest = object_id.partition("_")
        if not DEVICE_ID_RE.match(device_id):
            return None
        match = re.match(r"^p(\d+)_", rest)
        return device_id, int(match.group(1)) if match else None


class HomeAssistantUnit:
    """Publishes and removes discovery configs as device and port states come and go."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.topics = Topics(settings.base_topic)
        self.disc = DiscoveryTopics(settings.homeassistant_prefix, node_id(settings.base_topic))
        self.discovery = Discovery(self.topics, self.disc, settings.gateway_id)
        self.published: dict[str, bytes] = {}  # config topic -> retained payload
        # Home Assistant links a port to its charger (`via_device`) only if the charger's
        # device exists when the port's is created: a port's configs wait for its charger's.
        self.announced: set[str] = set()  # devices whose charger configs are out
        self.pending: dict[str, dict[int, Config]] = {}  # device -> port -> port state
        # The gateway each charger's availability names, and its ports' last states, to
        # send the port configs again when the charger moves to another gateway.
        self.holders: dict[str, str] = {}
        self.port_states: dict[str, dict[int, Config]] = {}
        self.mqtt = MqttClient(
            settings.mqtt_settings(
                client_id=f"chargebridge-homeassistant-{settings.gateway_id}", clean_start=True
            ),
            subscriptions=[
                (self.disc.all_configs, 1),
                (self.topics.all_devices, 1),
                (self.topics.all_ports, 1),
                (self.disc.status, 1),
            ],
        )

    async def run(self) -> None:
        async with self.mqtt:
            async for message in self.mqtt.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload or "").encode()
                try:
                    await self.handle(str(message.topic), data)
                except Exception:
                    log.exception("home assistant discovery failed", extra={"topic": message.topic})

    async def handle(self, topic: str, payload: bytes) -> None:
        config = self.disc.parse_config(topic)
        if config is not None:
            # Ours from an earlier run (or an echo): remember it so that it can be removed.
            if payload:
                self.published[topic] = payload
                owner = self.discovery.owner(config[1])
                if owner is not None and owner[1] is None:
                    self.announced.add(owner[0])
            else:
                self.published.pop(topic, None)
            return
        if topic == self.disc.status:
            if payload == b"online":  # Home Assistant restarted: announce everything again
                for config_topic in sorted(self.published, key=self._chargers_first):
                    self._send(config_topic, self.published[config_topic])
            return
        parsed = self.topics.parse_device_topic(topic)
        if parsed is None or not DEVICE_ID_RE.match(parsed[0]):
            return
        device_id, rest = parsed
        if rest == "":
            if not payload:
                self._remove(device_id, None)
                return
            state = _json_object(payload)
            if state is not None:
                holder = self.discovery.holder(state)
                moved = self.holders.get(device_id, holder) != holder
                self.holders[device_id] = holder
                self._publish(self.discovery.device_configs(device_id, state))
                self.announced.add(device_id)
                waiting = self.pending.pop(device_id, {})
                again = self.port_states.get(device_id, {}) if moved else {}
                for port, known in sorted({**again, **waiting}.items()):
                    self._publish_port(device_id, port, known)
        elif rest.startswith("ports/") and rest[6:].isdigit():
            port = int(rest[6:])
            port_state = _json_object(payload) if payload else None
            if not payload:
                self._remove(device_id, port)
            elif port_state is None:
                return
            elif device_id in self.announced:
                self._publish_port(device_id, port, port_state)
            else:
                self.pending.setdefault(device_id, {})[port] = port_state

    def _chargers_first(self, config_topic: str) -> bool:
        parsed = self.disc.parse_config(config_topic)
        owner = self.discovery.owner(parsed[1]) if parsed else None
        return owner is not None and owner[1] is not None

    def _publish_port(self, device_id: str, port: int, port_state: Config) -> None:
        self.port_states.setdefault(device_id, {})[port] = port_state
        holder = self.holders.get(device_id, "")
        self._publish(self.discovery.port_configs(device_id, port, port_state, holder))

    def _publish(self, configs: dict[str, Config]) -> None:
        for topic, config in configs.items():
            body = json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()
            if self.published.get(topic) != body:
                self.published[topic] = body
                self._send(topic, body)

    def _send(self, topic: str, body: bytes) -> None:
        self.mqtt.submit(topic, body, retain=True).add_done_callback(log_publish_failure)

    def _remove(self, device_id: str, port: int | None) -> None:
        """Empty retained configs for the device (port None: with all its ports) or one port."""
        if port is None:
            self.announced.discard(device_id)
            self.pending.pop(device_id, None)
            self.holders.pop(device_id, None)
            self.port_states.pop(device_id, None)
        else:
            self.pending.get(device_id, {}).pop(port, None)
            self.port_states.get(device_id, {}).pop(port, None)
        for topic in list(self.published):
            parsed = self.disc.parse_config(topic)
            owner = self.discovery.owner(parsed[1]) if parsed else None
            if owner is None or owner[0] != device_id or (port is not None and owner[1] != port):
                continue
            del self.published[topic]
            self._send(topic, b"")
        log.info("home assistant entities removed", extra={"device_id": device_id, "port": port})


def log_publish_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("publish failed", extra={"error": repr(fut.exception())})


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
