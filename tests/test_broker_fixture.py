"""The broker fixture itself: it must run the shipped config and survive restarts."""

from __future__ import annotations

import aiomqtt

from tests.broker import Mosquitto


async def test_broker_keeps_retained_messages_across_restart(broker: Mosquitto) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.publish("t/retained", b"kept", qos=1, retain=True)
    broker.stop()
    broker.start()
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.subscribe("t/#", qos=1)
        async for msg in c.messages:
            assert msg.payload == b"kept"
            assert msg.retain
            break
