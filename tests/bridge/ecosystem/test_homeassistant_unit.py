"""The discovery unit's topic handling on its own (no broker): junk in, nothing out."""

from __future__ import annotations

import json

from bridge.config import GatewaySettings, load_settings
from bridge.homeassistant import HomeAssistantUnit, node_id
from bridge.mqtt.topics import DiscoveryTopics

STATE = {"device_id": "04AB373B", "online": True, "device_kind": "dual_socket", "firmware": "1.26"}


class Recording(HomeAssistantUnit):
    """Records what the unit sends instead of queueing it for a broker."""

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        self.sent: list[tuple[str, bytes]] = []

    def _send(self, topic: str, body: bytes) -> None:
        self.sent.append((topic, body))


def unit(base: str = "chargebridge", prefix: str = "homeassistant") -> Recording:
    settings = load_settings(
        GatewaySettings,
        {"base_topic": base, "homeassistant": True, "homeassistant_prefix": prefix},
    )
    return Recording(settings)


def test_node_id_and_config_topics() -> None:
    assert node_id("site/a b.1") == "site_a_b_1"
    disc = DiscoveryTopics("ha/discovery", "site_a")
    topic = disc.config("sensor", "04AB373B_p1_power")
    assert topic == "ha/discovery/sensor/site_a/04AB373B_p1_power/config"
    assert disc.parse_config(topic) == ("sensor", "04AB373B_p1_power")
    assert disc.parse_config("ha/discovery/sensor/other/x/config") is None
    assert disc.parse_config("ha/discovery/sensor/site_a/x") is None
    assert disc.all_configs == "ha/discovery/+/site_a/+/config"


async def test_junk_states_publish_nothing() -> None:
    u = unit()
    for topic, payload in (
        ("chargebridge/devices/nothex", json.dumps(STATE).encode()),
        ("chargebridge/devices/04AB373B", b"{not json"),
        ("chargebridge/devices/04AB373B", b"[1]"),
        ("chargebridge/devices/04AB373B/ports/x", b"{}"),
        ("chargebridge/devices/04AB373B/event/port", b"{}"),
        ("chargebridge/devices/04AB373B", b""),  # forgetting what was never announced
        ("elsewhere/devices/04AB373B", json.dumps(STATE).encode()),
    ):
        await u.handle(topic, payload)
    assert u.published == {} and len(u.sent) == 0


async def test_a_state_change_republishes_only_changed_configs() -> None:
    u = unit(base="site/a", prefix="ha")
    await u.handle("site/a/devices/04AB373B", json.dumps(STATE).encode())
    assert len(u.sent) == 8
    assert all(t.startswith("ha/") and "/site_a/04AB373B_" in t for t in u.published)
    await u.handle("site/a/devices/04AB373B", json.dumps({**STATE, "voltage_v": 231}).encode())
    assert len(u.sent) == 8  # same configs: nothing sent again
    await u.handle("site/a/devices/04AB373B", json.dumps({**STATE, "firmware": "1.27"}).encode())
    assert len(u.sent) == 16  # the device's sw_version is in every config
    assert all(b'"sw_version":"1.27"' in body for _, body in u.sent[8:])
    await u.handle("site/a/devices/04AB373B/ports/1", b'{"port": 1}')
    assert len(u.published) == 8 + 8
    await u.handle("ha/status", b"online")  # Home Assistant restarted
    assert len(u.sent) == 16 + 8 + 16
    # announced again charger first, so that the ports' via_device resolves
    assert all("_p1_" not in t for t, _ in u.sent[24:32])
    await u.handle("site/a/devices/04AB373B", b"")
    assert u.published == {} and len(u.sent) == 40 + 16
    assert all(body == b"" for _, body in u.sent[40:])


async def test_a_ports_configs_wait_for_its_chargers() -> None:
    """Retained port states may arrive before the device state (another topic); Home
    Assistant sets `via_device` only if the charger's device exists when the port's is made."""
    u = unit()
    await u.handle("chargebridge/devices/04AB373B/ports/2", b'{"port": 2}')
    await u.handle("chargebridge/devices/04AB373B/ports/1", b'{"port": 1}')
    assert u.sent == []
    await u.handle("chargebridge/devices/04AB373B", json.dumps(STATE).encode())
    order = [t.split("/")[3] for t, _ in u.sent]
    assert len(order) == 8 + 2 * 8
    assert not any("_p" in o for o in order[:8])
    assert all("_p1_" in o for o in order[8:16]) and all("_p2_" in o for o in order[16:])
    # a port forgotten while it waited is not announced later
    await u.handle("chargebridge/devices/0000000A/ports/1", b'{"port": 1}')
    await u.handle("chargebridge/devices/0000000A/ports/1", b"")
    sent = len(u.sent)
    await u.handle("chargebridge/devices/0000000A", json.dumps(STATE).encode())
    assert len(u.sent) == sent + 8


async def test_configs_retained_from_an_earlier_run_are_removed_too() -> None:
    u = unit()
    old = "homeassistant/sensor/chargebridge/04AB373B_p3_power/config"
    await u.handle(old, b'{"name": "Power"}')
    await u.handle("homeassistant/sensor/chargebridge/0000000A_voltage/config", b"{}")
    await u.handle("chargebridge/devices/04AB373B/ports/3", b"")
    assert list(u.published) == ["homeassistant/sensor/chargebridge/0000000A_voltage/config"]
    assert u.sent == [(old, b"")]  # the empty config for the old port's entity
