from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.app import GatewayApp
from tests.bridge.helpers import (
    FakeDevice,
    MqttCollector,
    gateway_settings,
    mqtt_collector,
    running_gateway,
    tcp_port,
)
from tests.broker import Mosquitto

B = "chargebridge"


@pytest.fixture
async def mqtt(broker: Mosquitto) -> AsyncIterator[MqttCollector]:
    async with mqtt_collector(broker, f"{B}/#") as collector:
        yield collector


@pytest.fixture
async def gateway(
    broker: Mosquitto, tmp_path: Path, mqtt: MqttCollector, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayApp]:
    """A gateway on an ephemeral port; `@pytest.mark.gateway(option=value)` overrides."""
    marker = request.node.get_closest_marker("gateway")
    overrides = marker.kwargs if marker else {}
    async with running_gateway(gateway_settings(broker, tmp_path, **overrides)) as app:
        # presence online is published after the request subscription is in place
        await mqtt.wait(f"{B}/gateways/test-gw/state", lambda m: m["state"] == "online")
        yield app


@pytest.fixture
async def device(gateway: GatewayApp) -> AsyncIterator[FakeDevice]:
    dev = FakeDevice()
    await dev.connect(tcp_port(gateway))
    yield dev
    await dev.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gateway(**options): gateway settings for the test")
