"""One MQTT connection that survives broker outages.

aiomqtt leaves reconnection to the caller (its client is an async context manager that ends
with the connection). `MqttClient` is that caller: it reconnects with exponential back-off,
re-subscribes, runs `on_connect` (republish retained state) before delivering new messages,
and keeps an ordered outbox so publishers never lose a message to an outage:

* `await publish(...)` returns only once the broker acknowledged the message (QoS 1 PUBACK);
  the gateway acknowledges a settlement to the device only after that. A PUBACK with a
  failure reason (MQTT v5, e.g. an ACL denial) fails it instead.
* messages go out in submission order; those in flight when the connection drops are sent
  again, first, on the next connection (at-least-once; consumers are idempotent).
* the queue is an `Outbox` (bridge/mqtt/outbox.py): in memory by default, SQLite for the
  gateway, so its messages survive a crash; bounded, dropping the oldest non-critical ones.
* with `manual_ack`, incoming QoS 1 messages are acknowledged to the broker only when the
  consumer calls `ack(message)`, so a crash before processing leaves them with the broker;
  `batches()` hands out what has arrived as lists, for one transaction per list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.mqtt import _private
from bridge.mqtt.outbox import Outbox, OutboxMessage
from bridge.mqtt.settings import MqttSettings, Will

__all__ = [
    "Message",
    "MessageDropped",
    "MqttClient",
    "MqttClientFailed",
    "MqttSettings",  # defined in bridge.mqtt.settings; importable from here as before
    "Payload",
    "Will",
    "payload_bytes",
    "reply_properties",
]

log = logging.getLogger("chargebridge.mqtt")

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0


class MessageDropped(Exception):
    """The outbox was full and this (non-critical) message was dropped unpublished."""


class MqttClientFailed(RuntimeError):
    """The connection task ended with an unexpected error (logged once, with its traceback,
    when it happened): the client is dead, so receiving and publishing raise this instead of
    waiting for ever. Its owner's role fails with it (docs/reliability.md)."""


Payload = bytes | str
Message = aiomqtt.Message  # what `messages` and `batches()` hand out, for type annotations


class MqttClient:
    """Use as `async with MqttClient(settings, ...) as mqtt:`; see the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: list[tuple[str, int]] | None = None,
        on_connect: Callable[[], Coroutine[Any, Any, None]] | None = None,
        max_incoming: int = 10_000,
        outbox: Outbox | None = None,
        retain_as_published: bool = False,
    ) -> None:
        """`retain_as_published` (MQTT 5 only): messages keep the retain flag they were
        published with, so a request topic can refuse retained requests the moment they are
        published, not only when the broker replays them."""
        _private.install()
        self.settings = settings
        self.subscriptions = list(subscriptions or [])
        self.retain_as_published = retain_as_published
        self.on_connect = on_connect
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.connections = 0  # successful connections so far, for logs and tests
        self.outbox = outbox if outbox is not None else Outbox()
        self._futures: dict[int, list[asyncio.Future[None]]] = {}  # seq -> waiting publishers
        self._empty = asyncio.Event()
        if not len(self.outbox):
            self._empty.set()
        self._wakeup = asyncio.Event()
        self._incoming: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(max_incoming)
        # The connection each message to acknowledge came on: an acknowledgement belongs
        # to it (message ids are per connection), so one from an earlier connection is
        # not sent; the broker redelivers that message on the new one.
        self._came_on: weakref.WeakKeyDictionary[aiomqtt.Message, aiomqtt.Client] = (
            weakref.WeakKeyDictionary()
        )
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        # Set when the connection task died of an unexpected error: see `MqttClientFailed`.
        self.failure: MqttClientFailed | None = None
        self._dead = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------
    async def __aenter__(self) -> MqttClient:
        self._task = asyncio.create_task(self._connection_loop(), name="mqtt-connection")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, flush_timeout: float = 2.0) -> None:
        """Try to flush queued messages, then disconnect cleanly (no will)."""
        if self._task is None:
            return
        if self.connected.is_set() and len(self.outbox):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    await self._empty.wait()
        # Python 3.11's `asyncio.wait_for` (inside aiomqtt's subscribe and publish) swallows a
        # cancellation that arrives as its reply does: cancel again until the loop has ended,
        # or a SIGTERM during a (re)connection would wait here forever.
        while not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self.outbox.flush()

    async def wait_connected(self) -> None:
        await self.connected.wait()

    # --- publishing -----------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Messages accepted but not yet acknowledged by the broker."""
        return len(self.outbox)

    @property
    def dropped(self) -> int:
        """Messages dropped unpublished because the outbox was full."""
        return self.outbox.dropped

    def submit(
        self,
        topic: str,
        payload: Payload,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        critical: bool = False,
        key: str | None = None,
    ) -> asyncio.Future[None]:
        """Queue a message; the future completes on the broker's acknowledgement, or fails
        with `MessageDropped` if the bounded outbox dropped it. A `critical` message is never
        dropped. With a `key` already queued, nothing is queued and the future completes with
        that message; with a key published within the outbox's memory, it is done at once."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            future.set_exception(self.failure)
            return future
        if key is not None:
            found = self.outbox.find_key(key)
            if found is True:
                future.set_result(None)
                return future
            if found is not False:
                self._futures.setdefault(found, []).append(future)
                return future
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if not self.settings.v5:
            properties = None
        added = self.outbox.add(
            topic,
            data,
            qos=qos,
            retain=retain,
            properties=properties,
            critical=critical,
            key=key,
        )
        waiting = self._futures.setdefault(added.seq, [])
        waiting.append(future)
        if added.replaced is not None:
            # A newer retained state supersedes it: acknowledged when the newer one is.
            waiting.extend(self._futures.pop(added.replaced, ()))
        for seq in added.dropped:
            for fut in self._futures.pop(seq, ()):
                if not fut.done():
                    fut.set_exception(MessageDropped(f"outbox full ({len(self.outbox)})"))
                    fut.exception()  # counted in `dropped`; no "never retrieved" per message
        self._empty.clear()
        self._wakeup.set()
        return future

    async def publish(
        self,
        topic: str,
        payload: Payload,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        critical: bool = False,
        key: str | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement, across reconnects."""
        await self.submit(
            topic,
            payload,
            qos=qos,
            retain=retain,
            properties=properties,
            critical=critical,
            key=key,
        )

    # --- receiving ------------------------------------------------------------------
    @property
    def messages(self) -> AsyncIterator[aiomqtt.Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[aiomqtt.Message]:
        while True:
            yield await self._next()

    async def _next(self) -> aiomqtt.Message:
        """The next incoming message; raises `MqttClientFailed` once the client is dead."""
        if not self._incoming.empty():
            return self._incoming.get_nowait()
        if self.failure is not None:
            raise self.failure
        getter = asyncio.ensure_future(self._incoming.get())
        dead = asyncio.ensure_future(self._dead.wait())
        try:
            await asyncio.wait((getter, dead), return_when=asyncio.FIRST_COMPLETED)
        finally:
            dead.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        assert self.failure is not None
        raise self.failure

    async def batches(self, limit: int, every: float = 0.0) -> AsyncIterator[list[aiomqtt.Message]]:
        """Incoming messages in lists: all that have arrived, at most `limit`, at least one.

        With `every` (seconds), a list is not made sooner than `every` after the previous
        one was handed out: under load, what arrives meanwhile joins the next list (group
        commit); a message arriving after a quiet spell is handed out at once."""
        loop = asyncio.get_running_loop()
        handed_out = -math.inf
        while True:
            first = await self._next()
            if (wait := handed_out + every - loop.time()) > 0:
                await asyncio.sleep(wait)
            batch = [first]
            while len(batch) < limit and not self._incoming.empty():
                batch.append(self._incoming.get_nowait())
            handed_out = loop.time()
            yield batch

    async def unsubscribe(self, topics: list[str]) -> None:
        """Take the current connection's session off `topics` (a session being retired,
        bridge/charging/slots.py); raises aiomqtt.MqttError when not connected."""
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("not connected")
        await client.unsubscribe(topics, timeout=10)

    def ack(self, message: aiomqtt.Message) -> None:
        """With `manual_ack`: tell the broker this QoS>0 message has been processed.

        Not sent if the message came on an earlier connection: the broker redelivers it on
        this one (and the consumer recognises the redelivery)."""
        client = self._came_on.pop(message, None)
        if client is not None and client is self._client:
            _private.ack(_private.paho_client(client), message.mid, message.qos)

    # --- internals ------------------------------------------------------------------
    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        will = None
        if s.will is not None:
            will = aiomqtt.Will(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
        properties = None
        if s.v5 and (s.session_expiry_s is not None or s.receive_maximum is not None):
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if s.session_expiry_s is not None:
                properties.SessionExpiryInterval = s.session_expiry_s
            if s.receive_maximum is not None:
                properties.ReceiveMaximum = s.receive_maximum
        tls_context = None
        if s.tls:
            tls_context = ssl.create_default_context(cafile=s.tls_ca_file)
            if s.tls_insecure:
                tls_context.check_hostname = False
                tls_context.verify_mode = ssl.CERT_NONE
        kwargs: dict[str, Any] = {}
        if s.v5:
            kwargs["protocol"] = aiomqtt.ProtocolVersion.V5
            kwargs["clean_start"] = s.clean_start
        else:
            kwargs["protocol"] = aiomqtt.ProtocolVersion.V311
            kwargs["clean_session"] = s.clean_start
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id or None,
            will=will,
            keepalive=s.keepalive_s,
            properties=properties,
            tls_context=tls_context,
            timeout=10,
            max_inflight_messages=s.max_inflight,
            **kwargs,
        )
        inner = _private.speed_up(client)
        if s.manual_ack:
            inner.manual_ack_set(True)
        return client

    async def _connection_loop(self) -> None:
        """Connect, serve, reconnect; an unexpected error (a bug, a full disk in `on_connect`)
        is logged once with its traceback and kills the client loudly (`MqttClientFailed`),
        never silently."""
        try:
            await self._connect_forever()
        except Exception as exc:
            log.critical(
                "the MQTT client %s stopped on an unexpected error: %r",
                self.settings.client_id or "(anonymous)",
                exc,
                exc_info=exc,
            )
            self._fail(MqttClientFailed(f"MQTT client stopped: {type(exc).__name__}: {exc}"))

    def _fail(self, failure: MqttClientFailed) -> None:
        """Mark the client dead: waiting receivers and publishers get `failure`."""
        self.failure = failure
        self._dead.set()
        for seq in list(self._futures):
            for fut in self._futures.pop(seq, ()):
                if not fut.done():
                    fut.set_exception(failure)
                    fut.exception()  # the owner learns it from receiving; no extra log line
        self._empty.set()

    async def _connect_forever(self) -> None:
        backoff = BACKOFF_INITIAL_S
        while True:
            client = self._make_client()
            try:
                async with client:
                    backoff = BACKOFF_INITIAL_S
                    self._client = client
                    self.connections += 1
                    log.info("connected to %s", self.settings.redacted_url())
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                log.warning(
                    "MQTT connection to %s lost or refused: %s; retrying in %.0f s",
                    self.settings.redacted_url(),
                    exc,
                    backoff,
                )
            finally:
                lost = _private.connection_lost(client)
                if lost.done() and not lost.cancelled():
                    lost.exception()  # logged above; retrieved so asyncio does not log it again
                self._client = None
                self.connected.clear()
                self.disconnected.set()
                self._requeue_inflight()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _serve(self, client: aiomqtt.Client) -> None:
        sender = asyncio.create_task(self._sender(client), name="mqtt-sender")
        try:
            if self.subscriptions:
                await self._subscribe(client, self.subscriptions)
            if self.on_connect is not None:
                # Incoming messages wait in aiomqtt's queue until this is done. Race it
                # against the connection: publishes awaited in it cannot finish offline.
                task = asyncio.create_task(self.on_connect(), name="mqtt-on-connect")
                lost = _private.connection_lost(client)
                await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    task.cancel()
                    raise aiomqtt.MqttError("connection lost while running on_connect")
                task.result()
            self.disconnected.clear()
            self.connected.set()
            messages = client.messages
            async for message in messages:
                await self._deliver(client, message)
                # What else has arrived, taken at once: a consumer sees it as one batch.
                for _ in range(len(messages)):
                    await self._deliver(client, _private.take_received(client))
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _subscribe(self, client: aiomqtt.Client, topics: list[tuple[str, int]]) -> None:
        """One SUBSCRIBE for all `topics`: one round trip before messages flow."""
        if self.retain_as_published and self.settings.v5:
            options = [(t, SubscribeOptions(qos=q, retainAsPublished=True)) for t, q in topics]
            await client.subscribe(options)
        else:
            await client.subscribe(list(topics))

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Add a subscription, kept across reconnections, and subscribe at once when
        connected (the broker then sends its retained messages for `topic`)."""
        if any(t == topic for t, _ in self.subscriptions):
            return
        self.subscriptions.append((topic, qos))
        client = self._client
        if client is not None:
            try:
                await self._subscribe(client, [(topic, qos)])
            except aiomqtt.MqttError as exc:  # the next connection subscribes from the list
                log.warning("subscribing to %s failed: %s", topic, exc)

    async def resubscribe(self, topic: str) -> bool:
        """Subscribe again to one of `subscriptions`: the broker replaces the subscription and
        sends its retained messages again (MQTT 3.1.1 3.8.4; MQTT 5 retain handling 0), so a
        reader can look at retained state it did not keep. False when not connected."""
        qos = dict(self.subscriptions)[topic]
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        await self._subscribe(client, [(topic, qos)])
        return True

    async def _deliver(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        if self.settings.manual_ack and message.qos > 0:
            self._came_on[message] = client
        await self._incoming.put(message)

    def _requeue_inflight(self) -> None:
        """Unacknowledged messages go back to the front, in their original order."""
        self.outbox.requeue()
        self._wakeup.set()

    def _settle(self, seq: int, exc: BaseException | None = None) -> None:
        for fut in self._futures.pop(seq, ()):
            if fut.done():
                continue
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
        if not len(self.outbox):
            self._empty.set()

    async def _sender(self, client: aiomqtt.Client) -> None:
        """Publish from the outbox, at most `max_inflight` unacknowledged at a time.

        Straight through paho, not aiomqtt's `publish`: that costs a task, an event, a
        `wait_for` and a scan of every pending call per message, which was a fifth of the
        gateway's CPU at 5,000 events/s. paho's `on_publish` (the PUBACK) completes them.
        """
        inner = _private.paho_client(client)
        pending: dict[int, OutboxMessage] = {}  # by paho message id, this connection only
        chained = inner.on_publish

        def on_publish(c: paho.Client, userdata: Any, mid: int, *rest: Any) -> None:
            message = pending.pop(mid, None)
            if message is None:
                if chained is not None:
                    chained(c, userdata, mid, *rest)
                return
            reason = rest[0] if rest else None
            if getattr(reason, "is_failure", False):  # MQTT v5: e.g. not authorised (ACL)
                self._refused(message, f"the broker refused it: {reason}")
            else:
                self.outbox.acked(message.seq)
                self._settle(message.seq)
            self._wakeup.set()

        inner.on_publish = on_publish
        limit = self.settings.max_inflight
        quick = _private.quick_publish(inner)
        while True:
            while len(pending) < limit and (message := self.outbox.take()) is not None:
                mid = self._publish_now(inner, message, quick)
                if mid is not None:
                    pending[mid] = message
            self._wakeup.clear()
            await self._wakeup.wait()

    def _publish_now(
        self,
        inner: paho.Client,
        message: OutboxMessage,
        quick: Callable[[str, bytes, bool, Properties | None], int] | None = None,
    ) -> int | None:
        """Hand one message to paho (QoS 1 through `quick`, `_private.quick_publish`); its
        message id, or None if it is not published now (failed for good, or offline)."""
        rc: Any
        try:
            if quick is not None and message.qos == 1:
                mid = quick(message.topic, message.payload, message.retain, message.properties)
                rc = paho.MQTT_ERR_SUCCESS if mid > 0 else MQTTErrorCode(-mid)
            else:
                info = inner.publish(
                    message.topic, message.payload, message.qos, message.retain, message.properties
                )
                mid, rc = info.mid, info.rc
        except ValueError as exc:  # paho's verdict on the topic or payload
            rc = exc
        else:
            if rc == paho.MQTT_ERR_SUCCESS:
                return mid
            if rc in (paho.MQTT_ERR_NO_CONN, paho.MQTT_ERR_CONN_LOST):
                return None  # stays in flight; requeued when the connection loop notices
        self._refused(message, f"paho refused it: {rc}")
        return None

    def _refused(self, message: OutboxMessage, why: str) -> None:
        """A message that cannot be published as it is: it fails alone, the rest go on."""
        self.outbox.failed(message.seq)
        error = aiomqtt.MqttError(f"could not publish on {message.topic}: {why}")
        self._settle(message.seq, error)
        log.error("could not publish a message on %s: %s", message.topic, why)


def payload_bytes(message: aiomqtt.Message) -> bytes:
    """The payload as bytes: aiomqtt types it loosely, brokers always send bytes."""
    raw = message.payload
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    return b"" if raw is None else str(raw).encode()


def reply_properties(request_properties: Any) -> Properties:
    """MQTT v5 properties of a response: the request's CorrelationData, if it had one."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    correlation = getattr(request_properties, "CorrelationData", None)
    if correlation is not None:
        props.CorrelationData = correlation
    return props
