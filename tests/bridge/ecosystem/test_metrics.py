"""Prometheus metrics: the real HTTP endpoint scraped while a charger talks to the gateway."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import GatewayApp
from bridge.charging.model import ChargingStats
from tests.bridge.ecosystem.support import register
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import TIMEOUT, FakeDevice, MqttCollector

DEV = f"{B}/devices/04AB373B"
DASHBOARD = Path(__file__).resolve().parents[3] / "docs/grafana-dashboard.json"


async def http_get(app: GatewayApp, request: bytes) -> tuple[str, bytes]:
    assert app.metrics is not None and app.metrics.address is not None
    host, port = app.metrics.address
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        response = await reader.read()  # the server closes after one response
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


async def scrape(app: GatewayApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = await http_get(app, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.0 200 OK"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


@pytest.mark.gateway(metrics="127.0.0.1:0")
async def test_scrape_during_a_run(
    gateway: GatewayApp, device: FakeDevice, mqtt: MqttCollector
) -> None:
    await register(device)
    await mqtt.client.publish(f"{DEV}/request/locate", json.dumps({"seconds": 5}), qos=1)
    frame = await device.recv()
    await device.send(0x96, b"\x00", message_id=frame.message_id)
    await mqtt.wait(f"{DEV}/response/locate")
    stats = ChargingStats(sessions_completed=7, total_energy_delivered_kwh=1.5).to_payload(3, 0)
    assert gateway.metrics is not None
    hooks = {"queued": 2, "delivered": 5, "failures": 1, "dead_lettered": 0, "dropped": 0}
    # published first on one connection: read by the unit before the charging stats
    await mqtt.client.publish(f"{B}/charging/webhooks/stats", json.dumps(hooks), qos=1, retain=True)
    await mqtt.client.publish(f"{B}/charging/stats", json.dumps(stats), qos=1, retain=True)
    async with asyncio.timeout(TIMEOUT):
        # the unit reads charging/stats on its own connection
        while gateway.metrics.charging != stats:
            await gateway.metrics.charging_updated.wait()
            gateway.metrics.charging_updated.clear()
    m = await scrape(gateway)

    def frames(direction: str, command: str, name: str) -> float:
        labels = (("command", command), ("direction", direction), ("name", name))
        return m[("chargebridge_frames_total", labels)]

    assert frames("in", "0x20", "registration") == 1
    assert frames("in", "0x21", "heartbeat") == 1
    assert frames("out", "0x21", "heartbeat") == 1
    assert frames("out", "0x96", "locate") == 1 and frames("in", "0x96", "locate") == 1
    latency = (("command", "0x96"),)
    assert m[("chargebridge_command_latency_seconds_count", latency)] == 1
    assert 0 < m[("chargebridge_command_latency_seconds_sum", latency)] < TIMEOUT
    assert m[("chargebridge_gateway_devices_online", ())] == 1
    assert m[("chargebridge_gateway_connections", ())] == 1
    assert m[("chargebridge_gateway_frames_in_total", ())] == 3
    assert m[("chargebridge_gateway_commands_sent_total", ())] == 1
    assert m[("chargebridge_mqtt_outbox_messages", ())] >= 0
    assert m[("chargebridge_mqtt_connected", ())] == 1
    assert m[("chargebridge_charging_active_sessions", ())] == 3
    assert m[("chargebridge_charging_sessions_completed_total", ())] == 7
    assert m[("chargebridge_charging_total_energy_delivered_kwh_total", ())] == 1.5
    assert m[("chargebridge_webhooks_queued", ())] == 2
    assert m[("chargebridge_webhooks_delivered_total", ())] == 5
    assert m[("chargebridge_webhooks_failures_total", ())] == 1
    names = {name for name, _ in m}
    used = set(re.findall(r"chargebridge_\w+", DASHBOARD.read_text()))
    assert used and used <= names, used - names  # every dashboard query has data
    await device.close()
    await mqtt.wait(DEV, lambda s: s["online"] is False)
    assert (await scrape(gateway))[("chargebridge_gateway_devices_online", ())] == 0


@pytest.mark.gateway(metrics="127.0.0.1:0")
async def test_other_paths_and_junk_requests(gateway: GatewayApp) -> None:
    assert (await http_get(gateway, b"GET /nothing HTTP/1.1\r\n\r\n"))[0].endswith("404 Not Found")
    assert (await http_get(gateway, b"POST /metrics HTTP/1.1\r\n\r\n"))[0].endswith("404 Not Found")
    status, _ = await http_get(gateway, b"\x00\xff junk\r\n\r\n")
    assert status.endswith("404 Not Found")
    assert (await scrape(gateway))[("chargebridge_gateway_devices_online", ())] == 0


@pytest.mark.gateway(metrics="127.0.0.1:0")
async def test_presence_of_every_gateway_and_of_the_service(
    gateway: GatewayApp, mqtt: MqttCollector
) -> None:
    """One scrape shows what the broker shows: this gateway and another one on the base
    topic, and the charging service with its instances."""
    assert gateway.metrics is not None
    other = {"state": "offline", "gateway_id": "gw-other"}
    await mqtt.client.publish(f"{B}/gateways/gw-other/state", json.dumps(other), retain=True)
    service = {"state": "online", "instances": ["svc-a", "svc-b"]}
    await mqtt.client.publish(f"{B}/charging/state", json.dumps(service), qos=1, retain=True)
    unit = gateway.metrics
    async with asyncio.timeout(TIMEOUT):
        while len(unit.gateway_states) < 2 or not unit.charging_state:
            await unit.presence_updated.wait()
            unit.presence_updated.clear()
    m = await scrape(gateway)
    assert m[("chargebridge_gateway_info", (("gateway_id", "test-gw"),))] == 1
    assert m[("chargebridge_gateways_known", ())] == 2
    assert m[("chargebridge_gateways_online", ())] == 1  # ours; gw-other is offline
    assert m[("chargebridge_charging_up", ())] == 1
    assert m[("chargebridge_charging_instances", ())] == 2
    await mqtt.client.publish(f"{B}/charging/state", b'{"state":"offline"}', qos=1, retain=True)
    async with asyncio.timeout(TIMEOUT):
        while unit.charging_state.get("state") != "offline":
            await unit.presence_updated.wait()
            unit.presence_updated.clear()
    m = await scrape(gateway)
    assert (m[("chargebridge_charging_up", ())], m[("chargebridge_charging_instances", ())]) == (
        0,
        0,
    )
    await mqtt.client.publish(f"{B}/charging/state", b"", qos=1, retain=True)
    await mqtt.client.publish(f"{B}/gateways/gw-other/state", b"", qos=1, retain=True)
