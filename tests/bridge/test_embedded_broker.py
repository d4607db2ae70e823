"""The embedded amqtt broker: works with our MQTT client, and a taken port is one clear error."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bridge.broker import BrokerPortInUse, EmbeddedBroker
from bridge.mqtt.client import MqttClient, MqttSettings
from tests.broker import free_port


async def test_embedded_broker_carries_retained_messages() -> None:
    async with EmbeddedBroker(port=free_port()) as broker:
        settings = MqttSettings(url=broker.url, protocol="3.1.1", client_id="pub")
        async with MqttClient(settings) as pub:
            await pub.publish("demo/state", b"online", retain=True)
        sub_settings = MqttSettings(url=broker.url, protocol="3.1.1", client_id="sub")
        async with MqttClient(sub_settings, subscriptions=[("demo/#", 1)]) as sub:
            async with asyncio.timeout(10):
                msg = await anext(aiter(sub.messages))
        assert (str(msg.topic), msg.payload, msg.retain) == ("demo/state", b"online", True)


async def test_taken_port_is_reported_with_the_way_out() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerPortInUse, match=rf"{port} is already in use.*--broker-port"):
            async with EmbeddedBroker(port=port):
                pass
