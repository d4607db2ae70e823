"""The charging service: gateway events in over MQTT, sessions and statistics out, retained.

It talks to devices only through MQTT topics (API.md sections 3-6); the pure state machine
is `bridge.charging.model`, the durable state `bridge.charging.store`.

Delivery: the MQTT session is persistent (fixed client id, no clean start, QoS 1) and
incoming messages are acknowledged to the broker only after their effects are committed to
SQLite, so nothing the broker accepted is lost to a crash; a redelivered message is
recognised by its fingerprint and skipped, so nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from bridge.charging import model as m
from bridge.charging.messages import (
    DeviceEvent,
    QueryRequest,
    RequestError,
    StartRequest,
    StopRequest,
    parse_event,
    parse_json_object,
    parse_request,
    request_id_of,
)
from bridge.charging.settings import ChargingSettings
from bridge.charging.store import ChargingStore
from bridge.mqtt.client import MqttClient, MqttSettings, payload_bytes
from bridge.mqtt.payloads import oversized
from bridge.mqtt.topics import Topics
from bridge.webhooks.unit import webhook_units

log = logging.getLogger("chargebridge.charging")

DEVICE_COMMANDS = ("start_charging", "stop_charging")
# Messages handled per store transaction: as many as the broker has sent us, up to this.
MAX_BATCH = 1000
ADOPT_TIMEOUT_S = 10.0
# Gateway results worth a resend: the device did not answer, or its command queue was full.
RETRYABLE = frozenset({"timeout", "busy"})


@dataclasses.dataclass
class Batch:
    """State changes of the messages handled together, written in ONE transaction."""

    changed: dict[str, m.ChargingSession] = dataclasses.field(default_factory=dict)
    deleted: set[str] = dataclasses.field(default_factory=set)
    seen: dict[str, None] = dataclasses.field(default_factory=dict)  # ordered set
    events: int = 0  # gateway event messages whose processing time is measured
    # Fingerprints of the batch's messages looked up in the store in one query, and those
    # the store already had.
    looked_up: set[str] = dataclasses.field(default_factory=set)
    known: set[str] = dataclasses.field(default_factory=set)

    def change(self, session: m.ChargingSession) -> None:
        self.deleted.discard(session.session_id)
        self.changed[session.session_id] = session

    def delete(self, session_id: str) -> None:
        self.changed.pop(session_id, None)
        self.deleted.add(session_id)


def new_order_no() -> str:
    """16 random bytes as 32 upper-case hex digits (API.md section 2)."""
    return os.urandom(16).hex().upper()


class ChargingService:
    """Owns the sessions; every state change goes model -> store -> MQTT, in that order."""

    def __init__(
        self,
        settings: ChargingSettings,
        store: ChargingStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.topics = Topics(settings.base_topic)
        self.clock = clock
        self.sessions, self.stats = store.load()
        self.mqtt: MqttClient | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats_changed = asyncio.Event()
        self._batch: Batch | None = None  # set while `consume` handles a batch
        # Set by the first on_connect: nothing may be published before adoption has read
        # what the broker retains, or our empty state would overwrite it.
        self.current = asyncio.Event()

    # --- wiring -----------------------------------------------------------------
    def mqtt_settings(self) -> MqttSettings:
        return self.settings.mqtt_settings(
            client_id=self.settings.client_id,
            clean_start=False,
            session_expiry_s=self.settings.mqtt_session_expiry_s,
            manual_ack=True,
            receive_maximum=MAX_BATCH,
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        t = self.topics
        return [
            (t.all_port_events, 1),
            (t.all_order_events, 1),
            *((t.device_response("+", command), 1) for command in DEVICE_COMMANDS),
            (t.all_charging_requests, 1),
        ]

    @property
    def client(self) -> MqttClient:
        assert self.mqtt is not None, "ChargingService.mqtt is set by run_service"
        return self.mqtt

    # --- (re)connection ------------------------------------------------------------
    async def on_connect(self) -> None:
        """Adopt retained state into an empty store, then republish everything we hold."""
        if not self.store.initialized:
            await self._adopt()
        futures = [self._publish_session(s.session_id, s.to_json()) for s in self.sessions.values()]
        futures.append(self._publish_stats())
        await asyncio.gather(*futures)
        self.current.set()
        log.info("republished %d sessions and the statistics", len(self.sessions))

    async def _adopt(self) -> None:
        """Read what the broker retains under our topics; a probe message marks the end.

        The broker queues the retained messages of a subscription before anything the same
        client publishes afterwards, so once our own probe comes back we have them all.
        """
        t = self.topics
        probe = t.adoption_probe(uuid.uuid4().hex)
        settings = self.mqtt_settings().model_copy(
            update={
                "client_id": "",
                "clean_start": True,
                "session_expiry_s": None,
                "manual_ack": False,
            }
        )
        subs = [(t.all_sessions, 1), (t.charging_stats, 1), (probe, 1)]
        sessions: dict[str, m.ChargingSession] = {}
        stats: m.ChargingStats | None = None
        try:
            async with (
                asyncio.timeout(ADOPT_TIMEOUT_S),
                MqttClient(settings, subscriptions=subs) as c,
            ):
                await c.connected.wait()
                c.submit(probe, b"", qos=1)
                async for message in c.messages:
                    topic = str(message.topic)
                    if topic == probe:
                        break
                    payload = payload_bytes(message)
                    if not payload:
                        continue
                    try:
                        data = json.loads(payload)
                        if topic == t.charging_stats:
                            stats = m.ChargingStats.from_payload(data)
                        elif t.parse_session(topic):
                            s = m.ChargingSession.from_payload(data)
                            sessions[s.session_id] = s
                    except (ValueError, TypeError) as exc:
                        log.warning("not adopting %s: %s", topic, exc)
        except TimeoutError:
            log.warning("adopting retained state timed out; starting with what was read")
        self.sessions.update(sessions)
        if stats is not None:
            self.stats = stats
        self.store.commit(
            now=self.clock(),
            sessions=[(s.session_id, s.to_json()) for s in self.sessions.values()],
            stats=self.stats,
            initialized=True,
        )
        log.info("adopted %d retained sessions (statistics: %s)", len(sessions), stats is not None)

    # --- publishing ----------------------------------------------------------------
    def _publish_session(self, session_id: str, payload: str) -> asyncio.Future[None]:
        return self.client.submit(self.topics.session(session_id), payload, retain=True)

    def _clear_session(self, session_id: str) -> asyncio.Future[None]:
        return self.client.submit(self.topics.session(session_id), b"", retain=True)

    def _publish_stats(self) -> asyncio.Future[None]:
        payload = self.stats.to_payload(self.active_count(), self.clock())
        return self.client.submit(
            self.topics.charging_stats, json.dumps(payload, separators=(",", ":")), retain=True
        )

    def active_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.active)

    async def stats_loop(self) -> None:
        """Publish the statistics when they changed, at most every `stats_interval`."""
        await self.current.wait()
        await asyncio.sleep(self.settings.stats_interval)  # on_connect has just published
        while True:
            await self._stats_changed.wait()
            self._stats_changed.clear()
            self.store.commit(now=self.clock(), stats=self.stats)  # keeps processing times
            await self._publish_stats()
            await asyncio.sleep(self.settings.stats_interval)

    def _count(self, **counts: int | float) -> None:
        self.stats = self.stats.add(**counts)
        self._stats_changed.set()

    # --- applying state changes -----------------------------------------------------
    def apply(
        self,
        session: m.ChargingSession | None,
        event: m.Event,
        *,
        seen: tuple[str, ...] = (),
        received: bool = False,
    ) -> tuple[m.ChargingSession | None, frozenset[m.Effect]]:
        """Run one transition; its result is persisted (one transaction) and published with
        the batch being handled, or at once outside a batch.

        `received` marks a gateway event message: it is counted as processed (unless it is a
        resent settlement) and its processing time measured.
        """
        new, effects = m.transition(session, event)
        if not seen and effects <= {m.Effect.IGNORED}:
            return new, effects
        self.stats = self.stats.tally(effects, new)
        batch = self._batch or Batch()
        if received and m.Effect.DUPLICATE not in effects:
            self.stats = self.stats.add(total_events_processed=1)
        if received:
            batch.events += 1
        if new is not None and m.Effect.CHANGED in effects:
            self.sessions[new.session_id] = new
            batch.change(new)
        elif m.Effect.EXPIRED in effects and session is not None:
            self.sessions.pop(session.session_id, None)
            batch.delete(session.session_id)
        if m.Effect.COMPLETED in effects and new is not None:
            seen = (*seen, settlement_key(new.device_id, new.port, new.session_id))
        batch.seen.update(dict.fromkeys(seen))
        self._stats_changed.set()
        if self._batch is None:
            self._flush(batch, time.perf_counter())
        return new, effects

    def _flush(self, batch: Batch, received: float) -> None:
        """Commit a batch's changes, then publish each changed session once (its newest
        state: the retained message is what matters)."""
        rows = [(s.session_id, s.to_json()) for s in batch.changed.values()]
        self.store.commit(
            now=self.clock(),
            sessions=rows,
            deleted=batch.deleted,
            stats=self.stats,
            seen=batch.seen,
        )
        published = [self._publish_session(sid, text) for sid, text in rows]
        published += [self._clear_session(sid) for sid in batch.deleted]
        if batch.events:
            self._measure(published, received, batch.events)

    def _has_seen(self, key: str) -> bool:
        batch = self._batch
        if batch is not None:
            if key in batch.seen:
                return True
            if key in batch.looked_up:
                return key in batch.known
        return self.store.has_seen(key)

    def _measure(self, published: list[asyncio.Future[None]], received: float, count: int) -> None:
        """Processing time: message receipt until the broker acknowledged its new state."""

        def done(_: object) -> None:
            elapsed_ms = (time.perf_counter() - received) * 1000.0
            self._count(total_processing_time_ms=elapsed_ms * count, processing_samples=count)

        if not published:
            done(None)
            return
        gathered = asyncio.gather(*published, return_exceptions=True)
        gathered.add_done_callback(done)

    # --- incoming messages ------------------------------------------------------------
    async def consume(self) -> None:
        """Handle what the broker has sent as one batch: one transaction, then the acks.

        A message is acknowledged to the broker only after its effects are committed; if the
        commit fails the service stops (unacknowledged, the messages are redelivered)."""
        async for messages in self.client.batches(MAX_BATCH, self.settings.batch_interval_s):
            received = time.perf_counter()
            self._batch = batch = Batch()
            keys = [fingerprint(m) for m in messages]
            batch.looked_up = set(keys)
            batch.known = self.store.seen_among(keys)
            try:
                for message, key in zip(messages, keys, strict=True):
                    try:
                        self.handle(message, key)
                    except Exception:
                        log.exception("processing a message on %s failed", message.topic)
                        self._count(processing_errors=1)
            finally:
                self._batch = None
            try:
                self._flush(batch, received)
            except Exception:
                log.critical("cannot write the state store %s; stopping", self.store.path)
                raise
            for message in messages:
                self.client.ack(message)

    def handle(self, message: aiomqtt.Message, key: str) -> None:
        """One message; `key` is its fingerprint."""
        topic = str(message.topic)
        payload = payload_bytes(message)
        action = self.topics.parse_charging_request(topic)
        if action is not None:
            self.handle_request(action, payload)
            return
        parts = self.topics.parse_device_topic(topic)
        if parts is None:
            return
        device_id, rest = parts
        if rest in ("event/port", "event/order"):
            self.handle_event(topic, key, device_id, payload)
        elif rest.startswith("response/"):
            self.handle_reply(payload)

    def handle_reply(self, payload: bytes) -> None:
        """A device command response: wake the request waiting for it (others are stale)."""
        try:
            data = parse_json_object(payload)
        except RequestError:
            return
        future = self._replies.get(request_id_of(data) or "")
        if future is not None and not future.done():
            future.set_result(data)

    def handle_event(self, topic: str, key: str, device_id: str, payload: bytes) -> None:
        """One gateway event message, applied at most once however often it is delivered
        (`key`, its fingerprint, names it)."""
        if self._has_seen(key):
            self._commit_counts(duplicate_events=1)
            return
        try:
            if too_big := oversized(payload):
                raise RequestError(too_big)
            event = parse_event(device_id, parse_json_object(payload), self.clock())
        except RequestError as exc:
            log.warning("unusable event on %s: %s", topic, exc)
            self._commit_counts(key, processing_errors=1)
            return
        if self.settings.event_logging:
            log.info(
                "event %s from %s port %s order %s",
                event.type,
                device_id,
                event.port,
                event.order_no,
            )
        if event.event is None or not self.settings.session_tracking:
            self._commit_counts(key, measured=True, total_events_processed=1)
            return
        session = self._session_for(event)
        if session is None and self._already_settled(event):
            self._commit_counts(key, duplicate_events=1)
            return
        self.apply(session, event.event, seen=(key,), received=True)

    def _commit_counts(self, *seen: str, measured: bool = False, **counts: int) -> None:
        """Counts (and fingerprints) of a message that changes no session."""
        self.stats = self.stats.add(**counts)
        batch = self._batch or Batch()
        batch.seen.update(dict.fromkeys(seen))
        batch.events += measured
        self._stats_changed.set()
        if self._batch is None:
            self._flush(batch, time.perf_counter())

    def _already_settled(self, event: DeviceEvent) -> bool:
        """A settlement resent after its session was cleared must not create it again."""
        if not isinstance(event.event, m.Settled):
            return False
        e = event.event
        return self._has_seen(settlement_key(e.device_id, e.port, e.order_no))

    def _session_for(self, event: DeviceEvent) -> m.ChargingSession | None:
        if event.order_no is not None:
            return self.sessions.get(event.order_no)
        # Devices before protocol v6.2 reply to 0x82 without the order number.
        if event.port is not None:
            return self.active_on(event.device_id, event.port)
        return None

    def active_on(self, device_id: str, port: int) -> m.ChargingSession | None:
        for s in self.sessions.values():
            if s.active and s.device_id == device_id and s.port == port:
                return s
        return None

    # --- requests ------------------------------------------------------------------------
    def respond(
        self,
        action: str,
        request_id: str | None,
        ok: bool,
        message: str,
        session: m.ChargingSession | None = None,
    ) -> None:
        body = {
            "request_id": request_id,
            "ok": ok,
            "message": message,
            "session": None if session is None else session.to_payload(),
        }
        self.client.submit(self.topics.charging_response(action), json.dumps(body))

    def handle_request(self, action: str, payload: bytes) -> None:
        request_id: str | None = None
        try:
            if too_big := oversized(payload):
                raise RequestError(too_big)
            data = parse_json_object(payload)
            request_id = request_id_of(data)
            request = parse_request(action, data)
            if not self.settings.session_tracking:
                raise RequestError("session tracking is disabled in this service")
            if isinstance(request, StartRequest):
                self._start(request)
            elif isinstance(request, StopRequest):
                self._stop(request)
            elif isinstance(request, QueryRequest):
                session = self._target(request)
                self.respond(action, request_id, True, session.status, session)
        except RequestError as exc:
            self.respond(action, request_id, False, str(exc))

    def _target(self, request: StopRequest | QueryRequest) -> m.ChargingSession:
        if request.session_id is not None:
            session = self.sessions.get(request.session_id)
            if session is None:
                raise RequestError(f"no session {request.session_id}")
            return session
        assert request.device_id is not None and request.port is not None
        found = self.active_on(request.device_id, request.port) or self._latest_on(
            request.device_id, request.port
        )
        if found is None:
            raise RequestError(f"no session on {request.device_id} port {request.port}")
        return found

    def _latest_on(self, device_id: str, port: int) -> m.ChargingSession | None:
        on_port = [s for s in self.sessions.values() if s.device_id == device_id and s.port == port]
        return max(on_port, key=lambda s: s.start_time, default=None)

    def _start(self, request: StartRequest) -> None:
        order_no = request.order_no or new_order_no()
        if order_no in self.sessions:
            raise RequestError(f"order_no {order_no} is already used by a session")
        port = request.port if isinstance(request.port, int) else None
        if port is not None and (busy := self.active_on(request.device_id, port)) is not None:
            raise RequestError(
                f"port {port} of {request.device_id} has an active session {busy.session_id}"
                f" ({busy.status})"
            )
        event = m.StartRequested(
            ts=self.clock(), order_no=order_no, device_id=request.device_id, port=port
        )
        self.apply(None, event)
        command = request.device_command(order_no, "")
        self._spawn(self._finish_start(request.request_id, order_no, command))

    async def _finish_start(
        self, request_id: str | None, order_no: str, command: dict[str, Any]
    ) -> None:
        session = self.sessions[order_no]
        reply = await self.device_command(session.device_id, "start_charging", command)
        now = self.clock()
        event: m.Event
        if reply.get("ok") is True:
            port = reply.get("port")
            event = m.StartAccepted(ts=now, port=port if isinstance(port, int) else None)
        else:
            event = m.StartRefused(ts=now, reason=reply_reason(reply))
        new, _ = self.apply(self.sessions.get(order_no), event)
        # The `started` order event may have made it `charging` before a lost response.
        ok = new is not None and new.status in ("charging", "stopping")
        message = "started" if ok else f"start refused: {reply_reason(reply)}"
        self.respond("start", request_id, ok, message, new)

    def _stop(self, request: StopRequest) -> None:
        session = self._target(request)
        new, effects = self.apply(session, m.StopRequested(ts=self.clock()))
        if m.Effect.CHANGED not in effects or new is None:
            raise RequestError(f"session {session.session_id} is {session.status}: cannot stop")
        command = {"port": new.port, "order_no": new.order_no}
        self._spawn(self._finish_stop(request.request_id, new, command))

    async def _finish_stop(
        self, request_id: str | None, session: m.ChargingSession, command: dict[str, Any]
    ) -> None:
        reply = await self.device_command(session.device_id, "stop_charging", command)
        ok = reply.get("ok") is True
        now = self.clock()
        event: m.Event = (
            m.StopAccepted(ts=now) if ok else m.StopRefused(ts=now, reason=reply_reason(reply))
        )
        new, _ = self.apply(self.sessions.get(session.session_id), event)
        message = "stopping" if ok else f"stop refused: {reply_reason(reply)}"
        self.respond("stop", request_id, ok, message, new or self.sessions.get(session.session_id))

    async def device_command(
        self, device_id: str, command: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Send a device command and wait for its response; a timeout is retried.

        A command the gateway reports as `timeout` (the device did not answer) or `busy`,
        or that gets no response at all within `request_timeout_s` (gateway away), is sent
        again up to `max_retries` times after `retry_backoff_s`, doubling; `offline` and
        refusals are final. Resending is safe: the order number makes it idempotent.
        """
        backoff = self.settings.retry_backoff_s
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                self._count(retry_attempts=1)
                await asyncio.sleep(backoff)
                backoff *= 2
            request_id = uuid.uuid4().hex
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._replies[request_id] = future
            topic = self.topics.device_request(device_id, command)
            self.client.submit(topic, json.dumps({**body, "request_id": request_id}))
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    reply = await future
            except TimeoutError:
                reply = {
                    "ok": False,
                    "result": "timeout",
                    "message": f"no response in {self.settings.request_timeout_s} s",
                }
            finally:
                self._replies.pop(request_id, None)
            if reply.get("result") not in RETRYABLE:
                return reply
        return reply

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._report_failure)

    def _report_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("request task failed", exc_info=task.exception())
            self._count(processing_errors=1)

    # --- housekeeping ------------------------------------------------------------------
    async def cleanup_loop(self) -> None:
        await self.current.wait()
        while True:
            await asyncio.sleep(self.settings.cleanup_interval_s)
            self.cleanup()

    def cleanup(self) -> None:
        """Mark silent sessions `timeout`, clear expired ones, forget old fingerprints."""
        now = self.clock()
        tick = m.Tick(
            ts=now,
            session_timeout=self.settings.session_timeout_s,
            retention=self.settings.session_retention_s,
        )
        for session in list(self.sessions.values()):
            if m.transition(session, tick)[1]:
                self.apply(session, tick)
        self.store.prune_seen(now - self.settings.dedup_window_s)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)


def fingerprint(message: aiomqtt.Message) -> str:
    """Names one message, topic and payload: a redelivery has the same fingerprint."""
    digest = hashlib.sha256(str(message.topic).encode() + b"\0" + payload_bytes(message))
    return "msg:" + digest.hexdigest()


def settlement_key(device_id: str, port: int | None, order_no: str) -> str:
    """Settlements are deduplicated on (device, port, order), as the protocol advises."""
    return f"settled:{device_id}:{port}:{order_no}"


def reply_reason(reply: dict[str, Any]) -> str:
    return str(reply.get("message") or reply.get("result") or "no reason given")


async def run_service(settings: ChargingSettings, *, ready: asyncio.Event | None = None) -> None:
    """Run the charging service until cancelled; `ready` is set once connected and current."""
    store = ChargingStore(settings.state_dir)
    service = ChargingService(settings, store)
    mqtt = MqttClient(
        service.mqtt_settings(),
        subscriptions=service.subscriptions(),
        on_connect=service.on_connect,
    )
    service.mqtt = mqtt
    try:
        async with mqtt, asyncio.TaskGroup() as tg:
            tg.create_task(service.consume(), name="charging-consume")
            tg.create_task(service.stats_loop(), name="charging-stats")
            tg.create_task(service.cleanup_loop(), name="charging-cleanup")
            for name, unit in webhook_units(settings):  # --webhook: docs/integrations.md
                tg.create_task(unit, name=name)
            await mqtt.connected.wait()
            log.info("charging service ready on %s", mqtt.settings.redacted_url())
            if ready is not None:
                ready.set()
    finally:
        await service.close()
        store.close()
