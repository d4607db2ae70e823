"""Test parts for the charging service: a fake gateway and a watcher, both plain aiomqtt.

The fake gateway publishes events with the exact payloads of API.md section 4 and answers
`start_charging` / `stop_charging` requests on the device response topic like the gateway.
The watcher folds what the service publishes (sessions, stats, responses) into dicts and
lets a test await a condition on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from pydantic import BaseModel, TypeAdapter

from bridge.app import run_service
from bridge.charging.model import iso
from bridge.charging.settings import ChargingSettings
from bridge.mqtt.payloads import (
    StartChargingRequest,
    StopChargingRequest,
    device_event_adapter,
    order_event_adapter,
    port_event_adapter,
)
from bridge.mqtt.topics import Topics
from tests.broker import Mosquitto

BASE = "chargebridge"  # the topics the shipped ACL grants the bridge user
TOPICS = Topics(BASE)
DEV = "04AB373B"
ORDER = "0123456789ABCDEF0123456789ABCDEF"
_message_ids = itertools.count(1)
START_MODES = {"offline": 0, "online": 1, "code": 3}
EVENT_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "port": port_event_adapter,
    "order": order_event_adapter,
    "device": device_event_adapter,
}
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "start_charging": StartChargingRequest,
    "stop_charging": StopChargingRequest,
}


def settings_for(broker: Mosquitto, state_dir: Path, **kw: Any) -> ChargingSettings:
    values: dict[str, Any] = {
        "mqtt": broker.url,
        "base_topic": BASE,
        "state_dir": state_dir,
        "service_client_id": "chargebridge-service-test",
        "stats_interval": 0.05,
        "request_timeout_s": 5.0,
        "retry_backoff_s": 0.05,
        "cleanup_interval_s": 0.1,
    }
    values.update(kw)
    return ChargingSettings(**values)


@contextlib.asynccontextmanager
async def running_service(settings: ChargingSettings) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(run_service(settings, ready=ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- gateway event payloads (API.md section 4) ----------------------------------------


def _common(kind: str, command: int, ts: float | None, device_id: str) -> dict[str, Any]:
    return {
        "type": kind,
        "ts": iso(ts if ts is not None else time.time()),
        "device_id": device_id,
        "gateway_id": "gw-test",
        "command": command,
        "message_id": next(_message_ids),
    }


def power_event(
    energy_kwh: float,
    power_w: float = 180.0,
    *,
    order_no: str = ORDER,
    port: int = 2,
    duration_s: int = 300,
    ts: float | None = None,
    device_id: str = DEV,
    start_mode: str = "online",
) -> dict[str, Any]:
    return {
        **_common("power", 0x06, ts, device_id),
        "port": port,
        "status": "charging",
        "status_code": 1,
        "order_no": order_no,
        "duration_s": duration_s,
        "energy_kwh": energy_kwh,
        "power_w": power_w,
        "max_power_w": power_w + 5,
        "min_power_w": power_w - 5,
        "avg_power_w": power_w,
        "peak_power_w": power_w + 20,
        "voltage_v": 229.8,
        "current_a": 0.785,
        "temperature_c": 28.0,
        "port_temperature_c": None,
        "start_mode": start_mode,
        "start_mode_code": START_MODES[start_mode],
    }


def settled_event(
    energy_kwh: float,
    duration_s: int,
    *,
    order_no: str = ORDER,
    port: int = 2,
    ts: float | None = None,
    device_id: str = DEV,
    start_mode: str = "online",
    card_id: str = "00000000",
    stop_reason: str = "battery_full",
) -> dict[str, Any]:
    return {
        **_common("settled", 0x03, ts, device_id),
        "port": port,
        "order_no": order_no,
        "duration_s": duration_s,
        "max_power_w": 250.0,
        "energy_kwh": energy_kwh,
        "start_mode": start_mode,
        "start_mode_code": START_MODES[start_mode],
        "card_id": card_id,
        "stop_reason": stop_reason,
        "stop_reason_code": 1,
        "second_max_power_w": 240.0,
        "device_time": "2026-11-26T08:00:00.000Z",
        "occupied_minutes": None,
    }


def reply_event(
    kind: str, order_no: str, port: int, *, ok: bool = True, device_id: str = DEV
) -> dict[str, Any]:
    """`started` / `stopped` / `start_failed` / `stop_failed` from the 0x82 reply."""
    event = {
        **_common(kind, 0x82, None, device_id),
        "port": port,
        "order_no": order_no,
        "result": "success" if ok else "no_charger",
        "result_code": 0 if ok else 1,
        "reason": None if ok else "no charger plugged into the port",
        "waiting_ports": None,
    }
    return event


def confirmed_event(
    *,
    order_no: str = ORDER,
    port: int = 1,
    duration_s: int = 0,
    ts: float | None = None,
    device_id: str = DEV,
    start_mode: str = "offline",
) -> dict[str, Any]:
    """`confirmed` from a legacy pile's 0x04."""
    return {
        **_common("confirmed", 0x04, ts, device_id),
        "port": port,
        "order_no": order_no,
        "start_mode": start_mode,
        "start_mode_code": START_MODES[start_mode],
        "card_id": "00000000",
        "duration_s": duration_s,
    }


PORT_STATUS_CODES = {"idle": 0, "charging": 1, "plugged_full": 3, "float_charging": 5}


def heartbeat_event(
    *ports: tuple[str, float | None],
    ts: float | None = None,
    device_id: str = DEV,
    legacy: bool = True,
) -> dict[str, Any]:
    """The device `heartbeat` event: 0x01 (`legacy`, with per-port powers) or 0x21; `ports`
    are (status, power_w) for ports 1, 2, ..."""
    return {
        **_common("heartbeat", 0x01 if legacy else 0x21, ts, device_id),
        "firmware": "2.26" if legacy else None,
        "voltage_v": 229.5,
        "port_count": len(ports),
        "ports": [
            {
                "port": i + 1,
                "status": status,
                "status_code": PORT_STATUS_CODES[status],
                "power_w": power if legacy else None,
                "peak_power_w": power if legacy else None,
            }
            for i, (status, power) in enumerate(ports)
        ],
        "signal": 20,
        "temperature_c": 28.0,
        "iccid": None,
        "imei": None,
        "module_type": None,
        "host_time": None,
    }


def card_swipe_event(port: int = 2, device_id: str = DEV) -> dict[str, Any]:
    return {
        **_common("card_swipe", 0x02, None, device_id),
        "card_id": "1A2B3C4D",
        "card_number": 0x1A2B3C4D,
        "card_type": "old",
        "card_type_code": 0,
        "port": port,
        "balance_cents": 1200,
        "awaiting_reply": False,
    }


async def publish_event(client: aiomqtt.Client, kind: str, event: dict[str, Any]) -> bytes:
    """Publish as the gateway would; the gateway's own models check the payload is exact."""
    EVENT_ADAPTERS[kind].validate_python(event)
    payload = json.dumps(event).encode()
    await client.publish(TOPICS.event(event["device_id"], kind), payload, qos=1)
    return payload


# --- fake gateway ------------------------------------------------------------------


@dataclass
class FakeGateway:
    """Answers device commands; `behaviour` per command: accept, refuse, offline, silent."""

    client: aiomqtt.Client
    behaviour: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    received: asyncio.Condition = field(default_factory=asyncio.Condition)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self) -> None:
        await self.client.subscribe(TOPICS.all_device_requests, qos=1)
        self.subscribed.set()
        async for message in self.client.messages:
            parsed = TOPICS.parse_device_request(str(message.topic))
            assert parsed is not None and isinstance(message.payload, bytes)
            body = json.loads(message.payload)
            REQUEST_MODELS[parsed.command].model_validate(body)  # what the gateway accepts
            async with self.received:
                self.requests.append((parsed.command, body))
                self.received.notify_all()
            await self.answer(parsed.device_id, parsed.command, body)

    async def answer(self, device_id: str, command: str, body: dict[str, Any]) -> None:
        how = self.behaviour.get(command, "accept")
        if how == "silent":
            return
        starting = command == "start_charging"
        port = body["port"] if isinstance(body["port"], int) else 1
        response: dict[str, Any] = {"request_id": body.get("request_id"), "code": None}
        if how == "accept":
            kind = "started" if starting else "stopped"
            await publish_event(self.client, "order", reply_event(kind, body["order_no"], port))
            response |= {"ok": True, "result": "success", "message": "executed", "port": port}
            response |= {"code": 0, "order_no": body["order_no"]}
        elif how == "refuse":
            kind = "start_failed" if starting else "stop_failed"
            event = reply_event(kind, body["order_no"], port, ok=False)
            await publish_event(self.client, "order", event)
            response |= {"ok": False, "result": "no_charger", "code": 1}
            response |= {"message": "no charger plugged into the port"}
        else:
            response |= {"ok": False, "result": how, "message": f"device {how}"}
        await self.client.publish(
            TOPICS.device_response(device_id, command), json.dumps(response), qos=1
        )

    async def wait_requests(self, n: int, timeout: float = 10) -> list[tuple[str, dict[str, Any]]]:
        async with asyncio.timeout(timeout), self.received:
            await self.received.wait_for(lambda: len(self.requests) >= n)
        return self.requests


@contextlib.asynccontextmanager
async def fake_gateway(broker: Mosquitto, **behaviour: str) -> AsyncIterator[FakeGateway]:
    async with broker.client(identifier="fake-gateway") as client:
        gateway = FakeGateway(client, dict(behaviour))
        task = asyncio.create_task(gateway.serve())
        async with asyncio.timeout(10):
            await gateway.subscribed.wait()
        try:
            yield gateway
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- watcher -------------------------------------------------------------------------


@dataclass
class Watcher:
    """What the service published: retained sessions and stats, and every response."""

    client: aiomqtt.Client
    sessions: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    stats_arrivals: list[float] = field(default_factory=list)  # loop time of each message
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self) -> None:
        for topic in (TOPICS.all_sessions, TOPICS.charging_stats, TOPICS.charging_response("+")):
            await self.client.subscribe(topic, qos=1)
        self.subscribed.set()
        async for message in self.client.messages:
            topic = str(message.topic)
            raw = message.payload if isinstance(message.payload, bytes) else b""
            data = json.loads(raw) if raw else None
            async with self.changed:
                if (sid := TOPICS.parse_session(topic)) is not None:
                    self.sessions[sid] = data
                elif topic == TOPICS.charging_stats:
                    self.stats = data or {}
                    self.stats_arrivals.append(asyncio.get_running_loop().time())
                elif data is not None:
                    self.responses[f"{topic.rsplit('/', 1)[1]}:{data['request_id']}"] = data
                self.changed.notify_all()

    async def until(self, predicate: Callable[[], Any], timeout: float = 10) -> Any:
        """Wait until `predicate()` is truthy; returns its value."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)
            return predicate()

    async def session(self, session_id: str, status: str, timeout: float = 10) -> dict[str, Any]:
        def current() -> dict[str, Any] | None:
            s = self.sessions.get(session_id)
            return s if s is not None and s["status"] == status else None

        result: dict[str, Any] = await self.until(current, timeout)
        return result

    async def stats_where(self, timeout: float = 10, **expected: Any) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            s = self.stats
            return s if all(s.get(k) == v for k, v in expected.items()) else None

        try:
            result: dict[str, Any] = await self.until(matches, timeout)
        except TimeoutError:
            raise AssertionError(f"stats never matched {expected}; last: {self.stats}") from None
        return result

    async def response(self, action: str, request_id: str, timeout: float = 10) -> dict[str, Any]:
        key = f"{action}:{request_id}"
        result: dict[str, Any] = await self.until(lambda: self.responses.get(key), timeout)
        return result


@contextlib.asynccontextmanager
async def watcher(broker: Mosquitto) -> AsyncIterator[Watcher]:
    async with broker.client() as client:
        w = Watcher(client)
        task = asyncio.create_task(w.serve())
        async with asyncio.timeout(10):
            await w.subscribed.wait()
        try:
            yield w
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def request(client: aiomqtt.Client, action: str, body: dict[str, Any] | bytes) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    await client.publish(TOPICS.charging_request(action), payload, qos=1)
