"""Device commands: the MQTT request API and the replies to what it sent.

`{b}/devices/{id}/request/{command}` -> validated request -> `requests.plan` steps -> the
`Dispatcher` (spacing, one resend, timeout) -> one response on `.../response/{command}` (and
the MQTT v5 response topic). A reply frame is decoded once here, and that one `Reply` feeds both
the waiting request and the `started`/`stopped` order event.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

import protocol as p
from bridge.config import GatewaySettings
from bridge.gateway import events, requests
from bridge.gateway.clock import Clock
from bridge.gateway.dispatcher import CommandTimeout, DeviceOffline, Dispatcher, Reply
from bridge.gateway.flows import Flows
from bridge.gateway.peers import Peers
from bridge.gateway.power import Power
from bridge.gateway.publishing import Publishing, log_failure
from bridge.gateway.registry import Device, Registry
from bridge.gateway.stats import GatewayStats
from bridge.gateway.trust import Trust
from bridge.gateway.upgrade import Upgrades
from bridge.mqtt.client import reply_properties
from bridge.mqtt.payloads import (
    DEVICE_COMMAND_REQUESTS,
    DEVICE_ID_RE,
    AdjustPowerRequest,
    CardReplyRequest,
    CommandResponse,
    UnpinRequest,
    UpgradeFirmwareRequest,
    describe,
    oversized,
    response,
)
from protocol import Frame, PayloadError, Sender, decode_payload

# Served by their own units instead of `requests.plan` steps.
_NOT_PLANNED = (CardReplyRequest, AdjustPowerRequest, UpgradeFirmwareRequest, UnpinRequest)

log = logging.getLogger(__name__)

MAX_QUEUED_PER_DEVICE = 16


class Commands:
    """Serves device requests; routes reply frames to the dispatcher."""

    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        stats: GatewayStats,
        publishing: Publishing,
        dispatcher: Dispatcher,
        flows: Flows,
        clock: Clock,
        trust: Trust,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.stats = stats
        self.publishing = publishing
        self.dispatcher = dispatcher
        self.flows = flows
        self.clock = clock
        # wired by the Gateway once they exist
        self.power: Power | None = None
        self.upgrades: Upgrades | None = None
        self.peers: Peers | None = None
        self.trust = trust

    # ------------------------------------------------------------------ replies

    def on_reply(self, dev: Device, frame: Frame) -> None:
        try:
            got = Reply(frame, decode_payload(frame.command, frame.data, Sender.DEVICE))
        except PayloadError as exc:
            got = Reply(frame, None, str(exc))
        waited, request = self.dispatcher.on_reply(got)
        if waited:
            return
        log.debug(
            "reply to no pending command",
            extra={"device_id": dev.device_id, "command": frame.command},
        )
        if isinstance(request, p.ChargeControl):
            # A reply after we gave up still says what the device did.
            self._order_result(dev, got, request)

    def _order_result(self, dev: Device, got: Reply, sent: p.ChargeControl) -> None:
        if got.payload is None:
            self.stats.decode_errors += 1
            return
        gw = self.publishing.gateway_id
        event = events.order_result(dev, gw, got.frame, got.payload, sent)
        self.publishing.event(dev, "order", event)

    # ------------------------------------------------------------------ requests

    async def handle_request(
        self, topic: str, payload: bytes, properties: Any = None, *, retain: bool = False
    ) -> None:
        """One `{b}/devices/{id}/request/{command}` message -> one response.

        A retained request (replayed by the broker at every subscription) and an empty payload
        (how a retained message is cleared) are ignored and counted, never executed."""
        topics = self.publishing.topics
        mqtt = self.publishing.mqtt
        parsed = topics.parse_device_request(topic)
        if parsed is None:
            return
        if retain or not payload:
            self.stats.requests_ignored += 1
            log.info(
                "device request ignored: %s",
                "retained" if retain else "empty payload",
                extra={"topic": topic},
            )
            return
        if self.peers is not None and not await self.peers.answers(parsed.device_id):
            # Another gateway answers (docs/scaling.md). Each gateway keeps its own pins,
            # so an `unpin` is carried out by every one of them, answered by one.
            self.stats.requests_left_to_peers += 1
            if parsed.command == "unpin":
                await self.request(parsed.device_id, parsed.command, payload)
            return
        try:
            resp = await self.request(parsed.device_id, parsed.command, payload)
        except Exception as exc:
            log.exception("device request failed", extra={"topic": topic})
            resp = response(None, False, "failed", f"internal error: {exc!r}")
        body = resp.to_json()
        futures = [mqtt.submit(topics.device_response(parsed.device_id, parsed.command), body)]
        response_topic = getattr(properties, "ResponseTopic", None)
        if response_topic and not topics.allowed_response_topic(response_topic):
            log.warning(
                "response topic refused: outside %s inside the base topic",
                topics.replies,
                extra={"topic": topic, "response_topic": response_topic},
            )
        elif response_topic:
            futures.append(
                mqtt.submit(response_topic, body, properties=reply_properties(properties))
            )
        for fut in futures:
            fut.add_done_callback(log_failure)

    async def request(self, device_id: str, command: str, payload: bytes) -> CommandResponse:
        """Validate, send and wait: the response to one request body."""
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
            plan = None if isinstance(req, _NOT_PLANNED) else requests.plan(req)
        except ValidationError as exc:
            return response(request_id, False, "invalid", describe(exc))
        except ValueError as exc:
            return response(request_id, False, "invalid", str(exc))
        pid = int(device_id, 16)
        dev = self.registry.devices.get(pid)
        if isinstance(req, CardReplyRequest):
            return self.flows.card_reply(dev, pid, req)
        if isinstance(req, UnpinRequest):
            return self.trust.unpin(pid, request_id)
        if dev is not None and (bad_port := port_error(dev, req)):
            return response(request_id, False, "invalid", bad_port)
        if dev is None or not dev.online:
            return response(request_id, False, "offline", "device is not connected")
        per_minute = self.settings.max_commands_per_minute
        if not dev.command_allowed(self.clock.monotonic(), per_minute):
            self.stats.commands_rate_limited += 1
            return response(
                request_id, False, "rate_limited", f"more than {per_minute} commands in a minute"
            )
        if dev.queued >= MAX_QUEUED_PER_DEVICE:
            return response(request_id, False, "busy", "too many commands queued for this device")
        if isinstance(req, UpgradeFirmwareRequest):
            assert self.upgrades is not None
            return await self.upgrades.run(dev, req, request_id)
        dev.queued += 1
        try:
            if isinstance(req, AdjustPowerRequest):
                assert self.power is not None
                return await self.power.adjust(dev, req, request_id)
            assert plan is not None
            return await self._run_plan(dev, request_id, plan)
        finally:
            dev.queued -= 1

    async def _run_plan(
        self, dev: Device, request_id: str | None, plan: list[requests.Step]
    ) -> CommandResponse:
        fields: dict[str, Any] = {}
        code: int | None = None
        message = "sent; this command has no reply"
        for step in plan:
            try:
                got = await self.dispatcher.execute(
                    dev, step.command, step.data, expect_reply=step.expect_reply, context=step.sent
                )
            except DeviceOffline as exc:
                return response(request_id, False, "offline", str(exc), **fields)
            except CommandTimeout:
                return response(
                    request_id,
                    False,
                    "timeout",
                    f"no reply to command 0x{step.command:02X} after one resend",
                    **fields,
                )
            if got is None:
                fields.update(step.extra)
                continue
            outcome = requests.outcome(step, got)
            if isinstance(step.sent, p.ChargeControl):
                self._order_result(dev, got, step.sent)
            fields.update(step.extra)
            fields.update(outcome.fields)
            code = outcome.code
            message = outcome.message
            if not outcome.ok:
                return response(request_id, False, outcome.result, outcome.message, code, **fields)
        return response(request_id, True, "ok", message, code, **fields)


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line a person can read (the contract's `describe`)."""
    return describe(exc)


def port_error(dev: Device, req: object) -> str | None:
    """Why a request's port cannot exist on this charger (its known port count), or None."""
    port = getattr(req, "port", None)
    count = dev.port_count
    if not isinstance(port, int) or count is None or port <= count:
        return None
    return f"port: this charger has {count} port{'' if count == 1 else 's'}"
