"""The gateway proper: frames in, replies out, events and states to MQTT.

Replies the protocol requires are sent here, at once, echoing the message id; the one exception
is the settlement (0x03), answered only once the broker acknowledged the `settled` event.
Upstream resends (same physical id, command, message id and data) get the same reply again and
publish nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import ValidationError

import protocol as p
from bridge.config import GatewaySettings
from bridge.gateway import events, requests
from bridge.gateway.dedup import BoundedTtlMap
from bridge.gateway.dispatcher import CommandTimeout, DeviceOffline, Dispatcher
from bridge.gateway.registry import MAX_DEVICES_PER_CONNECTION, ConnState, Device, Registry
from bridge.gateway.stats import GatewayStats
from bridge.links.base import Connection
from bridge.mqtt.client import MessageDropped
from bridge.mqtt.payloads import (
    DEVICE_COMMAND_REQUESTS,
    DEVICE_ID_RE,
    BridgeState,
    CardReplyRequest,
    CommandResponse,
    EventBase,
    Payload,
    PortState,
    oversized,
    response,
)
from bridge.mqtt.topics import Topics
from protocol import (
    BadFrame,
    ChecksumError,
    Frame,
    Garbage,
    Iccid,
    PayloadError,
    Sender,
    StreamItem,
    decode_frame,
    decode_payload,
    encode_frame,
    encode_payload,
)

log = logging.getLogger(__name__)

MAX_QUEUED_PER_DEVICE = 16
RECENT_FRAMES = 50_000
RECENT_TTL_S = 600.0
TIME_REQUESTS = (0x12, 0x22)
CHARGING_CODES = (1, 5)  # charging, float charging: same codes in 0x01/0x21 and 0x06


class Publisher(Protocol):
    """What the gateway needs from `bridge.mqtt.client.MqttClient`."""

    def submit(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Any = None,
        critical: bool = False,
        key: str | None = None,
    ) -> asyncio.Future[None]: ...

    @property
    def dropped(self) -> int: ...


FrameKey = tuple[int, int, int, bytes]
# Observer of every frame exchanged with a device (capture, metrics): who sent it, the device,
# the frame. Called synchronously on the event loop; it must be cheap and must not raise.
FrameTap = Callable[[Sender, Device, Frame], None]


class _PendingSwipe:
    __slots__ = ("frame", "swipe", "timer")

    def __init__(self, frame: Frame, swipe: p.CardSwipe, timer: asyncio.TimerHandle) -> None:
        self.frame = frame
        self.swipe = swipe
        self.timer = timer


class Gateway:
    """Implements `LinkHandler` for every link; publishes through a `Publisher`."""

    def __init__(self, settings: GatewaySettings, mqtt: Publisher, topics: Topics) -> None:
        self.settings = settings
        self.mqtt = mqtt
        self.topics = topics
        self.gateway_id = settings.gateway_id
        self.registry = Registry(settings.max_devices)
        self.stats = GatewayStats()
        self.dispatcher = Dispatcher(
            self._send_command,
            self.stats,
            timeout_s=settings.command_timeout_s,
            spacing_s=settings.command_spacing_s,
        )
        # upstream frame -> the reply we gave (b"" for none, or while it is being decided)
        self._recent: BoundedTtlMap[FrameKey, bytes] = BoundedTtlMap(RECENT_FRAMES, RECENT_TTL_S)
        self._swipes: dict[tuple[int, str], _PendingSwipe] = {}
        self._debug_ids = set(settings.debug_devices)
        self._last_submit: asyncio.Future[None] | None = None
        self.taps: list[FrameTap] = []

    # ------------------------------------------------------------------ publishing

    def _submit(self, topic: str, payload: Payload, *, retain: bool = False) -> None:
        fut = self.mqtt.submit(topic, payload.to_json(), qos=1, retain=retain)
        fut.add_done_callback(_log_failure)
        self._last_submit = fut

    def _event(self, dev: Device, kind: str, event: EventBase) -> None:
        self._submit(self.topics.event(dev.device_id, kind), event)

    def _device_state(self, dev: Device) -> None:
        self._submit(self.topics.device(dev.device_id), dev.state(self.gateway_id), retain=True)

    def _port_state(self, dev: Device, state: PortState) -> None:
        """Publish a port state when it changed. Heartbeats carry no order number (0x21 no
        power either): while the port keeps charging, the values from 0x06 stay."""
        old = dev.ports.get(state.port)
        if old is not None and state.status_code in CHARGING_CODES:
            keep: dict[str, Any] = {}
            if state.power_w is None:
                keep["power_w"] = old.power_w
            if state.order_no is None:
                keep["order_no"] = old.order_no
            state = state.model_copy(update=keep)
        if old is not None and (old.status_code, old.power_w, old.order_no) == (
            state.status_code,
            state.power_w,
            state.order_no,
        ):
            return
        dev.ports[state.port] = state
        self._submit(self.topics.port(dev.device_id, state.port), state, retain=True)

    def bridge_state(self, state: Literal["online", "offline"]) -> None:
        self._submit(self.topics.bridge_state, BridgeState(state=state), retain=True)

    async def on_mqtt_connect(self) -> None:
        """After every (re)connection: the will may have replaced our `online`, and a broker
        that lost its store lost our retained states too, so they are published again."""
        self.bridge_state("online")
        for dev in self.registry.devices.values():
            self._device_state(dev)
            for state in dev.ports.values():
                self._submit(self.topics.port(dev.device_id, state.port), state, retain=True)

    # ------------------------------------------------------------------ links

    def connection_made(self, conn: Connection) -> None:
        self.registry.conns[conn.id] = ConnState(conn)
        log.debug("connection open", extra={"peer": conn.peer})

    def connection_dropped(self, conn: Connection, reason: str) -> None:
        self.stats.connections_dropped += 1
        if reason == "per_ip_limit":
            self.stats.connections_refused_per_ip += 1

    def connection_lost(self, conn: Connection) -> None:
        cs = self.registry.conns.pop(conn.id, None)
        if cs is None:
            return
        for pid in cs.devices:
            dev = self.registry.devices.get(pid)
            if dev is not None and dev.conn is conn:
                self._offline(dev, cs.close_reason)
        log.debug("connection closed", extra={"peer": conn.peer})

    def _offline(self, dev: Device, reason: str) -> None:
        dev.conn = None
        if not dev.online:
            return
        dev.online = False
        self.dispatcher.device_gone(dev.physical_id)
        self._event(dev, "device", events.offline(dev, self.gateway_id, reason))
        self._device_state(dev)
        log.info("device offline", extra={"device_id": dev.device_id, "reason": reason})

    def items_received(self, conn: Connection, items: list[StreamItem], nbytes: int) -> None:
        cs = self.registry.conns.get(conn.id)
        if cs is None:
            return
        self.stats.bytes_in += nbytes
        cs.last_rx = time.monotonic()
        for item in items:
            if isinstance(item, Frame):
                try:
                    self._on_frame(cs, item)
                except Exception:
                    # One bad frame must never take the link (or the process) down.
                    log.exception("frame handling failed", extra={"frame": item.encode().hex()})
            elif isinstance(item, Iccid):
                cs.iccid = item.value
            elif isinstance(item, Garbage):
                self.stats.garbage_bytes += item.count
            elif isinstance(item, BadFrame):
                self.stats.decode_errors += 1
                if isinstance(item.error, ChecksumError):
                    self.stats.checksum_errors += 1

    # ------------------------------------------------------------------ frames

    def _bind(self, cs: ConnState, frame: Frame) -> Device | None:
        conn = cs.conn
        if frame.physical_id not in cs.devices and len(cs.devices) >= MAX_DEVICES_PER_CONNECTION:
            self.stats.decode_errors += 1
            if not cs.warned:
                cs.warned = True  # once per connection: a flood must not flood the log too
                log.warning(
                    "too many physical ids on one connection, ignoring new ones",
                    extra={"peer": conn.peer, "physical_id": f"{frame.physical_id:08X}"},
                )
            return None
        dev = self.registry.device(frame.physical_id)
        if dev is None:
            self.stats.device_limit_frames += 1
            if not cs.warned:
                cs.warned = True
                log.warning(
                    "max_devices reached, ignoring a new physical id",
                    extra={"peer": conn.peer, "physical_id": f"{frame.physical_id:08X}"},
                )
            return None
        if dev.conn is not conn:
            old = dev.conn
            dev.conn = conn
            cs.devices.add(dev.physical_id)
            if old is not None:
                old_cs = self.registry.conns.get(old.id)
                if old_cs is not None:
                    old_cs.devices.discard(dev.physical_id)
                    if old.replaceable and not old_cs.devices:
                        log.info(
                            "device reconnected, closing its old connection",
                            extra={"device_id": dev.device_id, "old": old.peer},
                        )
                        old.close()
        if cs.iccid is not None:
            dev.iccid = cs.iccid
        dev.last_seen = time.time()
        dev.last_rx = time.monotonic()
        if not dev.online:
            dev.online = True
            self._event(dev, "device", events.online(dev, self.gateway_id, frame, conn.peer))
            self._device_state(dev)
            log.info("device online", extra={"device_id": dev.device_id, "peer": conn.peer})
        return dev

    def _on_frame(self, cs: ConnState, frame: Frame) -> None:
        self.stats.frames_in += 1
        dev = self._bind(cs, frame)
        if dev is None:
            return
        if dev.device_id in self._debug_ids:
            log.info("frame in", extra={"device_id": dev.device_id, "hex": frame.encode().hex(" ")})
        if self.taps:
            for tap in tuple(self.taps):  # a tap may remove itself (a capture that ends)
                tap(Sender.DEVICE, dev, frame)
        if frame.command >= 0x80 and frame.command != 0xFA:
            self._on_command_reply(dev, frame)
            return
        key: FrameKey = (frame.physical_id, frame.command, frame.message_id, frame.data)
        if key in self._recent:
            self.stats.duplicates += 1
            reply = self._recent.get(key)
            if frame.command in TIME_REQUESTS:
                # A rebooted device restarts its message ids: the time must still be now.
                reply = self._reply_frame(frame, p.TimeReply(int(time.time())))
            if reply:
                self._write(dev, reply)
            return
        self._recent.put(key, b"")
        try:
            payload = decode_payload(frame.command, frame.data, Sender.DEVICE)
        except PayloadError as exc:
            self.stats.decode_errors += 1
            self._event(dev, "device", events.unknown(dev, self.gateway_id, frame, str(exc)))
            return
        reply_payload = self._handle(dev, frame, key, payload)
        if reply_payload is not None:
            raw = self._reply_frame(frame, reply_payload)
            self._recent.update(key, raw)
            self._write(dev, raw)

    @staticmethod
    def _reply_frame(frame: Frame, payload: Any) -> bytes:
        """Replies carry the physical id, command and message id of what they answer."""
        return encode_frame(
            frame.physical_id, frame.message_id, frame.command, encode_payload(payload)
        )

    def _handle(self, dev: Device, frame: Frame, key: FrameKey, payload: Any) -> Any:
        """Publish what the frame means; return the reply payload to send now (or None)."""
        gw = self.gateway_id
        match payload:
            case p.Heartbeat():
                dev.seen_0x21 = True
                self._heartbeat(dev, frame, payload)
                return p.ResultReply(0)
            case p.LegacyHeartbeat():
                self._heartbeat(dev, frame, payload)
                # Reference 5.3: answering 0x01 after 0x21 would make the device flip-flop.
                return None if dev.seen_0x21 else p.ResultReply(0)
            case p.HostHeartbeat():
                self._heartbeat(dev, frame, payload)
                return None
            case p.Registration():
                events.apply_registration(dev, payload)
                self._event(dev, "device", events.register(dev, gw, frame, payload))
                self._device_state(dev)
                return p.ResultReply(0)
            case p.TimeRequest():
                now = int(time.time())
                self._event(dev, "device", events.time_sync(dev, gw, frame, now))
                return p.TimeReply(now)
            case p.CardSwipe():
                return self._card_swipe(dev, frame, payload)
            case p.OrderConfirmation():
                self._event(dev, "order", events.confirmed(dev, gw, frame, payload))
                return p.OrderConfirmationReply(payload.port, 0)
            case p.Settlement():
                self._settlement(dev, frame, key, payload)
                return None
            case p.PortPowerReport():
                self._port_state(dev, events.power_port_state(payload))
                self._event(dev, "port", events.power(dev, gw, frame, payload))
                return None
            case p.Alarm():
                self._event(dev, "device", events.alarm(dev, gw, frame, payload))
                return None
            case _:
                self._event(dev, "device", events.unknown(dev, gw, frame))
                return None

    def _heartbeat(self, dev: Device, frame: Frame, hb: Any) -> None:
        events.apply_heartbeat(dev, hb)
        for state in events.heartbeat_port_states(hb):
            self._port_state(dev, state)
            self._event(dev, "port", events.port_status(dev, self.gateway_id, frame, state))
        self._event(dev, "device", events.heartbeat(dev, self.gateway_id, frame, hb))
        self._device_state(dev)

    def _write(self, dev: Device, raw: bytes) -> bool:
        conn = dev.conn
        if conn is None or not conn.write(raw):
            return False
        self.stats.frames_out += 1
        self.stats.bytes_out += len(raw)
        if dev.device_id in self._debug_ids:
            log.info("frame out", extra={"device_id": dev.device_id, "hex": raw.hex(" ")})
        if self.taps:
            frame = decode_frame(raw)
            for tap in tuple(self.taps):
                tap(Sender.SERVER, dev, frame)
        return True

    def _send_command(self, dev: Device, raw: bytes) -> bool:
        return dev.online and self._write(dev, raw)

    # ------------------------------------------------------------------ settlement

    def _settlement(self, dev: Device, frame: Frame, key: FrameKey, s: p.Settlement) -> None:
        """Answer only after the broker has the `settled` event (the device keeps the record
        and resends it until answered). The event is critical (never dropped from the outbox)
        and keyed by its content, so resends, even with new message ids and across a gateway
        restart, publish it once (the outbox remembers published keys for a day)."""
        event = events.settled(dev, self.gateway_id, frame, s)
        published = self.mqtt.submit(
            self.topics.event(dev.device_id, "order"),
            event.to_json(),
            qos=1,
            critical=True,
            key=f"settled/{dev.device_id}/{s.port}/{bytes(s.order_no).hex()}",
        )
        reply = self._reply_frame(frame, p.ResultReply(0))

        def answer(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self._recent.update(key, reply)
                self._write(dev, reply)
            else:
                self._recent.pop(key)  # a later resend must try again
                error = "cancelled" if fut.cancelled() else repr(fut.exception())
                log.warning("settled event not published", extra={"error": error})

        published.add_done_callback(answer)

    # ------------------------------------------------------------------ card swipes

    def _card_swipe(self, dev: Device, frame: Frame, swipe: p.CardSwipe) -> Any:
        policy = self.settings.card_policy
        authorize = policy == "authorize"
        self._event(dev, "order", events.card_swipe(dev, self.gateway_id, frame, swipe, authorize))
        if not authorize:
            return self._card_policy_reply(swipe, policy)
        card = swipe.card_id.hex().upper()
        old = self._swipes.pop((dev.physical_id, card), None)
        if old is not None:
            old.timer.cancel()
        timer = asyncio.get_running_loop().call_later(
            self.settings.card_authorize_timeout_s, self._card_fallback, dev, card
        )
        self._swipes[(dev.physical_id, card)] = _PendingSwipe(frame, swipe, timer)
        return None

    def _card_policy_reply(self, swipe: p.CardSwipe, policy: str) -> p.CardSwipeReply:
        if policy == "accept":
            return events.card_reply(swipe, 0, 0, self.settings.card_balance_cents)
        return events.card_reply(swipe, 1, 0, 0)  # 1 = card not registered

    def _card_fallback(self, dev: Device, card: str) -> None:
        pending = self._swipes.pop((dev.physical_id, card), None)
        if pending is not None:
            log.info("card swipe not authorized in time", extra={"device_id": dev.device_id})
            reply = self._card_policy_reply(pending.swipe, self.settings.card_fallback_policy)
            self._answer_swipe(dev, pending.frame, reply)

    def _answer_swipe(self, dev: Device, frame: Frame, reply: p.CardSwipeReply) -> None:
        raw = self._reply_frame(frame, reply)
        self._recent.update((frame.physical_id, frame.command, frame.message_id, frame.data), raw)
        self._write(dev, raw)

    def _card_reply(self, dev: Device | None, pid: int, req: CardReplyRequest) -> CommandResponse:
        card = req.card_id.upper()
        pending = self._swipes.get((pid, card))
        if pending is None or (
            req.message_id is not None and req.message_id != pending.frame.message_id
        ):
            return response(req.request_id, False, "expired", "no card swipe is waiting")
        del self._swipes[(pid, card)]
        pending.timer.cancel()
        if dev is None or not dev.online:
            return response(req.request_id, False, "offline", "device is not connected")
        reply = events.card_reply(
            pending.swipe, req.account_status, requests.RATE_MODES[req.rate_mode], req.balance_cents
        )
        self._answer_swipe(dev, pending.frame, reply)
        return response(req.request_id, True, "ok", "card reply sent", code=req.account_status)

    # ------------------------------------------------------------------ device commands

    def _on_command_reply(self, dev: Device, frame: Frame) -> None:
        waited, request = self.dispatcher.on_reply(frame)
        if waited:
            return
        log.debug(
            "reply to no pending command",
            extra={"device_id": dev.device_id, "command": frame.command},
        )
        if isinstance(request, p.ChargeControl):
            # A reply after we gave up still says what the device did.
            self._order_result(dev, frame, request)

    def _order_result(self, dev: Device, frame: Frame, sent: p.ChargeControl) -> None:
        try:
            reply = decode_payload(frame.command, frame.data, Sender.DEVICE)
        except PayloadError:
            self.stats.decode_errors += 1
            return
        self._event(dev, "order", events.order_result(dev, self.gateway_id, frame, reply, sent))

    async def handle_request(self, topic: str, payload: bytes, properties: Any = None) -> None:
        """One `{b}/devices/{id}/request/{command}` message -> one response."""
        parsed = self.topics.parse_device_request(topic)
        if parsed is None:
            return
        try:
            resp = await self._request(parsed.device_id, parsed.command, payload)
        except Exception as exc:
            log.exception("device request failed", extra={"topic": topic})
            resp = response(None, False, "failed", f"internal error: {exc!r}")
        body = resp.to_json()
        futures = [
            self.mqtt.submit(self.topics.device_response(parsed.device_id, parsed.command), body)
        ]
        response_topic = getattr(properties, "ResponseTopic", None)
        if response_topic and not self.topics.allowed_response_topic(response_topic):
            log.warning(
                "response topic refused: outside %s inside the base topic",
                self.topics.replies,
                extra={"topic": topic, "response_topic": response_topic},
            )
        elif response_topic:
            futures.append(
                self.mqtt.submit(response_topic, body, properties=_response_properties(properties))
            )
        for fut in futures:
            fut.add_done_callback(_log_failure)

    async def _request(self, device_id: str, command: str, payload: bytes) -> CommandResponse:
        if too_big := oversized(payload):
            return response(None, False, "invalid", too_big)
        try:
            body = json.loads(payload or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            return response(None, False, "invalid", f"payload is not JSON: {exc}")
        if not isinstance(body, dict):
            return response(None, False, "invalid", "payload must be a JSON object")
        rid = body.get("request_id")
        request_id = rid if isinstance(rid, str) else None
        model = DEVICE_COMMAND_REQUESTS.get(command)
        if model is None:
            known = ", ".join(DEVICE_COMMAND_REQUESTS)
            return response(
                request_id, False, "invalid", f"unknown command {command!r}; known: {known}"
            )
        if not DEVICE_ID_RE.match(device_id):
            return response(
                request_id,
                False,
                "invalid",
                f"device_id {device_id!r} is not 8 upper-case hex digits",
            )
        try:
            req = model.model_validate_json(payload or b"{}")
            plan = None if isinstance(req, CardReplyRequest) else requests.plan(req)
        except ValidationError as exc:
            return response(request_id, False, "invalid", _validation_message(exc))
        except ValueError as exc:
            return response(request_id, False, "invalid", str(exc))
        pid = int(device_id, 16)
        dev = self.registry.devices.get(pid)
        if isinstance(req, CardReplyRequest):
            return self._card_reply(dev, pid, req)
        if dev is None or not dev.online:
            return response(request_id, False, "offline", "device is not connected")
        if not dev.command_allowed(time.monotonic(), self.settings.max_commands_per_minute):
            self.stats.commands_rate_limited += 1
            return response(
                request_id,
                False,
                "rate_limited",
                f"more than {self.settings.max_commands_per_minute} commands in a minute",
            )
        if dev.queued >= MAX_QUEUED_PER_DEVICE:
            return response(request_id, False, "busy", "too many commands queued for this device")
        assert plan is not None
        dev.queued += 1
        try:
            return await self._run_plan(dev, request_id, req, plan)
        finally:
            dev.queued -= 1

    async def _run_plan(
        self, dev: Device, request_id: str | None, req: Any, plan: list[requests.Step]
    ) -> CommandResponse:
        fields: dict[str, Any] = {}
        code: int | None = None
        message = "sent; this command has no reply"
        for step in plan:
            try:
                frame = await self.dispatcher.execute(
                    dev, step.command, step.data, expect_reply=step.expect_reply, context=step.sent
                )
            except DeviceOffline:
                return response(request_id, False, "offline", "device is not connected", **fields)
            except CommandTimeout:
                return response(
                    request_id,
                    False,
                    "timeout",
                    f"no reply to command 0x{step.command:02X} after one resend",
                    **fields,
                )
            if frame is None:
                fields.update(step.extra)
                continue
            outcome = requests.outcome(step, frame)
            if isinstance(step.sent, p.ChargeControl):
                self._order_result(dev, frame, step.sent)
            fields.update(step.extra)
            fields.update(outcome.fields)
            code = outcome.code
            message = outcome.message
            if not outcome.ok:
                return response(request_id, False, outcome.result, outcome.message, code, **fields)
        return response(request_id, True, "ok", message, code, **fields)

    # ------------------------------------------------------------------ background work

    async def stats_forever(self) -> None:
        """Publish `bridge/stats` when the counters changed, at most every `stats_interval`."""
        last: dict[str, int] | None = None
        while True:
            self.stats.events_dropped = self.mqtt.dropped
            current = self.stats.counters(len(self.registry.conns), self.registry.online_count())
            if current != last:
                snapshot = self.stats.snapshot(current["connections"], current["devices_online"])
                self._submit(self.topics.bridge_stats, snapshot, retain=True)
                last = current
            await asyncio.sleep(self.settings.stats_interval)

    async def idle_forever(self) -> None:
        """Close connections silent for `idle_timeout`; on a serial line, where the line stays
        open, mark the silent devices offline instead."""
        idle = self.settings.idle_timeout
        while True:
            await asyncio.sleep(min(idle / 4, 5.0))
            now = time.monotonic()
            for cs in list(self.registry.conns.values()):
                if cs.conn.replaceable:
                    if now - cs.last_rx > idle:
                        cs.close_reason = "idle"
                        cs.conn.close()
                    continue
                for pid in list(cs.devices):
                    dev = self.registry.devices[pid]
                    if dev.online and now - dev.last_rx > idle:
                        cs.devices.discard(pid)
                        self._offline(dev, "idle")

    async def shutdown(self, flush_timeout_s: float = 5.0) -> None:
        """Publish every device offline and the bridge offline, then wait for the broker."""
        for pending in self._swipes.values():
            pending.timer.cancel()
        for dev in self.registry.devices.values():
            if dev.online:
                self._offline(dev, "shutdown")
        self.bridge_state("offline")
        last = self._last_submit
        if last is not None:
            try:
                async with asyncio.timeout(flush_timeout_s):
                    await asyncio.shield(last)
            except (TimeoutError, Exception):
                log.warning("could not flush all messages to the broker before exit")


def _log_failure(fut: asyncio.Future[None]) -> None:
    """Dropped messages are counted (`events_dropped`), not logged one by one."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None and not isinstance(exc, MessageDropped):
        log.warning("publish failed", extra={"error": repr(exc)})


def _response_properties(request_props: Any) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    correlation = getattr(request_props, "CorrelationData", None)
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "request"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
