"""`card_policy = authorize` (API.md section 7) with a real MQTT client as the authoriser.

The authoriser subscribes to order events like an external billing service would, and answers
`card_swipe` events on `{b}/devices/{id}/request/card_reply`: in time, too late, or malformed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiomqtt
import pytest

import protocol as p
from tests.bridge.gateway.conftest import B
from tests.bridge.helpers import FakeDevice, MqttCollector, mqtt_collector
from tests.broker import Mosquitto

DEV = f"{B}/devices/04AB373B"
CARD = bytes.fromhex("0A0B0C0D")

Answer = Callable[[aiomqtt.Client, dict[str, Any]], Awaitable[None]]


async def authoriser(broker: Mosquitto, answer: Answer, ready: asyncio.Event) -> None:
    """A billing service: answers every card swipe that awaits a reply with `answer`."""
    async with mqtt_collector(broker, f"{B}/devices/+/event/order") as events:
        ready.set()
        while True:
            event = await events.wait(f"{DEV}/event/order", _awaiting_reply, timeout=60)
            await answer(events.client, event)


def _awaiting_reply(event: dict[str, Any]) -> bool:
    return event["type"] == "card_swipe" and event["awaiting_reply"] is True


@asynccontextmanager
async def running_authoriser(broker: Mosquitto, answer: Answer) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(authoriser(broker, answer, ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def reply(client: aiomqtt.Client, event: dict[str, Any], body: Any) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    await client.publish(f"{B}/devices/{event['device_id']}/request/card_reply", payload, qos=1)


async def swipe(device: FakeDevice, card_type: int = 0) -> tuple[int, float]:
    body = p.CardSwipe(card_id=CARD, card_type=card_type, port=1, balance=0)
    return await device.send(0x02, p.encode_payload(body)), time.monotonic()


async def card_reply(device: FakeDevice, timeout: float = 5) -> tuple[p.Frame, p.CardSwipeReply]:
    frame = await device.recv(timeout=timeout)
    assert frame.command == 0x02
    decoded = p.decode_payload(0x02, frame.data, p.Sender.SERVER)
    assert isinstance(decoded, p.CardSwipeReply)
    return frame, decoded


@pytest.mark.gateway(card_policy="authorize", card_authorize_timeout_s=3)
async def test_authoriser_answers_in_time(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    async def accept(client: aiomqtt.Client, event: dict[str, Any]) -> None:
        body = {
            "request_id": "auth-1",
            "card_id": event["card_id"],
            "message_id": event["message_id"],
            "balance_cents": 2500,
        }
        await reply(client, event, body)

    async with running_authoriser(broker, accept):
        mid, sent = await swipe(device)
        frame, answer = await card_reply(device)
        assert time.monotonic() - sent < 3  # the authoriser's answer, not the fallback
        assert frame.message_id == mid
        assert (answer.card_id, answer.account_status, answer.balance, answer.port) == (
            CARD,
            0,
            2500,
            1,
        )
        response = await mqtt.wait(f"{DEV}/response/card_reply")
        assert (response["request_id"], response["ok"]) == ("auth-1", True)
        await device.expect_silence(3.5)  # answered once: no fallback at the deadline


@pytest.mark.gateway(
    card_policy="authorize",
    card_authorize_timeout_s=0.5,
    card_fallback_policy="accept",
    card_balance_cents=100,
)
async def test_late_answer_gets_expired_after_the_fallback(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    fallback_seen = asyncio.Event()

    async def late(client: aiomqtt.Client, event: dict[str, Any]) -> None:
        async with asyncio.timeout(5):
            await fallback_seen.wait()  # answer only after the device got the fallback
        await reply(
            client, event, {"request_id": "late", "card_id": event["card_id"], "balance_cents": 1}
        )

    async with running_authoriser(broker, late):
        _, sent = await swipe(device)
        _, answer = await card_reply(device)
        fallback_seen.set()
        assert time.monotonic() - sent >= 0.5
        assert (answer.account_status, answer.balance) == (0, 100)  # the fallback policy
        response = await mqtt.wait(f"{DEV}/response/card_reply")
        assert (response["request_id"], response["ok"], response["result"]) == (
            "late",
            False,
            "expired",
        )
        await device.expect_silence(0.5)  # the late answer never reaches the device


@pytest.mark.gateway(card_policy="authorize", card_authorize_timeout_s=2)
async def test_malformed_answers_are_refused_and_the_swipe_still_waits(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    malformed: list[Any] = [
        b"{not json",
        [1, 2],
        {"request_id": "m1", "card_id": "XYZ"},
        {"request_id": "m2", "card_id": "0A0B0C0D", "balance_cents": "lots"},
        {"request_id": "m3", "card_id": "0A0B0C0D", "account_status": 300},
        {"request_id": "m4", "card_id": "0A0B0C0D", "surprise": True},
        {"request_id": "m5", "card_id": "FFFFFFFF"},  # well formed, but no such swipe waits
    ]

    async def junk_then_valid(client: aiomqtt.Client, event: dict[str, Any]) -> None:
        for body in malformed:
            await reply(client, event, body)
        await reply(client, event, {"request_id": "ok", "card_id": "0a0b0c0d", "balance_cents": 7})

    async with running_authoriser(broker, junk_then_valid):
        await swipe(device)
        _, answer = await card_reply(device)
        assert (answer.account_status, answer.balance) == (0, 7)  # the one valid answer
        responses = [await mqtt.wait(f"{DEV}/response/card_reply") for _ in range(8)]
        assert [(r["request_id"], r["result"]) for r in responses] == [
            (None, "invalid"),
            (None, "invalid"),
            ("m1", "invalid"),
            ("m2", "invalid"),
            ("m3", "invalid"),
            ("m4", "invalid"),
            ("m5", "expired"),
            ("ok", "ok"),
        ]
        assert "card_id" in responses[2]["message"] and "balance_cents" in responses[3]["message"]
        await device.expect_silence(2.5)


@pytest.mark.gateway(card_policy="authorize", card_authorize_timeout_s=0.5)
async def test_malformed_answer_only_falls_back_at_the_deadline(
    broker: Mosquitto, device: FakeDevice, mqtt: MqttCollector
) -> None:
    async def malformed(client: aiomqtt.Client, event: dict[str, Any]) -> None:
        await reply(client, event, {"request_id": "bad", "card_id": event["card_id"], "x": 1})

    async with running_authoriser(broker, malformed):
        _, sent = await swipe(device)
        _, answer = await card_reply(device)
        assert time.monotonic() - sent >= 0.5
        assert answer.account_status == 1  # fallback `reject`: unregistered
        assert (await mqtt.wait(f"{DEV}/response/card_reply"))["result"] == "invalid"
