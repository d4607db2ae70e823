"""The device-command client: `start_charging` / `stop_charging` to the gateway over MQTT.

The service never talks to devices itself (API.md section 5): it publishes the gateway's own
request models and waits for the `CommandResponse` on `{b}/devices/{id}/response/{command}`,
matched by a fresh `request_id` per attempt. Resending is safe: the order number makes the
command idempotent at the device.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

from pydantic import ValidationError

from bridge.charging.settings import ChargingSettings
from bridge.mqtt.payloads import (
    CommandResponse,
    StartChargingRequest,
    StopChargingRequest,
    response,
)
from bridge.mqtt.topics import Topics

log = logging.getLogger("chargebridge.charging")

DeviceCommand = StartChargingRequest | StopChargingRequest
COMMAND_NAMES: dict[type[DeviceCommand], str] = {
    StartChargingRequest: "start_charging",
    StopChargingRequest: "stop_charging",
}
# Gateway results worth a resend: the device did not answer, or its command queue was full.
RETRYABLE = frozenset({"timeout", "busy"})


class Publisher(Protocol):
    """What the service needs of an MQTT client to publish (MqttClient, or a test's fake)."""

    def submit(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]: ...


class DeviceCommands:
    """Sends device commands and waits for their responses; `timeout`/`busy` are retried.

    A command the gateway reports as `timeout` (the device did not answer) or `busy`, or that
    gets no response at all within `request_timeout_s` (gateway away), is sent again up to
    `max_retries` times after `retry_backoff_s`, doubling; `offline` and refusals are final.
    `on_retry` is called before each resend (the service counts them).
    """

    def __init__(
        self,
        settings: ChargingSettings,
        topics: Topics,
        publisher: Publisher,
        *,
        on_retry: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.publisher = publisher
        self.on_retry = on_retry
        self._waiting: dict[str, asyncio.Future[CommandResponse]] = {}

    async def send(self, device_id: str, command: DeviceCommand) -> CommandResponse:
        """Send `command` to `device_id` until it has a final response; returns it."""
        name = COMMAND_NAMES[type(command)]
        backoff = self.settings.retry_backoff_s
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                self.on_retry()
                await asyncio.sleep(backoff)
                backoff *= 2
            reply = await self._attempt(device_id, name, command)
            if reply.result not in RETRYABLE:
                return reply
        return reply

    async def _attempt(self, device_id: str, name: str, command: DeviceCommand) -> CommandResponse:
        request_id = uuid.uuid4().hex
        future: asyncio.Future[CommandResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        body = command.model_copy(update={"request_id": request_id})
        # Only the fields the request gave: the gateway applies its own defaults.
        payload = body.model_dump_json(exclude_unset=True, warnings=False)
        self.publisher.submit(self.topics.device_request(device_id, name), payload)
        timeout = self.settings.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return response(request_id, False, "timeout", f"no response in {timeout} s")
        finally:
            self._waiting.pop(request_id, None)

    def handle_reply(self, payload: bytes) -> None:
        """A device command response: wake the attempt waiting for it (others are stale)."""
        try:
            reply = CommandResponse.model_validate_json(payload)
        except ValidationError:
            log.debug("ignoring a malformed command response")
            return
        future = self._waiting.get(reply.request_id or "")
        if future is not None and not future.done():
            future.set_result(reply)


def reply_port(reply: CommandResponse) -> int | None:
    """The port a start response names (a decoded reply field), if it names one."""
    port = (reply.model_extra or {}).get("port")
    return port if isinstance(port, int) and not isinstance(port, bool) else None


def reply_reason(reply: CommandResponse) -> str:
    return reply.message or reply.result or "no reason given"
