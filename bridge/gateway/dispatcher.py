"""Sends commands to devices under the protocol's rules (reference 5.1).

One command in flight per physical id, at least `spacing_s` between two commands to the same
id, a reply matched by (physical id, command, message id), and one resend with the same message
id after `timeout_s` before giving up. A reply's payload is decoded once, by whoever routes it
here (`on_reply`), and that one `Reply` serves the waiting request and any event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.gateway.dedup import BoundedTtlMap
from bridge.gateway.registry import Device
from bridge.gateway.stats import GatewayStats
from protocol import Frame, Payload


class DeviceOffline(Exception):
    """The device is not (or no longer) connected here; the message says why."""

    def __init__(self, message: str = "device is not connected") -> None:
        super().__init__(message)


class CommandTimeout(Exception):
    pass


ReplyKey = tuple[int, int, int]  # physical id, command, message id


@dataclass(frozen=True, slots=True)
class Reply:
    """A device's reply frame and its payload, decoded once (`error` when it would not)."""

    frame: Frame
    payload: Payload | None
    error: str | None = None


class Dispatcher:
    def __init__(
        self,
        send: Callable[[Device, Frame, bytes], bool],
        stats: GatewayStats,
        *,
        timeout_s: float = 15.0,
        spacing_s: float = 0.5,
    ) -> None:
        self._send = send
        self._stats = stats
        self.timeout_s = timeout_s
        self.spacing_s = spacing_s
        self._pending: dict[ReplyKey, asyncio.Future[Reply]] = {}
        # what was asked, to make sense of replies that arrive after we gave up
        self._sent: BoundedTtlMap[ReplyKey, object] = BoundedTtlMap(10_000, 600.0)

    async def execute(
        self,
        dev: Device,
        command: int,
        data: bytes,
        *,
        expect_reply: bool = True,
        context: object = None,
        timeout_s: float | None = None,
        resends: int = 1,
    ) -> Reply | None:
        """Send one command and return the device's reply (None if none is expected).
        `timeout_s`/`resends` override the protocol's 15 s and one resend (firmware packets:
        30 s, three).

        Raises DeviceOffline or CommandTimeout."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        async with dev.lock:
            wait = dev.next_send_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the protocol's minimum spacing, not a sync point
            if not dev.online:
                raise DeviceOffline
            message_id = dev.next_message_id()
            frame = Frame(dev.physical_id, message_id, command, data)
            raw = frame.encode()
            key = (dev.physical_id, command, message_id)
            reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._pending[key] = reply
            self._sent.put(key, context)
            try:
                for _attempt in range(1 + resends):
                    if not self._send(dev, frame, raw):
                        raise DeviceOffline
                    self._stats.commands_sent += 1
                    dev.next_send_at = time.monotonic() + self.spacing_s
                    if not expect_reply:
                        return None
                    try:
                        async with asyncio.timeout(wait_s):
                            return await asyncio.shield(reply)
                    except TimeoutError:
                        continue
                self._stats.command_timeouts += 1
                raise CommandTimeout
            finally:
                del self._pending[key]
                if not reply.done():
                    reply.cancel()

    def on_reply(self, got: Reply) -> tuple[bool, object]:
        """Resolve the command this reply answers. Returns (whether a caller was waiting,
        the context the command was sent with, if it was sent recently)."""
        frame = got.frame
        key = (frame.physical_id, frame.command, frame.message_id)
        reply = self._pending.get(key)
        if reply is None or reply.done():
            return False, self._sent.get(key)
        reply.set_result(got)
        return True, None

    def device_gone(self, physical_id: int, why: str = "device is not connected") -> None:
        """Fail what waits on a device whose connection closed (or that another gateway
        holds now): the request answers `offline` with `why`, never silence."""
        for key, reply in self._pending.items():
            if key[0] == physical_id and not reply.done():
                reply.set_exception(DeviceOffline(why))
