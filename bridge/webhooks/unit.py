"""The webhook unit of the service role: MQTT in, durable queue, POSTs out.

It subscribes to the retained sessions and to the device events (only what the configured
`--webhook-events` need), with a persistent MQTT session and manual acknowledgement: a batch
of messages is acknowledged only after what it means is committed to the queue (one SQLite
transaction per batch), so nothing is lost to a crash. The sender POSTs the oldest due row of
each (stream, URL), retries with exponential back-off until a 2xx, and dead-letters after
`webhook_max_attempts`. Its counters are published retained on `{b}/charging/webhooks/stats`
and returned by `stats()`.

An empty queue started beside sessions already retained does not replay them: a session is
*adopted* (remembered without an event) when it is first seen and its `last_update` predates
the queue's creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import Any

from bridge.charging.model import parse_iso
from bridge.charging.settings import ChargingSettings
from bridge.mqtt.client import MqttClient, payload_bytes
from bridge.mqtt.payloads import iso_utc
from bridge.mqtt.topics import Topics
from bridge.webhooks.events import (
    WebhookEvent,
    device_event,
    session_event,
    session_events,
)
from bridge.webhooks.http import WebhookHttpError, post
from bridge.webhooks.queue import Delivery, SessionMark, WebhookQueue
from bridge.webhooks.settings import DEVICE_EVENTS, SESSION_EVENTS

log = logging.getLogger(__name__)

BATCH = 100  # messages per transaction (and unacknowledged at the broker at most)
CONCURRENCY = 64  # deliveries attempted at once (each to a different stream or URL)
SESSION_EXPIRY_S = 7 * 86400  # the broker keeps our device events this long while we are away


class WebhookUnit:
    """`run()` until cancelled; the options are the service's (`ChargingSettings`)."""

    def __init__(
        self, settings: ChargingSettings, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.base_topic)
        self.events = set(settings.webhook_events)
        self.ssl_context = ssl_context
        self.queue: WebhookQueue | None = None
        self.wakeup = asyncio.Event()  # new rows queued
        self.changed = asyncio.Event()  # counters changed: publish the stats
        subscriptions = []
        if self.events & set(SESSION_EVENTS):
            subscriptions.append((self.topics.all_sessions, 1))
        if self.events & set(DEVICE_EVENTS):
            subscriptions.append((self.topics.all_device_events, 1))
        self.mqtt = MqttClient(
            settings.mqtt_settings(
                client_id=f"chargebridge-webhooks-{settings.gateway_id}",
                clean_start=False,
                session_expiry_s=SESSION_EXPIRY_S,
                manual_ack=True,
                receive_maximum=BATCH,
            ),
            subscriptions=subscriptions,
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        s = self.settings
        self.queue = WebhookQueue(
            s.state_dir,
            s.webhook,
            max_attempts=s.webhook_max_attempts,
            max_queued=s.webhook_max_queued,
        )
        log.info(
            "webhooks enabled",
            extra={
                "urls": len(s.webhook),
                "events": sorted(self.events),
                "queued": len(self.queue),
            },
        )
        try:
            async with self.mqtt, asyncio.TaskGroup() as tg:
                tg.create_task(self._consume(), name="webhooks-consume")
                tg.create_task(self._send_forever(), name="webhooks-send")
                tg.create_task(self._stats_forever(), name="webhooks-stats")
        finally:
            self.queue.close()

    def stats(self) -> dict[str, Any]:
        """`queued` (rows waiting, one per event and URL), `delivered`, `failures` (failed
        attempts), `dead_lettered`, `dropped` (dead-lettered because the queue was full)."""
        if self.queue is None:
            return {}
        return {"queued": len(self.queue), **self.queue.counters()}

    # ------------------------------------------------------------------ MQTT in

    async def _consume(self) -> None:
        async for batch in self.mqtt.batches(BATCH):
            messages = [(str(m.topic), payload_bytes(m)) for m in batch]
            try:
                added = self.handle(messages)
            except Exception:
                # e.g. disk full: leave the batch unacknowledged, so the broker redelivers it
                log.exception("webhook queue write failed")
                continue
            for message in batch:
                self.mqtt.ack(message)
            if added:
                self.wakeup.set()
                self.changed.set()

    def handle(self, messages: list[tuple[str, bytes]], now: float | None = None) -> int:
        """Queue what `messages` mean (one transaction); returns the rows added."""
        assert self.queue is not None
        now = time.time() if now is None else now
        ts = iso_utc(now)
        sessions: list[dict[str, Any]] = []
        events: list[WebhookEvent] = []
        for topic, payload in messages:
            data = _json_object(payload)
            if data is None:
                if payload:
                    log.warning("webhooks: not a JSON object", extra={"topic": topic})
                continue  # an empty retained session: cleared after its retention
            session_id = self.topics.parse_session(topic)
            if session_id is not None:
                if data.get("session_id") == session_id:
                    sessions.append(data)
                continue
            parsed = self.topics.parse_device_topic(topic)
            if parsed is not None and parsed[1] == "event/device":
                event = device_event(parsed[0], data, ts)
                if event is not None and event.type in self.events:
                    events.append(event)
        marks = self.queue.marks(s["session_id"] for s in sessions)
        changed: dict[str, SessionMark] = {}
        for session in sessions:
            sid = session["session_id"]
            mark = marks.get(sid)
            version = session.get("version")
            version = version if isinstance(version, int) else None
            if mark is not None and None not in (version, mark.version):
                assert version is not None and mark.version is not None
                if version < mark.version:
                    continue  # an older publication: a consumer keeps the highest
            new = SessionMark(str(session.get("status")), version)
            if mark is None and self._predates_queue(session):
                marks[sid] = changed[sid] = new  # adopted: it happened before webhooks existed
                continue
            for type_ in session_events(session, mark.status if mark else None):
                if type_ in self.events:
                    events.append(session_event(type_, session, ts))
            if mark != new:
                marks[sid] = changed[sid] = new
        bodies = []
        kept = []
        for event in events:
            body = self._encode(event)
            if body is None:
                continue
            bodies.append(body)
            kept.append(event)
        if not kept and not changed:
            return 0
        return self.queue.commit(kept, bodies, changed, now)

    def _predates_queue(self, session: dict[str, Any]) -> bool:
        assert self.queue is not None
        try:
            return parse_iso(str(session.get("last_update"))) < self.queue.created_at
        except ValueError:
            return False

    def _encode(self, event: WebhookEvent) -> bytes | None:
        """The body, at most `webhook_max_body_bytes`: a session too large goes without its
        `events` list; still too large, the event is dead-lettered (None)."""
        assert self.queue is not None
        limit = self.settings.webhook_max_body_bytes
        body = _dumps(event.body)
        if len(body) > limit and isinstance(event.body.get("session"), dict):
            session = {k: v for k, v in event.body["session"].items() if k != "events"}
            body = _dumps({**event.body, "session": session})
        if len(body) <= limit:
            return body
        log.error("webhook event too large: dead-lettered", extra={"key": event.key})
        self.queue.dead_letter(event, body[:limit], "too_large")
        self.changed.set()
        return None

    # ------------------------------------------------------------------ HTTP out

    async def _send_forever(self) -> None:
        assert self.queue is not None
        while True:
            self.wakeup.clear()
            due = self.queue.due(time.time(), CONCURRENCY)
            if due:
                await asyncio.gather(*(self._attempt(d) for d in due))
                continue
            next_due = self.queue.next_due()
            delay = None if next_due is None else max(0.0, next_due - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.wakeup.wait()

    def headers(self, delivery: Delivery) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": delivery.key,
            "X-Chargebridge-Event": delivery.type,
        }
        if self.settings.webhook_secret:
            digest = hmac.new(
                self.settings.webhook_secret.encode(), delivery.body, hashlib.sha256
            ).hexdigest()
            headers["X-Chargebridge-Signature"] = f"sha256={digest}"
        return headers

    async def _attempt(self, delivery: Delivery) -> None:
        assert self.queue is not None
        s = self.settings
        try:
            status = await post(
                delivery.url,
                delivery.body,
                self.headers(delivery),
                timeout=s.webhook_timeout_s,
                ssl_context=self.ssl_context,
            )
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except TimeoutError:
            error = "timeout"
        except (OSError, WebhookHttpError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.changed.set()
        if not error:
            self.queue.delivered(delivery.seq)
            log.info(
                "webhook delivered",
                extra={
                    "key": delivery.key,
                    "url": _redact(delivery.url),
                    "attempt": delivery.attempts + 1,
                },
            )
            return
        retry_in = min(s.webhook_backoff_max_s, s.webhook_backoff_s * 2**delivery.attempts)
        extra = {
            "key": delivery.key,
            "url": _redact(delivery.url),
            "attempt": delivery.attempts + 1,
            "error": error,
        }
        if self.queue.failed(delivery, error, retry_in):
            log.error("webhook dead-lettered after its last attempt", extra=extra)
        else:
            log.warning("webhook failed, retrying", extra={**extra, "retry_in_s": retry_in})

    # ------------------------------------------------------------------ stats

    async def _stats_forever(self) -> None:
        """Retained `{b}/charging/webhooks/stats` when the counters changed, at most every
        `stats_interval`."""
        self.changed.set()
        while True:
            await self.changed.wait()
            self.changed.clear()
            body = {**self.stats(), "updated_at": iso_utc()}
            self.mqtt.submit(self.topics.webhook_stats, _dumps(body), retain=True)
            await asyncio.sleep(self.settings.stats_interval)


def webhook_units(settings: ChargingSettings) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """(name, coroutine) of the webhook unit when `--webhook` is given, for the service role's
    TaskGroup; nothing otherwise."""
    if settings.webhook:
        return [("webhooks", WebhookUnit(settings).run())]
    return []


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload) if payload else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _redact(url: str) -> str:
    """The URL without credentials, for logs."""
    head, sep, rest = url.partition("://")
    return head + sep + rest.rpartition("@")[2] if sep else url
