"""The broker fixture itself: it must run the shipped config and survive restarts."""

from __future__ import annotations

from tests.broker import Mosquitto


async def test_broker_keeps_retained_messages_across_restart(broker: Mosquitto) -> None:
    async with broker.client() as c:
        await c.publish("chargebridge/t/retained", b"kept", qos=1, retain=True)
    broker.stop()
    broker.start()
    async with broker.client() as c:
        await c.subscribe("chargebridge/t/#", qos=1)
        async for msg in c.messages:
            assert msg.payload == b"kept"
            assert msg.retain
            break
