"""The webhook unit with a real Mosquitto and a real HTTP endpoint that fails, times out,
closes the connection and then accepts. Sessions are published retained as the charging
service publishes them (API.md section 6), device events as the gateway does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from bridge.charging.model import iso
from bridge.charging.settings import ChargingSettings
from bridge.webhooks.unit import WebhookUnit
from tests.bridge.charging.harness import TOPICS, settings_for
from tests.bridge.helpers import mqtt_collector
from tests.bridge.webhooks.endpoint import Endpoint, Request, endpoint
from tests.broker import Mosquitto

SECRET = "s3cret"
S1, S2 = "11" * 16, "22" * 16


def hook_settings(broker: Mosquitto, tmp_path: Path, ep: Endpoint, **kw: Any) -> ChargingSettings:
    values = {
        "webhook": [ep.url],
        "webhook_secret": SECRET,
        "webhook_timeout_s": 0.5,
        "webhook_backoff_s": 0.02,
        "webhook_backoff_max_s": 0.1,
        **kw,
    }
    return settings_for(broker, tmp_path, **values)


@contextlib.asynccontextmanager
async def running_unit(settings: ChargingSettings) -> AsyncIterator[WebhookUnit]:
    unit = WebhookUnit(settings)
    task = asyncio.create_task(unit.run())
    try:
        async with asyncio.timeout(10):
            await unit.mqtt.wait_connected()  # subscribed: what is published now reaches it
        yield unit
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def session(session_id: str, status: str, version: int, **kw: Any) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "device_id": "04AB373B",
        "port": 2,
        "order_no": session_id,
        "status": status,
        "energy_kwh": 0.42,
        "last_update": iso(time.time()),
        "events": [{"ts": iso(time.time()), "type": status}],
        "version": version,
        **kw,
    }


async def publish_session(client: aiomqtt.Client, body: dict[str, Any]) -> None:
    await client.publish(TOPICS.session(body["session_id"]), json.dumps(body), qos=1, retain=True)


def signed(request: Request) -> bool:
    digest = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    return request.headers.get("x-chargebridge-signature") == f"sha256={digest}"


async def test_retried_until_accepted_with_the_same_key_body_and_signature(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        endpoint(["fail", "hang", "close", "ok"]) as ep,
        running_unit(hook_settings(broker, tmp_path, ep)),
        broker.client() as client,
        mqtt_collector(broker, TOPICS.webhook_stats) as stats,
    ):
        await publish_session(client, session(S1, "charging", 1))
        await publish_session(client, session(S1, "completed", 2))
        requests = await ep.wait(lambda rs: any(r.answer == "ok" for r in rs))
        assert [r.answer for r in requests] == ["fail", "hang", "close", "ok"]
        first = requests[0]
        assert (first.method, first.path) == ("POST", "/hook")
        assert first.headers["content-type"] == "application/json"
        assert first.headers["idempotency-key"] == f"{S1}:session_completed"
        assert first.headers["x-chargebridge-event"] == "session_completed"
        assert int(first.headers["content-length"]) == len(first.body)
        for r in requests:
            assert r.body == first.body and r.headers == first.headers and signed(r)
        body = json.loads(first.body)
        assert set(body) == {"event", "id", "ts", "session"}
        assert body["event"] == "session_completed" and body["id"] == f"{S1}:session_completed"
        assert body["session"]["status"] == "completed" and body["session"]["version"] == 2
        figures = await stats.latest(TOPICS.webhook_stats, lambda m: m["delivered"] == 1)
        assert figures["queued"] == 0 and figures["failures"] == 3
        assert figures["dead_lettered"] == 0


async def test_ordered_per_session_and_a_redelivered_session_is_not_sent_again(
    broker: Mosquitto, tmp_path: Path
) -> None:
    events = ["session_started", "session_completed"]
    async with (
        endpoint(["fail", "fail"]) as ep,
        broker.client() as client,
        mqtt_collector(broker, TOPICS.webhook_stats) as stats,
    ):
        settings = hook_settings(broker, tmp_path, ep, webhook_events=events)
        async with running_unit(settings):
            await publish_session(client, session(S1, "starting", 1))
            await publish_session(client, session(S1, "charging", 2))
            await publish_session(client, session(S1, "completed", 3))
            # until the unit has seen the 200s (stopped before, it would send again: the
            # endpoint recognises the Idempotency-Key)
            await stats.latest(TOPICS.webhook_stats, lambda m: m["delivered"] == 2)
        keys = [r.headers["idempotency-key"] for r in ep.requests]
        # the completion waited for the start, which failed twice first
        assert keys == [f"{S1}:session_started"] * 3 + [f"{S1}:session_completed"]
        # An older version arriving late, and the retained sessions redelivered to a new
        # unit on the same state dir, mean nothing new; a new session still goes.
        async with running_unit(settings) as unit:
            await publish_session(client, session(S1, "charging", 2))
            await publish_session(client, session(S2, "completed", 1))
            await stats.latest(TOPICS.webhook_stats, lambda m: m["delivered"] == 3)
            assert unit.stats()["queued"] == 0
        keys = [r.headers["idempotency-key"] for r in ep.delivered]
        assert keys == [
            f"{S1}:session_started",
            f"{S1}:session_completed",
            f"{S2}:session_completed",
        ]


async def test_nothing_lost_across_a_restart(broker: Mosquitto, tmp_path: Path) -> None:
    async with endpoint(["fail"] * 1000) as ep, broker.client() as client:
        settings = hook_settings(broker, tmp_path, ep, webhook_backoff_max_s=30.0)
        async with running_unit(settings) as unit:
            await publish_session(client, session(S1, "completed", 1))
            await ep.wait(lambda rs: len(rs) >= 2)
            assert unit.stats()["queued"] == 1
        failed = ep.requests[-1]
        # While it is stopped the session is cleared after its retention: the queue has it.
        await client.publish(TOPICS.session(S1), b"", qos=1, retain=True)
        ep.script.clear()  # the endpoint recovers
        async with running_unit(settings) as unit:
            await ep.wait(lambda rs: len(ep.delivered) == 1)
        [delivered] = ep.delivered
        assert delivered.body == failed.body and delivered.headers == failed.headers


async def test_dead_letter_after_max_attempts_then_the_session_goes_on(
    broker: Mosquitto, tmp_path: Path
) -> None:
    events = ["session_timeout", "session_completed", "device_offline"]
    async with endpoint(["fail", 404, "fail"]) as ep, broker.client() as client:
        settings = hook_settings(
            broker, tmp_path, ep, webhook_events=events, webhook_max_attempts=3
        )
        async with (
            running_unit(settings) as unit,
            mqtt_collector(broker, TOPICS.webhook_stats) as stats,
        ):
            await publish_session(client, session(S1, "charging", 1))
            await publish_session(client, session(S1, "timeout", 2))
            await publish_session(client, session(S1, "completed", 3))
            await ep.wait(lambda rs: len(ep.delivered) == 1)
            figures = await stats.latest(TOPICS.webhook_stats, lambda m: m["delivered"] == 1)
            assert unit.queue is not None
            [dead] = unit.queue.dead_letters()
            offline = {"type": "offline", "ts": iso(time.time()), "device_id": "04AB373B"}
            await client.publish(TOPICS.event("04AB373B", "device"), json.dumps(offline), qos=1)
            await ep.wait(lambda rs: len(ep.delivered) == 2)
        keys = [r.headers["idempotency-key"] for r in ep.requests]
        assert keys == [f"{S1}:session_timeout"] * 3 + [f"{S1}:session_completed"] + [
            f"04AB373B:device_offline:{offline['ts']}"
        ]
        assert (dead["key"], dead["attempts"], dead["reason"]) == (
            f"{S1}:session_timeout",
            3,
            "failed: HTTP 500",
        )
        assert figures["dead_lettered"] == 1 and figures["failures"] == 3
        body = json.loads(ep.requests[-1].body)
        assert body == {
            "event": "device_offline",
            "id": keys[-1],
            "ts": body["ts"],
            "device_id": "04AB373B",
            "payload": offline,
        }


async def test_sessions_retained_before_webhooks_existed_are_not_sent(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with endpoint() as ep, broker.client() as client:
        old = session(S1, "completed", 5, last_update=iso(time.time() - 3600))
        await publish_session(client, old)
        async with running_unit(hook_settings(broker, tmp_path, ep)):
            await publish_session(client, session(S2, "completed", 1))
            await ep.wait(lambda rs: len(rs) == 1)
            await publish_session(client, session(S1, "completed", 5))  # still nothing new
            await publish_session(client, session("33" * 16, "completed", 1))
            await ep.wait(lambda rs: len(rs) == 2)
        keys = [r.headers["idempotency-key"] for r in ep.requests]
        assert keys == [f"{S2}:session_completed", f"{'33' * 16}:session_completed"]


async def test_a_session_too_large_goes_without_its_events(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with endpoint() as ep, broker.client() as client:
        settings = hook_settings(broker, tmp_path, ep, webhook_max_body_bytes=2048)
        async with running_unit(settings):
            big = session(S1, "completed", 1)
            big["events"] = [{"ts": iso(time.time()), "type": "power", "x": "y" * 100}] * 50
            await publish_session(client, big)
            [request] = await ep.wait(lambda rs: len(rs) == 1)
        sent = json.loads(request.body)["session"]
        assert "events" not in sent and sent["energy_kwh"] == 0.42
        assert len(request.body) <= 2048
