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
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.mqtt import _private
from bridge.mqtt.outbox import Added, Outbox, OutboxMessage
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


class Received(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's queue of received messages (its `queue_type`), with a short cut.

    aiomqtt's message iterator costs a task and an `asyncio.wait` for every wakeup, and each
    message then woke the task moving it to `MqttClient`'s own queue: per message, whether
    or not the consumer was waiting (the charging service sleeps through its batch window).
    Once connected, `sink` takes each message straight from the reading callback into that
    queue, waking the consumer only if it waits; a message it refuses (the consumer's queue
    full, or older ones still queued here) is queued here as aiomqtt does, and `queued` is
    completed so that the connection task moves it, in order, with back-pressure."""

    sink: Callable[[aiomqtt.Message], bool] | None = None
    queued: asyncio.Future[None] | None = None

    def put_nowait(self, item: aiomqtt.Message) -> None:
        sink = self.sink
        if sink is not None and self.empty() and sink(item):
            return
        super().put_nowait(item)
        queued = self.queued
        if queued is not None and not queued.done():
            queued.set_result(None)


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
        publish_interval_s: float = 0.0,
    ) -> None:
        """`retain_as_published` (MQTT 5 only): messages keep the retain flag they were
        published with, so a request topic can refuse retained requests the moment they are
        published, not only when the broker replays them.

        `publish_interval_s`: a publishing round (one write to the socket) is not started
        sooner than this after the previous one; what is queued meanwhile goes out together
        in the next. A message after a quiet spell goes out at once. The gateway uses it: at
        1,000 frames/s from 1,000 chargers every frame was its own write, its own broker
        wakeup and its own PUBACK segment (docs/performance.md, "publish interval")."""
        if not 0 <= publish_interval_s <= 1:
            raise ValueError("publish_interval_s must be between 0 and 1 s")
        self.publish_interval_s = publish_interval_s
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
        # Set by the sender of the current connection: `_kick` schedules one publishing
        # round (`_sender`), at most one per loop turn; `_round` runs it now if scheduled.
        self._kick: Callable[[], None] | None = None
        self._round: Callable[[], None] = _nothing
        self._incoming: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(max_incoming)
        # Receivers waiting for `_incoming` to fill (`_next`), woken by `_wake_receivers`.
        self._waiters: list[asyncio.Future[None]] = []
        # True while the connection task moves messages from aiomqtt's queue: the sink then
        # refuses newer ones, which would overtake the message it holds.
        self._moving = False
        # The connection each message to acknowledge came on: an acknowledgement belongs
        # to it (message ids are per connection), so one from an earlier connection is
        # not sent; the broker redelivers that message on the new one. A plain dict (a
        # weak one cost more per message than the rest of `ack`), emptied when the
        # connection ends; bounded meanwhile by the broker's in-flight limit (the service's
        # receive maximum): it sends no more until we acknowledge.
        self._came_on: dict[aiomqtt.Message, aiomqtt.Client] = {}
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        # Set when the connection task died of an unexpected error: see `MqttClientFailed`.
        self.failure: MqttClientFailed | None = None

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
        self._futures.setdefault(added.seq, []).append(future)
        self._queued(added)
        return future

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 message nobody waits for (the gateway's events and states).

        As `submit`, without the future and its callback per message (the gateway posts two
        per 0x06): a message the broker refuses is logged (`_refused`), one the bounded outbox
        drops is counted in `dropped`, and after the client died (`MqttClientFailed`, logged
        then) nothing is queued."""
        if self.failure is not None:
            return
        self._queued(self.outbox.add(topic, payload, qos=1, retain=retain))

    def _queued(self, added: Added) -> None:
        """After `outbox.add` (`submit`, `post`): the waiters of a message the new one
        superseded wait for the new one; those of messages the bounded outbox dropped fail
        with `MessageDropped`; a publishing round soon."""
        if added.replaced is not None:
            # A newer retained state supersedes it: acknowledged when the newer one is.
            replaced = self._futures.pop(added.replaced, None)
            if replaced:
                self._futures.setdefault(added.seq, []).extend(replaced)
        for seq in added.dropped:
            for fut in self._futures.pop(seq, ()):
                if not fut.done():
                    fut.set_exception(MessageDropped(f"outbox full ({len(self.outbox)})"))
                    fut.exception()  # counted in `dropped`; no "never retrieved" per message
        self._empty.clear()
        self._wake()

    def send_queued(self) -> None:
        """Publish (and write to the socket) now what `submit`/`post` queued this loop turn,
        instead of in a round at the next turn: for a caller that has queued all it will
        (the gateway, after each read from a device socket), it saves that turn. Harmless
        when nothing is queued or the client is offline. Within `publish_interval_s` of the
        previous round it does nothing: the round already due at the interval's end takes
        what was queued."""
        self._round()

    def _wake(self) -> None:
        """A publishing round soon, if connected (the next connection's sender starts with
        one)."""
        kick = self._kick
        if kick is not None:
            kick()

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
        """The next incoming message; raises `MqttClientFailed` once the client is dead.

        One future per wait, completed by whoever fills the queue (`_wake_receivers`): a
        `get()` raced against the client's death cost two tasks and an `asyncio.wait`."""
        incoming = self._incoming
        while incoming.empty():
            if self.failure is not None:
                raise self.failure
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():  # cancelled: no longer waiting
                    self._waiters.remove(waiter)
        return incoming.get_nowait()

    def _wake_receivers(self) -> None:
        """Something arrived in `_incoming` (or the client died): wake the receivers."""
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def batches(self, limit: int, every: float = 0.0) -> AsyncIterator[list[aiomqtt.Message]]:
        """Incoming messages in lists: all that have arrived, at most `limit`, at least one.

        With `every` (seconds), a list is not made sooner than `every` after the previous
        one was handed out: under load, what arrives meanwhile joins the next list (group
        commit); a message arriving after a quiet spell is handed out at once. (The socket
        is read meanwhile: not reading it delays the kernel's ACKs, and a broker writing
        with Nagle's algorithm, Mosquitto's default, then holds the next messages back.)"""
        loop = asyncio.get_running_loop()
        handed_out = -math.inf
        while True:
            # The window first, then the first message: while messages flow, the consumer
            # wakes once per list (at the window's end), not also for the message that
            # opened it; one after a quiet spell longer than `every` is handed out at once.
            if (wait := handed_out + every - loop.time()) > 0:
                await asyncio.sleep(wait)
            batch = [await self._next()]
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
            queue_type=Received,
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
        self._wake_receivers()
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
                self._came_on.clear()  # their acknowledgements are not sent any more
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
            await self._receive(client)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Hand incoming messages on until the connection ends (raises aiomqtt.MqttError).

        Straight from the reading callback (`Received.sink`, `_take`); what aiomqtt queued
        (during `on_connect`, or while the consumer's queue was full) is moved from here,
        oldest first, the sink refusing newer ones meanwhile."""
        received = _private.received(client)
        assert isinstance(received, Received)  # `_make_client`'s queue_type
        lost = _private.connection_lost(client)
        loop = asyncio.get_running_loop()
        received.sink = lambda message: self._take(client, message)
        try:
            while True:
                self._moving = True
                try:
                    while not received.empty():
                        await self._deliver(client, received.get_nowait())
                finally:
                    self._moving = False
                queued = received.queued = loop.create_future()
                await asyncio.wait((queued, lost), return_when=asyncio.FIRST_COMPLETED)
                if lost.done():
                    cause = None if lost.cancelled() else lost.exception()
                    raise aiomqtt.MqttError("Disconnected during message iteration") from cause
        finally:
            received.sink = None
            received.queued = None

    def _take(self, client: aiomqtt.Client, message: aiomqtt.Message) -> bool:
        """`Received.sink`: a message just read, into `_incoming` at once if it has room
        and nothing older is still to be moved; False: aiomqtt's queue keeps it."""
        if self._moving or self._incoming.full():
            return False
        if self.settings.manual_ack and message.qos > 0:
            self._came_on[message] = client
        self._incoming.put_nowait(message)
        self._wake_receivers()
        return True

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
        self._wake_receivers()

    def _requeue_inflight(self) -> None:
        """Unacknowledged messages go back to the front, in their original order."""
        self.outbox.requeue()

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
        """Publish from the outbox, at most `max_inflight` unacknowledged at a time, until
        cancelled (the connection ended).

        Straight through paho, not aiomqtt's `publish`: that costs a task, an event, a
        `wait_for` and a scan of every pending call per message, which was a fifth of the
        gateway's CPU at 5,000 events/s. paho's `on_publish` (the PUBACK) completes them.
        A round (`drain`) is scheduled by `submit`/`post` and by a PUBACK while messages
        wait, as a `call_soon` (no task wakeup; at most one per loop turn), or run at once by
        `send_queued`; it writes what it queued at once (`_private.queued_writer`), not one
        more loop turn later. With `publish_interval_s`, a round within that interval of the
        previous one is put off (`call_later`) to the interval's end, and `send_queued` does
        not run it before.
        """
        inner = _private.paho_client(client)
        pending: dict[int, OutboxMessage] = {}  # by paho message id, this connection only
        chained = inner.on_publish
        loop = asyncio.get_running_loop()
        limit = self.settings.max_inflight
        write = _private.queued_writer(inner)
        outbox = self.outbox
        every = self.publish_interval_s
        last = [-math.inf]  # loop time of the last round that wrote
        # The scheduled round's handle (`call_soon`, or `call_later` to `last + every`), None
        # when none is scheduled; cancelled when `send_queued` runs the round first, so it
        # cannot run a second one within the interval.
        timer: list[asyncio.Handle | None] = [None]

        def publish() -> None:
            while len(pending) < limit and (message := outbox.take()) is not None:
                mid = self._publish_now(inner, message, quick)
                if mid is not None:
                    pending[mid] = message

        def drain() -> None:
            if timer[0] is not None:  # run by `due_round` before its handle
                timer[0].cancel()
                timer[0] = None
            if self._kick is not kick:
                return  # this connection ended; the next one's sender publishes
            if outbox.has_pending:
                last[0] = loop.time()
                write(publish)

        def scheduled_round() -> None:
            timer[0] = None
            drain()

        def due_round() -> None:
            """`send_queued`: the scheduled round now, unless the interval puts it off."""
            if timer[0] is not None and loop.time() >= last[0] + every:
                drain()

        def kick() -> None:
            if timer[0] is None:
                if every and (wait := last[0] + every - loop.time()) > 0:
                    timer[0] = loop.call_later(wait, scheduled_round)
                else:
                    timer[0] = loop.call_soon(scheduled_round)

        def acknowledged(message: OutboxMessage, reason: Any) -> None:
            if getattr(reason, "is_failure", False):  # MQTT v5: e.g. not authorised (ACL)
                self._refused(message, f"the broker refused it: {reason}")
            else:
                outbox.acked(message.seq)
                self._settle(message.seq)
            if outbox.has_pending:
                kick()

        def on_ack(mid: int, reason: ReasonCode) -> None:
            """The PUBACK of a message `quick` sent (no paho bookkeeping)."""
            message = pending.pop(mid, None)
            if message is not None:
                acknowledged(message, reason)

        def on_publish(c: paho.Client, userdata: Any, mid: int, *rest: Any) -> None:
            """paho's: the PUBACK of a message that went through paho's `publish`."""
            message = pending.pop(mid, None)
            if message is None:
                if chained is not None:
                    chained(c, userdata, mid, *rest)
                return
            acknowledged(message, rest[0] if rest else None)

        quick = _private.quick_publish(inner, on_ack)
        inner.on_publish = on_publish
        self._kick, self._round = kick, due_round
        try:
            drain()
            await loop.create_future()  # until cancelled
        finally:
            if timer[0] is not None:
                timer[0].cancel()
            if self._kick is kick:
                self._kick, self._round = None, _nothing

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


def _nothing() -> None:
    """`MqttClient.send_queued` while no connection's sender runs."""


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
