"""Flows answered later than the frame: settlements (0x03) and card swipes (0x02).

A settlement is answered only once the broker acknowledged the `settled` event: the device
keeps the record and resends it until answered, so an unacknowledged one must stay unanswered.
A card swipe is answered by the configured policy, or, under `authorize`, by a `card_reply`
request, falling back to `card_fallback_policy` after `card_authorize_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging

import protocol as p
from bridge.config import GatewaySettings
from bridge.gateway import events, requests
from bridge.gateway.duties import Answers, frame_key
from bridge.gateway.publishing import Publishing
from bridge.gateway.registry import Device
from bridge.mqtt.payloads import CardReplyRequest, CommandResponse, response
from protocol import Frame

log = logging.getLogger(__name__)


class _PendingSwipe:
    __slots__ = ("frame", "swipe", "timer")

    def __init__(self, frame: Frame, swipe: p.CardSwipe, timer: asyncio.TimerHandle) -> None:
        self.frame = frame
        self.swipe = swipe
        self.timer = timer


class Flows:
    """Settlements and card swipes; `stop()` cancels the swipe timers."""

    def __init__(self, settings: GatewaySettings, publishing: Publishing, answers: Answers) -> None:
        self.settings = settings
        self.publishing = publishing
        self.answers = answers
        self._swipes: dict[tuple[int, str], _PendingSwipe] = {}

    # ------------------------------------------------------------------ settlement

    def settlement(self, dev: Device, frame: Frame, s: p.Settlement) -> None:
        """Answer only after the broker has the `settled` event. The event is critical (never
        dropped from the outbox) and keyed by its content, so resends, even with new message
        ids and across a gateway restart, publish it once (the outbox remembers published keys
        for a day)."""
        event = events.settled(dev, self.publishing.gateway_id, frame, s)
        key = f"settled/{dev.device_id}/{s.port}/{bytes(s.order_no).hex()}"
        published = self.publishing.critical_event(dev, "order", event, key)

        def answer(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self.answers.answer(dev, frame, p.ResultReply(0))
            else:
                self.answers.forget(frame_key(frame))  # a later resend must try again
                error = "cancelled" if fut.cancelled() else repr(fut.exception())
                log.warning("settled event not published", extra={"error": error})

        published.add_done_callback(answer)

    # ------------------------------------------------------------------ card swipes

    def card_swipe(self, dev: Device, frame: Frame, swipe: p.CardSwipe) -> None:
        policy = self.settings.card_policy
        authorize = policy == "authorize"
        gw = self.publishing.gateway_id
        self.publishing.event(dev, "order", events.card_swipe(dev, gw, frame, swipe, authorize))
        if not authorize:
            self.answers.answer(dev, frame, self._policy_reply(swipe, policy))
            return
        card = swipe.card_id.hex().upper()
        old = self._swipes.pop((dev.physical_id, card), None)
        if old is not None:
            old.timer.cancel()
        timer = asyncio.get_running_loop().call_later(
            self.settings.card_authorize_timeout_s, self._fallback, dev, card
        )
        self._swipes[(dev.physical_id, card)] = _PendingSwipe(frame, swipe, timer)

    def _policy_reply(self, swipe: p.CardSwipe, policy: str) -> p.CardSwipeReply:
        if policy == "accept":
            return events.card_reply(swipe, 0, 0, self.settings.card_balance_cents)
        return events.card_reply(swipe, 1, 0, 0)  # 1 = card not registered

    def _fallback(self, dev: Device, card: str) -> None:
        pending = self._swipes.pop((dev.physical_id, card), None)
        if pending is not None:
            log.info("card swipe not authorized in time", extra={"device_id": dev.device_id})
            reply = self._policy_reply(pending.swipe, self.settings.card_fallback_policy)
            self.answers.answer(dev, pending.frame, reply)

    def card_reply(self, dev: Device | None, pid: int, req: CardReplyRequest) -> CommandResponse:
        """A `card_reply` request: answer the swipe waiting for it, if it still waits."""
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
        self.answers.answer(dev, pending.frame, reply)
        return response(req.request_id, True, "ok", "card reply sent", code=req.account_status)

    def stop(self) -> None:
        for pending in self._swipes.values():
            pending.timer.cancel()
