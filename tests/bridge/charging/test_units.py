"""The charging service in memory: a fake publisher and message source instead of a broker.

The broker tests (test_service.py, test_durability.py) prove the wiring; these drive the
service's units directly, batch by batch, with the clock injected, so that each step of a
session's life is checked without waiting for anything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt

from bridge.charging.service import ChargingService
from tests.bridge.charging.harness import (
    BASE,
    DEV,
    ORDER,
    REQUEST_MODELS,
    TOPICS,
    power_event,
    reply_event,
    settled_event,
)

T0 = 1_790_000_000.0


class FakeClient:
    """Records what the service publishes; hands it messages in the batches a test makes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes | str, bool]] = []
        self.acked: list[aiomqtt.Message] = []
        self.incoming: asyncio.Queue[list[aiomqtt.Message]] = asyncio.Queue()

    def submit(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        self.published.append((topic, payload, retain))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def batches(self, limit: int, every: float = 0.0) -> AsyncIterator[list[aiomqtt.Message]]:
        """The lists put on `incoming`, until an empty one (the end, for a test)."""
        while batch := await self.incoming.get():
            yield batch

    def ack(self, message: aiomqtt.Message) -> None:
        self.acked.append(message)

    def on(self, topic: str) -> list[Any]:
        """Payloads published on `topic`, JSON decoded (None for a cleared retained one)."""
        return [json.loads(p) if p else None for t, p, _ in self.published if t == topic]

    def commands(self, name: str) -> list[dict[str, Any]]:
        """Device commands sent, each checked against the gateway's own request model."""
        out = []
        for topic, payload, _ in self.published:
            parsed = TOPICS.parse_device_request(topic)
            if parsed is not None and parsed.command == name:
                body = json.loads(payload)
                REQUEST_MODELS[name].model_validate(body)
                out.append(body)
        return out


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def message(topic: str, body: dict[str, Any] | bytes) -> aiomqtt.Message:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return aiomqtt.Message(topic, payload, 1, False, 1, None)


def port_event(body: dict[str, Any]) -> aiomqtt.Message:
    return message(f"{BASE}/devices/{DEV}/event/port", body)


def order_event(body: dict[str, Any]) -> aiomqtt.Message:
    return message(f"{BASE}/devices/{DEV}/event/order", body)


def request(action: str, body: dict[str, Any]) -> aiomqtt.Message:
    return message(TOPICS.charging_request(action), body)


def response(command: str, body: dict[str, Any]) -> aiomqtt.Message:
    full = {"ok": True, "code": 0, "result": "success", "message": "executed", **body}
    return message(TOPICS.device_response(DEV, command), full)


async def settle_tasks(service: ChargingService) -> None:
    """Let the request tasks run until each waits for its response or is done."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_start_request_goes_through_started_power_settled_to_completed(make: Any) -> None:
    service, client = make()
    service.handle_batch([request("start", {"request_id": "r1", "device_id": DEV, "port": 2})])
    (order_no,) = service.sessions
    assert service.sessions[order_no].status == "starting"
    await settle_tasks(service)
    (command,) = client.commands("start_charging")
    assert command["order_no"] == order_no and command["port"] == 2

    # The gateway publishes the device's `started` event, then the command's response.
    service.handle_batch([order_event(reply_event("started", order_no, 2))])
    service.handle_batch([response("start_charging", {"request_id": command["request_id"]})])
    await settle_tasks(service)
    (answer,) = client.on(TOPICS.charging_response("start"))
    assert answer["ok"] is True and answer["request_id"] == "r1"
    assert answer["session"]["status"] == "charging"
    # Applied once: one `started` entry, one start counted.
    session = service.sessions[order_no]
    assert [e["type"] for e in session.records] == ["start_requested", "started"]
    assert service.stats.charging_start_events == 1

    service.handle_batch([port_event(power_event(0.2, order_no=order_no))])
    service.handle_batch([order_event(settled_event(0.5, 3600, order_no=order_no))])
    final = client.on(TOPICS.session(order_no))[-1]
    assert final["status"] == "completed" and final["energy_kwh"] == 0.5
    assert [e["type"] for e in final["events"]] == [
        "start_requested",
        "started",
        "power",
        "settled",
    ]
    assert final == service.sessions[order_no].to_payload()
    stats = service.stats
    assert (stats.sessions_created, stats.sessions_completed, stats.power_update_events) == (
        1,
        1,
        1,
    )
    assert stats.total_events_processed == 3


async def test_a_start_without_an_order_event_is_decided_by_the_response(make: Any) -> None:
    service, client = make()
    service.handle_batch([request("start", {"device_id": DEV, "port": "auto"})])
    await settle_tasks(service)
    (command,) = client.commands("start_charging")
    reply = {"request_id": command["request_id"], "port": 3}
    service.handle_batch([response("start_charging", reply)])
    await settle_tasks(service)
    (session,) = service.sessions.values()
    assert session.status == "charging" and session.port == 3
    assert service.stats.charging_start_events == 1


async def test_stop_is_applied_once(make: Any, clock: Clock) -> None:
    service, client = make()
    service.handle_batch([port_event(power_event(0.1))])  # a card start: created by 0x06
    clock.now += 10
    service.handle_batch([request("stop", {"request_id": "s", "session_id": ORDER})])
    assert service.sessions[ORDER].status == "stopping"
    await settle_tasks(service)
    (command,) = client.commands("stop_charging")
    assert command == {"request_id": command["request_id"], "port": 2, "order_no": ORDER}
    service.handle_batch([order_event(reply_event("stopped", ORDER, 2))])
    assert service.sessions[ORDER].stop_confirmed
    service.handle_batch([response("stop_charging", {"request_id": command["request_id"]})])
    await settle_tasks(service)
    (answer,) = client.on(TOPICS.charging_response("stop"))
    assert answer["ok"] is True and answer["message"] == "stopping"
    types = [e["type"] for e in service.sessions[ORDER].records]
    assert types == ["power", "stop_requested", "stopped"]
    assert service.stats.charging_stop_events == 1


async def test_a_busy_gateway_is_asked_again(make: Any) -> None:
    service, client = make()
    service.handle_batch([request("start", {"device_id": DEV, "port": 1})])
    await settle_tasks(service)
    (first,) = client.commands("start_charging")
    busy = {"request_id": first["request_id"], "ok": False, "result": "busy", "message": "full"}
    service.handle_batch([response("start_charging", busy)])
    await settle_tasks(service)
    again, second = client.commands("start_charging")
    assert again == first
    assert second["request_id"] != first["request_id"] and second["order_no"] == first["order_no"]
    offline = {"request_id": second["request_id"], "ok": False, "result": "offline"}
    service.handle_batch([response("start_charging", {**offline, "message": "device offline"})])
    await settle_tasks(service)
    (answer,) = client.on(TOPICS.charging_response("start"))
    assert answer["ok"] is False and answer["message"] == "start refused: device offline"
    # it never reached a device: no session is kept (issue 15), its retained one is cleared
    assert answer["session"] is None and service.sessions == {}
    assert client.on(TOPICS.session(first["order_no"]))[-1] is None
    assert service.stats.retry_attempts == 1


async def test_silence_times_out_and_retention_clears(make: Any, clock: Clock) -> None:
    service, client = make(session_timeout_s=900, session_retention_s=3600)
    service.handle_batch([port_event(power_event(0.1))])
    clock.now += 899
    service.cleanup()
    assert service.sessions[ORDER].status == "charging"
    clock.now += 1
    service.cleanup()
    assert service.sessions[ORDER].status == "timeout"
    assert client.on(TOPICS.session(ORDER))[-1]["status"] == "timeout"
    assert service.stats.sessions_timeout == 1
    clock.now += 3600
    service.cleanup()
    assert ORDER not in service.sessions
    assert client.published[-1] == (TOPICS.session(ORDER), b"", True)


async def test_a_redelivered_event_is_applied_once(make: Any) -> None:
    service, _ = make()
    power = port_event(power_event(0.1))
    service.handle_batch([power])
    before = service.sessions[ORDER]
    service.handle_batch([power])  # the broker redelivers: same topic, same bytes
    service.handle_batch([power, power])
    assert service.sessions[ORDER] is before
    assert service.stats.duplicate_events == 3 and service.stats.total_events_processed == 1


async def test_a_settlement_resent_after_its_session_was_cleared_counts_once(
    make: Any, clock: Clock
) -> None:
    service, client = make(session_retention_s=60)
    service.handle_batch([order_event(settled_event(0.5, 3600, ts=T0))])
    assert service.stats.sessions_completed == 1
    clock.now += 61
    service.cleanup()
    assert ORDER not in service.sessions
    published = len(client.published)
    # The device resends the 0x03 in a new frame (new message id): a different message.
    service.handle_batch([order_event(settled_event(0.5, 3600, ts=T0))])
    assert ORDER not in service.sessions
    assert service.stats.sessions_completed == 1 and service.stats.sessions_created == 1
    assert service.stats.duplicate_events == 1
    assert len(client.published) == published


async def test_a_batch_is_one_commit_and_one_publish_per_session(make: Any) -> None:
    service, client = make()
    events = [port_event(power_event(kwh / 10, duration_s=kwh)) for kwh in range(1, 4)]
    commits = 0
    commit = service.store.commit

    def counting(**kw: Any) -> None:
        nonlocal commits
        commits += 1
        commit(**kw)

    service.store.commit = counting  # type: ignore[method-assign]
    service.handle_batch(events)
    assert commits == 1
    (state,) = client.on(TOPICS.session(ORDER))
    assert state["energy_kwh"] == 0.3 and len(state["events"]) == 3
    assert service.stats.power_update_events == 3


async def test_consume_acknowledges_only_after_the_commit(make: Any) -> None:
    service, client = make()
    committed: list[int] = []
    commit = service.store.commit

    def watching(**kw: Any) -> None:
        assert client.acked == []
        commit(**kw)
        committed.append(1)

    service.store.commit = watching  # type: ignore[method-assign]
    batch = [port_event(power_event(0.1)), message(f"{BASE}/devices/{DEV}/event/port", b"{")]
    await client.incoming.put(batch)
    await client.incoming.put([])
    async with asyncio.timeout(5):
        await service.consume()
    assert committed == [1] and client.acked == batch
    assert service.stats.processing_errors == 1


async def test_requests_are_answered_with_the_reason(make: Any) -> None:
    service, client = make()
    service.handle_batch([request("stop", {"request_id": "x", "session_id": ORDER})])
    (answer,) = client.on(TOPICS.charging_response("stop"))
    assert answer == {
        "request_id": "x",
        "ok": False,
        "message": f"no session {ORDER}",
        "session": None,
    }
