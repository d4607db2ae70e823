"""Home Assistant discovery with the real gateway, broker and a charger on a TCP socket.

The configs are checked against what Home Assistant documents for MQTT discovery (required
keys, device classes per component, units per device class, state classes, availability), and
every value_template is rendered with Jinja2 (Home Assistant's template engine) against the
payloads the gateway really published on the entity's state topic.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import jinja2
import pytest

import protocol as p
from bridge.homeassistant import PORT_STATUS_OPTIONS, Discovery, HomeAssistantUnit
from bridge.mqtt.payloads import ChargingStartRequest, ChargingStopRequest
from bridge.mqtt.topics import DiscoveryTopics, Topics
from tests.bridge.ecosystem.support import register, report_power, wait_prefix
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import (
    TIMEOUT,
    FakeDevice,
    MqttCollector,
    gateway_settings,
    mqtt_collector,
    running_gateway,
    tcp_port,
)
from tests.broker import Mosquitto

DEVICE_ID = "04AB373B"
DEV = f"{B}/devices/{DEVICE_ID}"
HA = "homeassistant"
CHARGER_CONFIGS, PORT_CONFIGS = 8, 8
CONFIGS = CHARGER_CONFIGS + 2 * PORT_CONFIGS

# From the Home Assistant documentation (sensor, binary_sensor, button device classes; units
# accepted per sensor device class; state classes; entity categories).
SENSOR_CLASSES = {
    "apparent_power", "aqi", "area", "atmospheric_pressure", "battery",
    "blood_glucose_concentration", "carbon_dioxide", "carbon_monoxide", "conductivity",
    "current", "data_rate", "data_size", "date", "distance", "duration", "energy",
    "energy_distance", "energy_storage", "enum", "frequency", "gas", "humidity", "illuminance",
    "irradiance", "moisture", "monetary", "nitrogen_dioxide", "nitrogen_monoxide",
    "nitrous_oxide", "ozone", "ph", "pm1", "pm10", "pm25", "power", "power_factor",
    "precipitation", "precipitation_intensity", "pressure", "reactive_energy", "reactive_power",
    "signal_strength", "sound_pressure", "speed", "sulphur_dioxide", "temperature", "timestamp",
    "volatile_organic_compounds", "volatile_organic_compounds_parts", "voltage", "volume",
    "volume_flow_rate", "volume_storage", "water", "weight", "wind_direction", "wind_speed",
}  # fmt: skip
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window",
}  # fmt: skip
BUTTON_CLASSES = {"identify", "restart", "update"}
UNITS = {
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal"},
    "voltage": {"µV", "mV", "V", "kV", "MV"},
    "current": {"mA", "A"},
    "temperature": {"°C", "°F", "K"},
}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
REQUIRED = {"sensor": "state_topic", "binary_sensor": "state_topic", "button": "command_topic"}


@pytest.fixture
async def ha(broker: Mosquitto) -> Any:
    async with mqtt_collector(broker, f"{HA}/#") as collector:
        yield collector


async def discovery(
    ha: MqttCollector, count: int = CONFIGS, after: int = 0
) -> dict[str, dict[str, Any]]:
    """The first `count` configs (topic -> config), from message index `after` on."""
    configs = {}
    while len(configs) < count:
        message = await wait_prefix(ha, f"{HA}/", after=after)
        if message.topic != f"{HA}/status":
            configs[message.topic] = message.json()
    return configs


async def retained_configs(broker: Mosquitto) -> dict[str, Any]:
    """What a Home Assistant connecting now would read."""
    async with mqtt_collector(broker, f"{HA}/#") as late:
        await late.client.publish(f"{HA}/probe", b"x", qos=1)
        await late.wait_message(f"{HA}/probe")  # retained messages come before it
    assert all(m.retain for m in late.messages if m.topic != f"{HA}/probe")
    return {m.topic: m.json() for m in late.messages if m.payload and m.topic != f"{HA}/probe"}


ENV = jinja2.Environment(undefined=jinja2.StrictUndefined)
ENV.filters["tojson"] = json.dumps  # Home Assistant's own filter


def render(template: str, value_json: Any) -> str:
    """As Home Assistant renders MQTT value templates (`value`, `value_json`, `this`)."""
    return ENV.from_string(template).render(
        value_json=value_json, value=json.dumps(value_json), this=SimpleNamespace(state="x")
    )


def render_empty(template: str) -> str:
    """As Home Assistant renders a template for an empty payload (a cleared retained state):
    no `value_json` at all; StrictUndefined raises where Home Assistant logs an ERROR."""
    return ENV.from_string(template).render(value="", this=SimpleNamespace(state="x"))


def templates(config: dict[str, Any]) -> list[str]:
    found = [v for k, v in config.items() if k.endswith("_template")]
    return found + [a["value_template"] for a in config.get("availability", [])]


def check_shape(topic: str, config: dict[str, Any], identifiers: set[str]) -> None:
    component = topic.split("/")[1]
    assert component in REQUIRED and config[REQUIRED[component]]
    assert config["name"] and config["unique_id"]
    device = config["device"]
    assert device["identifiers"] and device["name"]
    if "via_device" in device:
        assert device["via_device"] in identifiers
    for entry in config["availability"]:
        assert entry["topic"].startswith(f"{B}/") and "value_json." in entry["value_template"]
    for template in templates(config):
        assert "value_json is defined" in template, template
        render_empty(template)  # renders; raises on an unguarded `value_json`
    if len(config["availability"]) > 1:
        assert config["availability_mode"] == "all"
    assert config.get("entity_category") in (None, "config", "diagnostic")
    device_class = config.get("device_class")
    if component == "sensor":
        assert config.get("entity_category") != "config"
        if device_class is not None:
            assert device_class in SENSOR_CLASSES
        if device_class == "enum":
            assert config["options"] and "unit_of_measurement" not in config
            assert "state_class" not in config
        if device_class in UNITS:
            assert config["unit_of_measurement"] in UNITS[device_class]
        if "state_class" in config:
            assert config["state_class"] in STATE_CLASSES
        if device_class == "energy":
            assert config["state_class"] in ("total", "total_increasing")
    elif component == "binary_sensor":
        assert device_class in BINARY_SENSOR_CLASSES
    else:
        assert device_class is None or device_class in BUTTON_CLASSES
        assert isinstance(config["payload_press"], str)


@pytest.mark.gateway(homeassistant=True)
async def test_discovery_of_a_two_port_charger(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector, ha: MqttCollector
) -> None:
    await register(device)
    await report_power(device)
    power_event = await mqtt.wait(f"{DEV}/event/port", lambda m: m["type"] == "power")
    status_event = await mqtt.wait(f"{DEV}/event/port", lambda m: m["type"] == "status")
    configs = await discovery(ha)
    assert await retained_configs(broker) == configs
    assert len({c["unique_id"] for c in configs.values()}) == CONFIGS
    # the charger's configs first, so that Home Assistant links the ports (via_device)
    order = [m.topic for m in ha.messages if m.topic in configs]
    assert not any(f"{DEVICE_ID}_p" in t for t in order[:CHARGER_CONFIGS])
    identifiers = {i for c in configs.values() for i in c["device"]["identifiers"]}
    assert identifiers == {f"{B}_{DEVICE_ID}", f"{B}_{DEVICE_ID}_port1", f"{B}_{DEVICE_ID}_port2"}
    latest = {
        DEV: mqtt.all(DEV)[-1],
        f"{DEV}/ports/1": mqtt.all(f"{DEV}/ports/1")[-1],
        f"{DEV}/ports/2": mqtt.all(f"{DEV}/ports/2")[-1],
        f"{B}/gateways/test-gw/state": mqtt.all(f"{B}/gateways/test-gw/state")[-1],
        f"{B}/charging/state": {"state": "online", "instances": ["svc"]},
    }
    assert latest[f"{B}/gateways/test-gw/state"]["state"] == "online"
    rendered = {}
    for topic, config in configs.items():
        check_shape(topic, config, identifiers)
        for entry in config["availability"]:
            assert render(entry["value_template"], latest[entry["topic"]]) == "online"
        if "state_topic" not in config or "+" in config["state_topic"]:
            continue  # buttons; the last command sensors (test_buttons_reach_the_charger)
        state_topic = config["state_topic"]
        if state_topic.endswith("/event/port"):
            port = int(config["unique_id"].split("_p")[-1].split("_")[0])
            payload = {**power_event, "port": port}
        else:
            payload = latest[state_topic]
        value = render(config["value_template"], payload)
        rendered[config["unique_id"]] = value
        never_measured = value == "None" and payload.get("measured_at", "") is None
        if config.get("unit_of_measurement") and not never_measured:
            float(value)  # a number for every sensor with a unit (or unknown: nothing measured)
        if state_topic.endswith("/event/port"):
            # events of other types render "", which numeric MQTT sensors ignore
            assert render(config["value_template"], status_event) == ""
    node = f"{B}_{DEVICE_ID}"
    assert rendered[f"{node}_connectivity"] == "ON"
    assert float(rendered[f"{node}_voltage"]) == 230.0
    assert float(rendered[f"{node}_temperature"]) == 25.0
    assert rendered[f"{node}_signal"] == "21"
    assert rendered[f"{node}_p1_status"] == "charging" in PORT_STATUS_OPTIONS
    assert rendered[f"{node}_p2_status"] == "idle"
    assert float(rendered[f"{node}_p1_power"]) == 234.2
    assert float(rendered[f"{node}_p2_power"]) == 0.0
    assert float(rendered[f"{node}_p1_energy"]) == 0.12
    assert float(rendered[f"{node}_p1_voltage"]) == 220.1
    assert float(rendered[f"{node}_p1_current"]) == 1.065
    assert float(rendered[f"{node}_p1_temperature"]) == 30.0
    assert rendered[f"{node}_p2_energy"] == "None"  # no 0x06 for port 2 yet: unknown
    # The retained port state carries the 0x06 measurements: port 1's energy reads port 1's
    # state (so it is there at once after a restart), not the events of both ports.
    energy = configs[f"{HA}/sensor/{B}/{DEVICE_ID}_p1_energy/config"]
    assert energy["state_topic"] == f"{DEV}/ports/1"
    # A null renders None, which Home Assistant takes for "unknown".
    port1 = latest[f"{DEV}/ports/1"]
    assert render(energy["value_template"], {**port1, "energy_kwh": None}) == "None"


@pytest.mark.gateway(homeassistant=True)
async def test_buttons_reach_the_charger(
    device: FakeDevice, mqtt: MqttCollector, ha: MqttCollector
) -> None:
    await register(device)
    configs = await discovery(ha)
    locate = configs[f"{HA}/button/{B}/{DEVICE_ID}_locate/config"]
    await mqtt.client.publish(locate["command_topic"], locate["payload_press"], qos=1)
    frame = await device.recv()
    assert frame.command == 0x96
    assert p.decode_payload(0x96, frame.data, p.Sender.SERVER) == p.Locate(seconds=10)
    await device.send(0x96, b"\x00", message_id=frame.message_id)
    assert (await mqtt.wait(f"{DEV}/response/locate"))["ok"] is True
    reboot = configs[f"{HA}/button/{B}/{DEVICE_ID}_reboot/config"]
    await mqtt.client.publish(reboot["command_topic"], reboot["payload_press"], qos=1)
    assert (await device.recv()).command == 0x87
    stop = configs[f"{HA}/button/{B}/{DEVICE_ID}_p2_stop/config"]
    assert stop["command_topic"] == f"{B}/charging/request/stop"
    request = ChargingStopRequest.model_validate_json(stop["payload_press"])
    assert (request.device_id, request.port) == (DEVICE_ID, 2)
    start = configs[f"{HA}/button/{B}/{DEVICE_ID}_p1_start/config"]
    assert start["command_topic"] == f"{B}/charging/request/start"
    started = ChargingStartRequest.model_validate_json(start["payload_press"])
    assert (started.device_id, started.port, started.mode) == (DEVICE_ID, 1, "full")
    # The last results: the device command sensor reads the real response of locate ...
    last = configs[f"{HA}/sensor/{B}/{DEVICE_ID}_last_command/config"]
    assert last["state_topic"] == f"{DEV}/response/+"
    response = mqtt.all(f"{DEV}/response/locate")[-1]
    assert render(last["value_template"], response) == response["result"] == "ok"
    assert json.loads(render(last["json_attributes_template"], response)) == response
    # ... the charging one the service's responses to this charger's buttons only
    charging = configs[f"{HA}/sensor/{B}/{DEVICE_ID}_last_charging/config"]
    assert charging["state_topic"] == f"{B}/charging/response/+"
    refused = {
        "request_id": request.request_id,
        "ok": False,
        "message": "no active session on port 2",
        "session": None,
    }
    template = charging["value_template"]
    assert render(template, refused) == "failed: no active session on port 2"
    accepted = {"request_id": started.request_id, "ok": True, "message": "started"}
    assert render(template, accepted) == "ok: started"
    assert render(template, {**refused, "request_id": "homeassistant:0000000A:2:stop"}) == "x"
    assert render(template, {**refused, "request_id": None}) == "x"  # keeps this.state


@pytest.mark.gateway(homeassistant=True)
async def test_forgotten_device_and_port_lose_their_entities(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector, ha: MqttCollector
) -> None:
    await register(device)
    configs = await discovery(ha)
    # Forget port 2: its entities are removed, nothing else.
    await mqtt.client.publish(f"{DEV}/ports/2", b"", qos=1, retain=True)
    removed = {(await wait_prefix(ha, f"{HA}/", empty=True)).topic for _ in range(PORT_CONFIGS)}
    assert removed == {t for t in configs if f"{DEVICE_ID}_p2_" in t}
    # Forget the device (it went offline first, as an operator would): the rest goes.
    await device.close()
    await mqtt.wait(DEV, lambda m: m["online"] is False)
    await mqtt.client.publish(DEV, b"", qos=1, retain=True)
    rest = CONFIGS - PORT_CONFIGS
    removed |= {(await wait_prefix(ha, f"{HA}/", empty=True)).topic for _ in range(rest)}
    assert removed == set(configs)
    assert await retained_configs(broker) == {}


async def test_unique_ids_are_stable_across_restarts(broker: Mosquitto, tmp_path: Path) -> None:
    """A restarted gateway, its retained configs learnt, republishes exactly the same configs
    when Home Assistant announces itself (`homeassistant/status` = online)."""
    settings = gateway_settings(broker, tmp_path, homeassistant=True)
    seen = []
    for _ in range(2):
        async with (
            mqtt_collector(broker, f"{HA}/#", f"{DEV}/ports/2") as ha,
            running_gateway(settings) as app,
        ):
            assert app.homeassistant is not None
            async with asyncio.timeout(TIMEOUT):
                await app.homeassistant.mqtt.wait_connected()  # or it misses the probe
            device = FakeDevice()
            await device.connect(tcp_port(app))
            await register(device)
            await ha.wait(f"{DEV}/ports/2", lambda m: m["updated_at"] is not None)
            await ha.client.publish(f"{HA}/status", b"online", qos=1)
            probe = (await ha.wait_message(f"{HA}/status"), len(ha.messages))[1]
            seen.append(await discovery(ha, after=probe))
            await device.close()
    first, second = seen
    assert first == second
    assert len({c["unique_id"] for c in first.values()}) == CONFIGS


def test_port_power_renders_empty_before_any_power_report() -> None:
    """A plugged port has no power yet (`power_w: null`): '' (ignored), not 'None'."""
    configs = Discovery(Topics(B), DiscoveryTopics()).port_configs(DEVICE_ID, 1)
    [power] = [c for c in configs.values() if c["unique_id"].endswith("_p1_power")]
    template = power["value_template"]
    assert render(template, {"status": "plugged_not_started", "power_w": None}) == ""
    assert render(template, {"status": "idle", "power_w": None}) == "0"
    assert float(render(template, {"status": "charging", "power_w": 12.5})) == 12.5


def test_port_measurements_read_the_port_state_when_it_carries_them() -> None:
    """A gateway whose retained port state carries the latest 0x06 figures (issue 17, 3):
    the sensors read it, so they are known at once after a Home Assistant restart; without
    them, the `power` events as before."""
    discovery = Discovery(Topics(B), DiscoveryTopics())
    state = {
        "port": 1,
        "status": "charging",
        "power_w": 234.2,
        "energy_kwh": 0.12,
        "voltage_v": 220.1,
        "current_a": 1.065,
        "temperature_c": 25.0,
        "port_temperature_c": 30.0,
    }
    rich = discovery.port_configs(DEVICE_ID, 1, state)
    plain = discovery.port_configs(DEVICE_ID, 1, {"port": 1, "status": "idle"})
    expected = {"energy": 0.12, "voltage": 220.1, "current": 1.065, "temperature": 30.0}
    for key, value in expected.items():
        topic = f"{HA}/sensor/{B}/{DEVICE_ID}_p1_{key}/config"
        assert rich[topic]["state_topic"] == f"{DEV}/ports/1"
        assert float(render(rich[topic]["value_template"], state)) == value
        assert plain[topic]["state_topic"] == f"{DEV}/event/port"
        assert rich[topic]["unique_id"] == plain[topic]["unique_id"]
    assert set(rich) == set(plain)


def availability_topics(config: dict[str, Any]) -> list[str]:
    return [entry["topic"] for entry in config["availability"]]


def test_availability_is_the_holding_gateways_presence_and_the_services() -> None:
    """Every entity needs the presence of the gateway named in the charger's state (ours
    until one is named); what goes through the charging service needs its presence too."""
    discovery = Discovery(Topics(B), DiscoveryTopics(), "own-gw")
    held = discovery.device_configs(DEVICE_ID, {"online": True, "gateway_id": "gw-b"})
    unnamed = discovery.device_configs(DEVICE_ID, {"online": True})
    gw_b, own = f"{B}/gateways/gw-b/state", f"{B}/gateways/own-gw/state"
    for topic, config in held.items():
        topics = availability_topics(config)
        assert topics[0] == gw_b and availability_topics(unnamed[topic])[0] == own
        assert (f"{B}/charging/state" in topics) == topic.endswith("_last_charging/config")
        assert (DEV in topics) != topic.endswith(
            ("_connectivity/config", "_last_command/config", "_last_charging/config")
        )
        assert len(topics) == 1 or config["availability_mode"] == "all"
    ports = discovery.port_configs(DEVICE_ID, 1, {"port": 1, "status": "idle"}, "gw-b")
    for topic, config in ports.items():
        charging = topic.endswith(("_p1_start/config", "_p1_stop/config"))
        assert availability_topics(config) == [
            gw_b,
            *([f"{B}/charging/state"] if charging else []),
            DEV,
        ]
        assert config["availability_mode"] == "all"
    offline = next(iter(ports.values()))["availability"][0]["value_template"]
    assert render(offline, {"state": "offline", "gateway_id": "gw-b"}) == "offline"
    assert render_empty(offline) == "offline"


async def test_a_charger_that_moves_gets_configs_naming_its_new_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit in memory (no broker): when the charger's state names another gateway, the
    charger's and its ports' configs are sent again with that gateway's presence."""
    nowhere = cast(Mosquitto, SimpleNamespace(url="mqtt://127.0.0.1:9"))
    settings = gateway_settings(nowhere, tmp_path, homeassistant=True)
    unit = HomeAssistantUnit(settings)
    sent: dict[str, bytes] = {}
    monkeypatch.setattr(unit, "_send", lambda topic, body: sent.__setitem__(topic, body))
    state = {"device_id": DEVICE_ID, "online": True, "gateway_id": "gw-a"}
    await unit.handle(DEV, json.dumps(state).encode())
    await unit.handle(f"{DEV}/ports/1", json.dumps({"port": 1, "status": "idle"}).encode())
    assert len(sent) == CHARGER_CONFIGS + PORT_CONFIGS
    assert all(f"{B}/gateways/gw-a/state" in body.decode() for body in sent.values())
    sent.clear()
    await unit.handle(DEV, json.dumps({**state, "voltage_v": 230.0}).encode())
    assert not sent  # same gateway, same configs: nothing to send
    await unit.handle(DEV, json.dumps({**state, "gateway_id": "gw-b"}).encode())
    assert len(sent) == CHARGER_CONFIGS + PORT_CONFIGS
    for body in sent.values():
        topics = availability_topics(json.loads(body))
        assert f"{B}/gateways/gw-b/state" in topics and f"{B}/gateways/gw-a/state" not in topics
