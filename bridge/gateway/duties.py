"""Protocol duties: what the reference requires the server to answer, at once.

Heartbeats, registration, time, order confirmations are answered here, echoing the message id;
power reports, alarms and unknown frames are published. Each upstream frame is decoded once.
Upstream resends (same physical id, command, message id and data) get the same reply again and
publish nothing. Settlements and card swipes, answered later, go to `flows`.
"""

from __future__ import annotations

from typing import Any

import protocol as p
from bridge.gateway import events
from bridge.gateway.clock import Clock
from bridge.gateway.connections import Connections
from bridge.gateway.dedup import BoundedTtlMap
from bridge.gateway.publishing import Publishing
from bridge.gateway.registry import Device
from bridge.gateway.stats import GatewayStats
from protocol import Frame, PayloadError, Sender, decode_payload

RECENT_FRAMES = 50_000
RECENT_TTL_S = 600.0
# A rebooted device restarts its message ids: a resent time request is answered with now.
TIME_REQUESTS = p.commands_for(p.TimeRequest, Sender.DEVICE)

FrameKey = tuple[int, int, int, bytes]
# The reply given to an upstream frame, as frame and bytes; () while none (yet).
Answer = tuple[Frame, bytes] | tuple[()]


def frame_key(frame: Frame) -> FrameKey:
    return (frame.physical_id, frame.command, frame.message_id, frame.data)


def reply_frame(frame: Frame, payload: p.Payload) -> Frame:
    """Replies carry the physical id, command and message id of what they answer."""
    return Frame(frame.physical_id, frame.message_id, frame.command, payload.encode())


class Answers:
    """Upstream frames seen recently and the reply each got, to answer resends alike."""

    def __init__(self, connections: Connections) -> None:
        self._recent: BoundedTtlMap[FrameKey, Answer] = BoundedTtlMap(RECENT_FRAMES, RECENT_TTL_S)
        self._connections = connections

    def __contains__(self, key: FrameKey) -> bool:
        return key in self._recent

    def get(self, key: FrameKey) -> Answer | None:
        return self._recent.get(key)

    def pending(self, key: FrameKey) -> None:
        """Seen, reply not decided yet: a resend meanwhile is a duplicate answered with nothing."""
        self._recent.put(key, ())

    def forget(self, key: FrameKey) -> None:
        """A later resend must be handled anew (its settlement was not published)."""
        self._recent.pop(key)

    def answer(self, dev: Device, frame: Frame, payload: p.Payload) -> None:
        """Send the reply to `frame` and remember it for resends."""
        out = reply_frame(frame, payload)
        raw = out.encode()
        self._recent.update(frame_key(frame), (out, raw))
        self._connections.write(dev, out, raw)


class Duties:
    """Handles every upstream frame (not a reply to our commands)."""

    def __init__(
        self,
        connections: Connections,
        publishing: Publishing,
        stats: GatewayStats,
        clock: Clock,
        flows: Any,
        answers: Answers,
    ) -> None:
        self.connections = connections
        self.publishing = publishing
        self.stats = stats
        self.clock = clock
        self.flows = flows  # bridge.gateway.flows.Flows (settlement, card swipes)
        self.answers = answers

    def on_frame(self, dev: Device, frame: Frame) -> None:
        key = frame_key(frame)
        if key in self.answers:
            self.stats.duplicates += 1
            if frame.command in TIME_REQUESTS:
                self.answers.answer(dev, frame, p.TimeReply(int(self.clock.time())))
                return
            previous = self.answers.get(key)
            if previous:
                self.connections.write(dev, *previous)
            return
        self.answers.pending(key)
        try:
            payload = decode_payload(frame.command, frame.data, Sender.DEVICE)
        except PayloadError as exc:
            self.stats.decode_errors += 1
            unknown = events.unknown(dev, self.publishing.gateway_id, frame, str(exc))
            self.publishing.event(dev, "device", unknown)
            return
        reply = self._handle(dev, frame, payload)
        if reply is not None:
            self.answers.answer(dev, frame, reply)

    def _handle(self, dev: Device, frame: Frame, payload: p.Payload) -> p.Payload | None:
        """Publish what the frame means; return the reply payload to send now (or None)."""
        gw = self.publishing.gateway_id
        event = self.publishing.event
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
                event(dev, "device", events.register(dev, gw, frame, payload))
                self.publishing.device_state(dev)
                return p.ResultReply(0)
            case p.TimeRequest():
                now = int(self.clock.time())
                event(dev, "device", events.time_sync(dev, gw, frame, now))
                return p.TimeReply(now)
            case p.CardSwipe():
                self.flows.card_swipe(dev, frame, payload)
                return None
            case p.OrderConfirmation():
                event(dev, "order", events.confirmed(dev, gw, frame, payload))
                return p.OrderConfirmationReply(payload.port, 0)
            case p.Settlement():
                self.flows.settlement(dev, frame, payload)
                return None
            case p.PortPowerReport():
                self.publishing.port_state(dev, events.power_port_state(payload))
                event(dev, "port", events.power(dev, gw, frame, payload))
                return None
            case p.Alarm():
                event(dev, "device", events.alarm(dev, gw, frame, payload))
                return None
            case _:
                event(dev, "device", events.unknown(dev, gw, frame))
                return None

    def _heartbeat(self, dev: Device, frame: Frame, hb: Any) -> None:
        gw = self.publishing.gateway_id
        events.apply_heartbeat(dev, hb)
        for state in events.heartbeat_port_states(hb):
            self.publishing.port_state(dev, state)
            self.publishing.event(dev, "port", events.port_status(dev, gw, frame, state))
        self.publishing.event(dev, "device", events.heartbeat(dev, gw, frame, hb))
        self.publishing.device_state(dev)
