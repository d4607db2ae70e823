"""The charging service: gateway events in over MQTT, sessions and statistics out, retained.

It talks to devices only through MQTT topics (API.md sections 3-6). Its units:
`batching.Sessions` (the state, group commit, publishing), `requests.ChargingRequests`
(start/stop/query), `commands.DeviceCommands` (the device-command client with retries),
`adoption` (taking over retained state), `gateway_events` (reading the gateway's events);
the pure state machine is `model`, the durable state `store`. `bridge.app.run_service`
wires it to an MqttClient.

Delivery: the MQTT session is persistent (fixed client id, no clean start, QoS 1) and
incoming messages are acknowledged to the broker only after their effects are committed to
the store, so nothing the broker accepted is lost to a crash; a redelivered message is
recognised by its fingerprint and skipped, so nothing is applied twice.

Several instances (a PostgreSQL store; docs/scaling.md): each has its own client id
(`service_client_id`) and receives events and requests through MQTT 5 shared subscriptions
(`$share/chargebridge-service/...`), so each message goes to one of them. A batch runs under
the locks of the devices it concerns (`Sessions.exclusive`) in one transaction that first
claims the messages' fingerprints (exactly one instance applies a message, however often
and to whomever it is delivered) and ends with a version-checked write (`Conflict`: run
again). Device command responses are subscribed without sharing: the instance that sent a
command is the one waiting for its response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from bridge.charging import model as m
from bridge.charging.adoption import Adopted, read_retained
from bridge.charging.batching import Batch, Sessions, settlement_key
from bridge.charging.commands import DeviceCommands, Publisher
from bridge.charging.events import iso
from bridge.charging.gateway_events import IncomingEvent, parse_event
from bridge.charging.messages import RequestError
from bridge.charging.requests import ChargingRequests
from bridge.charging.settings import ChargingSettings
from bridge.charging.store import ChargingStore, Conflict
from bridge.mqtt.client import Message, MqttSettings, payload_bytes
from bridge.mqtt.payloads import SecurityEvent, oversized
from bridge.mqtt.topics import Topics

log = logging.getLogger("chargebridge.charging")

DEVICE_COMMANDS = ("start_charging", "stop_charging")
# Messages handled per store transaction: as many as the broker has sent us, up to this.
MAX_BATCH = 1000
# The shared-subscription group of all instances on one base topic (docs/scaling.md).
SHARE_GROUP = "chargebridge-service"
# Runs of one batch against sessions another instance changed meanwhile, before giving up.
MAX_CONFLICTS = 20
# Devices locked at once by the cleanup pass and the republishing after a (re)connection.
CHUNK = 200


class MessageSource(Publisher, Protocol):
    """What the service needs of its MQTT client: publish, receive in batches, acknowledge."""

    def batches(self, limit: int, every: float = 0.0) -> AsyncIterator[list[Message]]: ...

    def ack(self, message: Message) -> None: ...


class ChargingService:
    """Owns the sessions; every state change goes model -> store -> MQTT, in that order."""

    def __init__(
        self,
        settings: ChargingSettings,
        store: ChargingStore,
        client: MessageSource,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.topics = Topics(settings.base_topic)
        self.clock = clock
        self.state = Sessions(
            store,
            self.topics,
            client,
            clock=clock,
            energy_window_s=settings.energy_calculation_window_s,
            power_window_s=settings.power_update_window_s,
        )
        self.commands = DeviceCommands(
            settings,
            self.topics,
            client,
            on_retry=lambda: self.state.count_now(retry_attempts=1),
        )
        self.requests = ChargingRequests(
            settings, self.topics, client, self.state, self.commands, clock=clock
        )
        # Set by the first on_connect: nothing may be published before adoption has read
        # what the broker retains, or our empty state would overwrite it.
        self.current = asyncio.Event()

    @property
    def sessions(self) -> dict[str, m.ChargingSession]:
        return self.state.sessions

    @property
    def stats(self) -> m.ChargingStats:
        return self.state.stats

    # --- wiring -----------------------------------------------------------------
    def mqtt_settings(self) -> MqttSettings:
        return service_mqtt_settings(self.settings, shared=self.store.shared)

    def subscriptions(self) -> list[tuple[str, int]]:
        return service_subscriptions(self.topics, shared=self.store.shared)

    # --- (re)connection ------------------------------------------------------------
    async def on_connect(self) -> None:
        """Adopt retained state into an empty store, then republish everything we hold."""
        if not self.store.initialized:
            self.adopt(await read_retained(self.mqtt_settings(), self.topics))
        if self.state.shared is not None:
            await self.republish_shared()
        else:
            await asyncio.gather(*self.state.publish_all())
        self.current.set()
        log.info("republished %d sessions and the statistics", len(self.sessions))

    async def republish_shared(self) -> None:
        """Every stored session, each under its device's lock (another instance may be
        publishing a newer version), then the statistics."""
        assert self.state.shared is not None
        devices = self.state.shared.devices()
        for at in range(0, len(devices), CHUNK):
            chunk = set(devices[at : at + CHUNK])
            async with self.state.exclusive(chunk):
                for s in [s for s in self.sessions.values() if s.device_id in chunk]:
                    self.state.republish(s)
        await self.state.publish_stats()

    def adopt(self, adopted: Adopted) -> None:
        """Take the retained state over and mark the store initialised, in one commit."""
        state = self.state
        state.sessions.update(adopted.sessions)
        if adopted.stats is not None:
            state.stats = adopted.stats
        self.store.commit(
            now=self.clock(),
            sessions=[(s.session_id, self.store.session_json(s)) for s in self.sessions.values()],
            stats=state.stats,
            initialized=True,
        )
        if state.shared is not None:  # another instance may have adopted first
            state.reload_stats()
        log.info(
            "adopted %d retained sessions (statistics: %s)",
            len(adopted.sessions),
            adopted.stats is not None,
        )

    # --- incoming messages ------------------------------------------------------------
    async def consume(self) -> None:
        """Handle what the broker has sent as one batch: one transaction, then the acks.

        A message is acknowledged to the broker only after its effects are committed; if the
        commit fails the service stops (unacknowledged, the messages are redelivered)."""
        async for messages in self.client.batches(MAX_BATCH, self.settings.batch_interval_s):
            if self.state.shared is not None:
                await self.handle_shared(messages)  # acknowledges them once committed
                continue
            self.handle_batch(messages)
            for message in messages:
                self.client.ack(message)

    def handle_batch(self, messages: list[Message]) -> None:
        """Apply a list of messages as one batch and commit it (raises if the store fails)."""
        batch = Batch()
        keys = [fingerprint(message) for message in messages]
        batch.looked_up = set(keys)
        batch.known = self.store.seen_among(keys)
        self._handle_all(batch, messages, keys)
        try:
            self.state.flush(batch)
        except Exception:
            log.critical("cannot write the state store %s; stopping", self.store.path)
            raise

    async def handle_shared(self, messages: list[Message]) -> None:
        """A batch on a shared store: under the locks of its devices, in one transaction
        that claims the messages' fingerprints first; run again on `Conflict`. The messages
        are acknowledged after the commit; the locks are given back once the broker has
        what was published (`Sessions.exclusive`)."""
        devices, session_ids = self._scope(messages)
        async with self.state.exclusive(devices, session_ids):
            for attempt in range(MAX_CONFLICTS):
                try:
                    self._handle_shared_once(messages)
                except Conflict as exc:
                    log.info("batch run again (attempt %d): %s", attempt + 2, exc)
                    session_ids |= exc.session_ids
                    self.state.refresh(devices, session_ids)
                    continue
                # Committed: acknowledged now, while the publishes are still under way.
                for message in messages:
                    self.client.ack(message)
                return
        raise RuntimeError(f"a batch met {MAX_CONFLICTS} conflicts in a row; stopping")

    def _handle_shared_once(self, messages: list[Message]) -> None:
        assert self.state.shared is not None
        batch = self.state.batch()
        try:
            keys = [fingerprint(message) for message in messages]
            batch.looked_up = set(keys)
            batch.known = batch.looked_up - self.state.shared.claim(keys, self.clock())
            self._handle_all(batch, messages, keys)
            self.state.flush(batch)
        except BaseException:
            self.state.abort(batch)
            raise

    def _scope(self, messages: Iterable[Message]) -> tuple[set[str], set[str]]:
        """The devices (and sessions) a batch may change: the devices of its event topics,
        of its requests (named, or their session's)."""
        devices: set[str] = set()
        session_ids: set[str] = set()
        for message in messages:
            topic = str(message.topic)
            parts = self.topics.parse_device_topic(topic)
            if parts is not None:
                if parts[1].startswith("event/"):
                    devices.add(parts[0])
                continue
            if self.topics.parse_charging_request(topic) is None:
                continue
            try:
                data = json.loads(payload_bytes(message))
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            device, sid = data.get("device_id"), data.get("session_id")
            if isinstance(device, str):
                devices.add(device)
            if isinstance(sid, str):
                session_ids.add(sid)
                if (owner := self.state.device_of(sid)) is not None:
                    devices.add(owner)
        return devices, session_ids

    def _handle_all(self, batch: Batch, messages: list[Message], keys: list[str]) -> None:
        for message, key in zip(messages, keys, strict=True):
            try:
                self.handle(batch, message, key)
            except Exception:
                if self.state.shared is not None and self.state.shared.failed():
                    raise  # the transaction is lost: the whole batch fails
                log.exception("processing a message on %s failed", message.topic)
                self.state.count(batch, processing_errors=1)

    def handle(self, batch: Batch, message: Message, key: str) -> None:
        """One message; `key` is its fingerprint."""
        topic = str(message.topic)
        payload = payload_bytes(message)
        action = self.topics.parse_charging_request(topic)
        if action is not None:
            if message.retain or not payload:
                # A retained request would run again at every (re)connection, and an empty
                # payload is how a retained message is cleared: neither is a request.
                log.info(
                    "ignoring a %s on %s", "retained request" if payload else "empty payload", topic
                )
                self.state.count(batch, requests_ignored=1)
                return
            self.requests.handle(batch, action, payload)
            return
        parts = self.topics.parse_device_topic(topic)
        if parts is None:
            return
        device_id, rest = parts
        if rest in ("event/port", "event/order", "event/device"):
            self.handle_event(batch, topic, key, device_id, payload)
        elif rest.startswith("response/"):
            self.commands.handle_reply(payload)

    def handle_event(
        self, batch: Batch, topic: str, key: str, device_id: str, payload: bytes
    ) -> None:
        """One gateway event message, applied at most once however often it is delivered
        (`key`, its fingerprint, names it)."""
        state = self.state
        if state.has_seen(batch, key):
            state.count(batch, duplicate_events=1)
            return
        try:
            if too_big := oversized(payload):
                raise RequestError(too_big)
            event = parse_event(device_id, payload, self.clock())
        except RequestError as exc:
            log.warning("unusable event on %s: %s", topic, exc)
            state.count(batch, key, processing_errors=1)
            return
        # Only reports that would change a session are checked (not, e.g., the service's own
        # `security` events, which name the order too and arrive on event/device).
        changes = event.event is not None
        owner = self.state.get(event.order_no) if changes and event.order_no is not None else None
        if owner is not None and foreign(owner, event):
            self._refuse_foreign(batch, key, event, owner, payload)
            return
        if self.settings.event_logging:
            log.info(
                "event %s from %s port %s order %s",
                event.type,
                device_id,
                event.port,
                event.order_no,
            )
        if event.ports and self.settings.session_tracking:  # a heartbeat's charging ports
            state.apply_heartbeat(batch, key, device_id, event.ports)
            return
        if event.event is None or not self.settings.session_tracking:
            state.count(batch, key, measured=True, total_events_processed=1)
            return
        session = self._session_for(event)
        if session is None and self._already_settled(batch, event):
            state.count(batch, key, duplicate_events=1)
            return
        state.apply(batch, session, event.event, seen=(key,), received=True)

    def _refuse_foreign(
        self,
        batch: Batch,
        key: str,
        event: IncomingEvent,
        owner: m.ChargingSession,
        payload: bytes,
    ) -> None:
        """A report naming another device's (or port's) order: order numbers are readable by
        every monitor, and DNY has no authentication, so it is refused, published as a
        `security` event of the reporting device and counted; the session is untouched."""
        log.warning(
            "refused a %s from %s port %s naming order %s of %s port %s",
            event.type,
            event.device_id,
            event.port,
            owner.session_id,
            owner.device_id,
            owner.port,
        )
        self.state.count(batch, key, security_events=1)
        try:
            raw = json.loads(payload)
        except ValueError:  # it parsed once already; this only copies its ids
            raw = {}
        gateway_id, command, message_id = (
            raw.get("gateway_id"),
            raw.get("command"),
            raw.get("message_id"),
        )
        body = SecurityEvent(
            ts=iso(self.clock()),
            device_id=event.device_id,
            gateway_id=gateway_id if isinstance(gateway_id, str) else "",
            command=command if isinstance(command, int) else None,
            message_id=message_id if isinstance(message_id, int) else None,
            reason="foreign_order",
            source="charging_service",
            order_no=event.order_no,
            port=event.port,
            report=event.type,
            session_device_id=owner.device_id,
            session_port=owner.port,
        )
        topic, text = self.topics.event(event.device_id, "device"), body.to_json()
        batch.after.append(lambda: self.client.submit(topic, text))

    def _already_settled(self, batch: Batch, event: IncomingEvent) -> bool:
        """A settlement resent after its session was cleared must not create it again."""
        if not isinstance(event.event, m.Settled | m.Confirmed):  # a late 0x04 neither
            return False
        e = event.event
        return self.state.has_seen(batch, settlement_key(e.device_id, e.port, e.order_no))

    def _session_for(self, event: IncomingEvent) -> m.ChargingSession | None:
        if event.order_no is not None:
            return self.state.get(event.order_no)
        # Devices before protocol v6.2 reply to 0x82 without the order number.
        if event.port is not None:
            return self.state.active_on(event.device_id, event.port)
        return None

    # --- housekeeping ------------------------------------------------------------------
    async def stats_loop(self) -> None:
        """Publish the statistics when they changed, at most every `stats_interval`."""
        await self.current.wait()
        await asyncio.sleep(self.settings.stats_interval)  # on_connect has just published
        changed = self.state.stats_changed
        while True:
            await changed.wait()
            changed.clear()
            if self.state.shared is not None:
                await self.publish_shared_stats()
            else:
                self.store.commit(now=self.clock(), stats=self.stats)  # keeps processing times
                await self.state.publish_stats()
            await asyncio.sleep(self.settings.stats_interval)

    async def publish_shared_stats(self) -> None:
        """Shared store: add what this instance counted, publish the store's statistics
        (all instances'); once the broker has them, publish again if they changed meanwhile,
        so that the last statistics retained are the store's newest whatever instance
        published last."""
        shared = self.state.shared
        assert shared is not None
        while True:
            batch = self.state.batch()
            try:
                self.state.flush(batch)  # no sessions: the counts only
            except BaseException:
                self.state.abort(batch)
                raise
            published = (self.stats, self.state.active_total)
            await self.state.publish_stats()
            if shared.current_stats() == published:
                return
            await asyncio.sleep(self.settings.stats_interval)

    async def cleanup_loop(self) -> None:
        await self.current.wait()
        while True:
            await asyncio.sleep(self.settings.cleanup_interval_s)
            if self.state.shared is not None:
                await self.cleanup_shared()
            else:
                self.cleanup()

    async def cleanup_shared(self) -> None:
        """`cleanup` on a shared store: the devices whose sessions are due (by the store,
        whatever instance last changed them), a chunk of them locked at a time."""
        shared = self.state.shared
        assert shared is not None
        now = self.clock()
        tick = self._tick(now)
        due = shared.due_devices(now, tick.session_timeout, tick.retention)
        for at in range(0, len(due), CHUNK):
            chunk = set(due[at : at + CHUNK])
            async with self.state.exclusive(chunk):
                batch = self.state.batch()
                try:
                    for session in [s for s in self.sessions.values() if s.device_id in chunk]:
                        self.state.apply(batch, session, tick)
                    self.state.flush(batch)
                except BaseException:
                    self.state.abort(batch)
                    raise
        self.store.prune_seen(now)

    def _tick(self, now: float) -> m.Tick:
        return m.Tick(
            ts=now,
            session_timeout=self.settings.session_timeout_s,
            retention=self.settings.session_retention_s,
        )

    def cleanup(self) -> None:
        """Mark silent sessions `timeout`, clear expired ones, forget old fingerprints."""
        now = self.clock()
        tick = self._tick(now)
        batch = Batch()
        for session in list(self.sessions.values()):
            self.state.apply(batch, session, tick)
        if batch.changed or batch.deleted:
            self.state.flush(batch)
        self.state.publish_due()  # power-window updates whose timer has not run yet
        self.store.prune_seen(now)

    async def stop(self) -> None:
        await self.requests.stop()


def service_mqtt_settings(settings: ChargingSettings, *, shared: bool = False) -> MqttSettings:
    """A persistent session under a fixed client id, acknowledged by hand after each commit."""
    return settings.mqtt_settings(
        client_id=service_client_id(settings, shared=shared),
        clean_start=False,
        session_expiry_s=settings.mqtt_session_expiry_s,
        manual_ack=True,
        receive_maximum=MAX_BATCH,
    )


def service_client_id(settings: ChargingSettings, *, shared: bool = False) -> str:
    """The MQTT client id: fixed for the one instance of an SQLite store (the broker keeps
    its queue across restarts); on a shared store the base of the client-id slots the
    instances lease, `{id}-slot-{k}` (bridge/charging/slots.py; `run_service` connects with
    the leased one), so that a dead instance's queue is drained by a survivor."""
    return settings.client_id  # on a shared store, the slots' base


def default_instance_id(shared: bool, gateway_id: str) -> str:
    """`{hostname}-{pid}` on a shared store; the gateway id (the host name by default) for
    the one instance of an SQLite store."""
    return f"{socket.gethostname()}-{os.getpid()}" if shared else gateway_id


def service_subscriptions(t: Topics, *, shared: bool = False) -> list[tuple[str, int]]:
    """Events and requests shared among the instances of a shared store (each message goes
    to one of them); command responses not: each instance waits for its own commands'."""
    share = f"$share/{SHARE_GROUP}/" if shared else ""
    return [
        (share + t.all_port_events, 1),
        (share + t.all_order_events, 1),
        (share + t.all_device_events, 1),  # heartbeats: legacy piles' keep-alive, live power
        *((t.device_response("+", command), 1) for command in DEVICE_COMMANDS),
        (share + t.all_charging_requests, 1),
    ]


def foreign(session: m.ChargingSession, event: IncomingEvent) -> bool:
    """Whether a report naming `session`'s order comes from another device or port (a port
    is compared once both are known: an `auto` start learns its port from the device)."""
    if event.device_id != session.device_id:
        return True
    return session.port is not None and event.port is not None and event.port != session.port


def fingerprint(message: Message) -> str:
    """Names one message, topic and payload: a redelivery has the same fingerprint."""
    digest = hashlib.sha256(str(message.topic).encode() + b"\0" + payload_bytes(message))
    return "msg:" + digest.hexdigest()
