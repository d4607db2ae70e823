"""Protocol duties: what the reference requires the server to answer, at once.

Heartbeats, registration, time, order confirmations are answered here, echoing the message id;
power reports, alarms and unknown frames are published. Each upstream frame is decoded once.
Upstream resends (same physical id, command, message id and data) get the same reply again and
publish nothing. Settlements and card swipes, answered later, go to `flows`.
"""

from __future__ import annotations

import logging
from typing import Any

import protocol as p
from bridge.gateway import events
from bridge.gateway.clock import Clock
from bridge.gateway.connections import Connections
from bridge.gateway.dedup import BoundedTtlMap
from bridge.gateway.dispatcher import Reply
from bridge.gateway.publishing import Publishing
from bridge.gateway.registry import Device
from bridge.gateway.requests import reply_fields
from bridge.gateway.stats import GatewayStats
from bridge.mqtt.payloads import iso_utc
from protocol import Frame, PayloadError, Sender, decode_frame, decode_payload
from protocol.commands.field import (
    FSK_PARAMS,
    HostUpgradeRequest,
    answer_fsk_params_request,
    answer_host_upgrade_request,
)

log = logging.getLogger(__name__)

RECENT_FRAMES = 50_000
RECENT_TTL_S = 600.0
# A rebooted device restarts its message ids: a resent time request is answered with now.
TIME_REQUESTS = p.commands_for(p.TimeRequest, Sender.DEVICE)

FrameKey = tuple[int, int, int, bytes]
# The reply given to an upstream frame, as its bytes (decoded again for a resend, which is
# rare: a Frame kept per answer cost ~150 bytes per device); b"" while none (yet).
Answer = bytes


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

    def get(self, key: FrameKey) -> tuple[Frame, bytes] | None:
        """The reply given to `key`, if one was."""
        raw = self._recent.get(key)
        return (decode_frame(raw), raw) if raw else None

    def first(self, key: FrameKey) -> bool:
        """Whether `key` is new. A new one is seen from now, its reply not decided yet (b""):
        a resend meanwhile is a duplicate answered with nothing."""
        return self._recent.add(key, b"") is None

    def forget(self, key: FrameKey) -> None:
        """A later resend must be handled anew (its settlement was not published)."""
        self._recent.pop(key)

    def remember(self, frame: Frame, out: Frame, raw: bytes) -> None:
        """Record `out` as the answer to `frame` (for resends) without writing it."""
        self._recent.update(frame_key(frame), raw)

    def answer(self, dev: Device, frame: Frame, payload: p.Payload) -> None:
        """Send the reply to `frame` and remember it for resends."""
        out = reply_frame(frame, payload)
        raw = out.encode()
        self._recent.update(frame_key(frame), raw)
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
        self.on_status_only_changes = False  # `port_status_on_change_only`
        # wired by the Gateway once they exist
        self.upgrades: Any = None  # bridge.gateway.upgrade.Upgrades
        self.power: Any = None  # bridge.gateway.power.Power
        self.dispatcher: Any = None  # bridge.gateway.dispatcher.Dispatcher

    def on_frame(self, dev: Device, frame: Frame) -> None:
        if self.upgrades is not None:
            self.upgrades.seen(dev)
        key = frame_key(frame)
        if not self.answers.first(key):
            self.stats.duplicates += 1
            if frame.command in TIME_REQUESTS:
                self.answers.answer(dev, frame, p.TimeReply(int(self.clock.time())))
                return
            previous = self.answers.get(key)
            if previous:
                self.connections.write(dev, *previous)
            return
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
            case p.PortPowerReport():  # first: most frames at scale (every 5 min per port)
                state = events.power_port_state(payload, iso_utc())
                self.publishing.port_state(dev, state)
                event(dev, "port", events.power(dev, gw, frame, payload, state))
                self._observe_power()
                return None
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
            case p.Alarm():
                event(dev, "device", events.alarm(dev, gw, frame, payload))
                return None
            case p.UpgradeRequest() | p.LegacyUpgradeRequest():
                # 0x05 is not answered; during an F8 transfer it restarts it at packet 1.
                event(dev, "device", events.upgrade_request(dev, gw, frame, payload))
                self._restart_upgrade(dev)
                return None
            case HostUpgradeRequest():
                event(dev, "device", events.upgrade_request(dev, gw, frame, payload))
                self._restart_upgrade(dev)
                return answer_host_upgrade_request(payload)
            case p.UpgradeReply():
                self._host_upgrade(dev, frame, payload)
                return None
            case p.HostStatus():
                event(dev, "device", events.host_status(dev, gw, frame, payload))
                return None
            case p.ExtensionVersions():
                event(dev, "device", events.extension_versions(dev, gw, frame, payload))
                return None
            case p.CabinetHeartbeat():
                event(dev, "device", events.cabinet_heartbeat(dev, gw, frame, payload))
                return None
            case p.ChargeFinished():
                event(dev, "device", events.charge_finished(dev, gw, frame, payload))
                return None
            case p.PortPush():
                event(dev, "device", events.port_push(dev, gw, frame, payload))
                return None
            case p.FskParamsRequest():
                self._fsk_params(dev, frame, payload)
                return None
            case p.RawPayload():
                event(dev, "device", events.unknown(dev, gw, frame))
                return None
            case _:
                # A documented layout without an event of its own (0x00, 0x09, 0x0A, a
                # host's 0x3A result): its decoded fields.
                fields = reply_fields(payload)
                event(dev, "device", events.frame_fields(dev, gw, frame, fields))
                return None

    def _observe_power(self) -> None:
        if self.power is not None:
            self.power.observe()

    def _restart_upgrade(self, dev: Device) -> None:
        if self.upgrades is not None and self.upgrades.restart(dev):
            log.info("upgrade restarts at packet 1", extra={"device_id": dev.device_id})

    def _host_upgrade(self, dev: Device, frame: Frame, reply: p.UpgradeReply) -> None:
        """A host's 0xFA: the answer to one of our 0xFA frames, or its own request for the
        firmware (packet 0), after which the transfer restarts at packet 1."""
        if self.dispatcher is not None:
            waited, _ = self.dispatcher.on_reply(Reply(frame, reply))
            if waited:
                return
        if reply.is_request:
            gw = self.publishing.gateway_id
            self.publishing.event(dev, "device", events.upgrade_request(dev, gw, frame, reply))
            self._restart_upgrade(dev)

    def _fsk_params(self, dev: Device, frame: Frame, req: p.FskParamsRequest) -> None:
        """0x3B is answered by a 0x3A command with the same message id (reference 0x3B),
        naming every extension on the host's connection."""
        cs = self.connections.registry.conns.get(dev.conn.id) if dev.conn is not None else None
        ids = tuple(sorted(pid for pid in (cs.devices if cs else ()) if pid != dev.physical_id))
        answer = answer_fsk_params_request(req, ids)
        gw = self.publishing.gateway_id
        self.publishing.event(dev, "device", events.fsk_params(dev, gw, frame, answer))
        out = Frame(frame.physical_id, frame.message_id, FSK_PARAMS, answer.encode())
        raw = out.encode()
        self.answers.remember(frame, out, raw)
        self.connections.write(dev, out, raw)

    def _heartbeat(self, dev: Device, frame: Frame, hb: Any) -> None:
        gw = self.publishing.gateway_id
        events.apply_heartbeat(dev, hb)
        for state in events.heartbeat_port_states(hb):
            old = dev.ports.get(state.port)
            self.publishing.port_state(dev, state)
            unchanged = old is not None and old.status_code == state.status_code
            if unchanged and self.on_status_only_changes:
                self.stats.status_events_suppressed += 1
                continue
            self.publishing.event(dev, "port", events.port_status(dev, gw, frame, state))
        if not isinstance(hb, p.HostHeartbeat):
            self._observe_power()  # 0x01 powers, and ports that stopped charging
        self.publishing.event(dev, "device", events.heartbeat(dev, gw, frame, hb))
        self.publishing.device_state(dev)
