"""Charging requests (`{b}/charging/request/{start,stop,query}`, API.md section 6).

A start or stop changes the session at once (`starting`, `stopping`), then sends the device
command in a task of its own and answers on `{b}/charging/response/{action}` when the
command has its final result. The device's own `started` / `stopped` / `..._failed` order
event (published by the gateway before the command's response) is what normally moves the
session on; the command's result is applied only when no such event did (a timeout, an
offline device, a full queue), so a start or stop is applied once.

On a shared store (several instances) a request is carried out once per `request_id`,
however often and to whichever instance it is delivered: the id is claimed in the store
within the batch's transaction. Responses and device commands follow the batch's commit
(`Batch.after`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable

from bridge.charging import model as m
from bridge.charging.batching import Batch, Sessions
from bridge.charging.commands import DeviceCommands, Publisher, reply_port, reply_reason
from bridge.charging.messages import (
    RequestError,
    parse_json_object,
    parse_request,
    raw_request_id,
    request_id_of,
)
from bridge.charging.settings import ChargingSettings
from bridge.mqtt.payloads import (
    ChargingQueryRequest,
    ChargingStartRequest,
    ChargingStopRequest,
    CommandResponse,
    StopChargingRequest,
    oversized,
)
from bridge.mqtt.topics import Topics

log = logging.getLogger("chargebridge.charging")


# Gateway results meaning the command never reached a device (API.md section 5).
NEVER_SENT = frozenset({"offline", "invalid"})


def new_order_no() -> str:
    """16 random bytes as 32 upper-case hex digits (API.md section 2)."""
    return os.urandom(16).hex().upper()


class ChargingRequests:
    """Serves the charging requests; `stop()` cancels the commands still waiting."""

    def __init__(
        self,
        settings: ChargingSettings,
        topics: Topics,
        publisher: Publisher,
        sessions: Sessions,
        commands: DeviceCommands,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.publisher = publisher
        self.sessions = sessions
        self.commands = commands
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def respond(
        self,
        action: str,
        request_id: str | None,
        ok: bool,
        message: str,
        session: m.ChargingSession | None = None,
        *,
        batch: Batch | None = None,
    ) -> None:
        """Publish the response (with `batch`: once the batch is committed)."""
        body = {
            "request_id": request_id,
            "ok": ok,
            "message": message,
            "session": None if session is None else session.to_payload(),
        }
        topic, text = self.topics.charging_response(action), json.dumps(body)
        if batch is None:
            self.publisher.submit(topic, text)
        else:
            batch.after.append(lambda: self.publisher.submit(topic, text))

    def handle(self, batch: Batch, action: str, payload: bytes) -> None:
        """One request message, handled within the batch of messages it came with.

        Every request is answered: a bad one `ok: false` with the reason (and its request id,
        read from the raw bytes if the JSON cannot be read); an unexpected failure also gets
        an answer before it is counted as a processing error."""
        request_id: str | None = None
        try:
            if too_big := oversized(payload):
                raise RequestError(f"invalid request: {too_big}")
            data = parse_json_object(payload)
            request_id = request_id_of(data)
            if request_id is not None and not self.sessions.claim(
                batch, f"request:{action}:{request_id}"
            ):
                log.info("request %s (%s) delivered again: already handled", request_id, action)
                self.sessions.count(batch, duplicate_events=1)
                return
            request = parse_request(action, data)
            if not self.settings.session_tracking:
                raise RequestError("session tracking is disabled in this service")
            if isinstance(request, ChargingStartRequest):
                self._start(batch, request)
            elif isinstance(request, ChargingStopRequest):
                self._stop(batch, request)
            elif isinstance(request, ChargingQueryRequest):
                session = self._target(request)
                self.respond(action, request_id, True, session.status, session, batch=batch)
        except RequestError as exc:
            rid = request_id or raw_request_id(payload)
            self.respond(action, rid, False, str(exc), batch=batch)
        except Exception as exc:
            rid = request_id or raw_request_id(payload)
            self.respond(action, rid, False, f"internal error: {type(exc).__name__}", batch=batch)
            raise

    def _target(self, request: ChargingStopRequest | ChargingQueryRequest) -> m.ChargingSession:
        if request.session_id is not None:
            session = self.sessions.get(request.session_id)
            if session is None:
                raise RequestError(f"no session {request.session_id}")
            return session
        assert request.device_id is not None and request.port is not None
        found = self.sessions.active_on(request.device_id, request.port)
        found = found or self.sessions.latest_on(request.device_id, request.port)
        if found is None:
            raise RequestError(f"no session on {request.device_id} port {request.port}")
        return found

    def _start(self, batch: Batch, request: ChargingStartRequest) -> None:
        order_no = request.order_no or new_order_no()
        if self.sessions.get(order_no) is not None:
            raise RequestError(f"order_no {order_no} is already used by a session")
        port = request.port if isinstance(request.port, int) else None
        if port is not None and (busy := self.sessions.active_on(request.device_id, port)):
            raise RequestError(
                f"port {port} of {request.device_id} has an active session {busy.session_id}"
                f" ({busy.status})"
            )
        event = m.StartRequested(
            ts=self.clock(), order_no=order_no, device_id=request.device_id, port=port
        )
        self.sessions.apply(batch, None, event)
        batch.after.append(lambda: self._spawn(self._finish_start(request, order_no)))

    async def _finish_start(self, request: ChargingStartRequest, order_no: str) -> None:
        reply = await self.commands.send(request.device_id, request.device_command(order_no))
        async with self.sessions.exclusive([request.device_id]):
            self._after_start(request, order_no, reply)

    def _after_start(
        self, request: ChargingStartRequest, order_no: str, reply: CommandResponse
    ) -> None:
        session = self.sessions.get(order_no)
        if session is not None and session.status == "starting" and reply.result in NEVER_SENT:
            # No gateway holds the device (or it refused the command unsent): nothing
            # happened at a charger, so no session is kept. Ids never seen leave nothing
            # retained behind, however many are tried.
            self._discard(session)
            self.respond(
                "start", request.request_id, False, f"start refused: {reply_reason(reply)}"
            )
            return
        if session is not None and session.status == "starting":
            # No `started` / `start_failed` event came first (e.g. the gateway answered
            # `timeout`): the command's result decides.
            now = self.clock()
            event: m.Event = (
                m.StartAccepted(ts=now, port=reply_port(reply))
                if reply.ok
                else m.StartRefused(ts=now, reason=reply_reason(reply))
            )
            session, _ = self.sessions.apply_now(session, event)
        # The `started` event may have made it `charging` although the response was lost.
        ok = session is not None and session.status in ("charging", "stopping")
        message = "started" if ok else f"start refused: {reply_reason(reply)}"
        self.respond("start", request.request_id, ok, message, session)

    def _discard(self, session: m.ChargingSession) -> None:
        """Drop a session that never reached a device, and clear its retained message."""
        batch = self.sessions.batch()
        try:
            self.sessions.discard(batch, session)
            self.sessions.flush(batch)
        except BaseException:
            self.sessions.abort(batch)
            raise

    def _stop(self, batch: Batch, request: ChargingStopRequest) -> None:
        session = self._target(request)
        new, effects = self.sessions.apply(batch, session, m.StopRequested(ts=self.clock()))
        if m.Effect.CHANGED not in effects or new is None:
            raise RequestError(f"session {session.session_id} is {session.status}: cannot stop")
        # An `auto` start the device has not yet named a port for sends `port: null`, which
        # the gateway refuses as `invalid`: the stop is then refused, as the API says.
        command = StopChargingRequest.model_construct(
            port=new.port,  # type: ignore[arg-type]
            order_no=new.order_no,
        )
        batch.after.append(lambda: self._spawn(self._finish_stop(request, new, command)))

    async def _finish_stop(
        self, request: ChargingStopRequest, session: m.ChargingSession, command: StopChargingRequest
    ) -> None:
        reply = await self.commands.send(session.device_id, command)
        async with self.sessions.exclusive([session.device_id]):
            self._after_stop(request, session, reply)

    def _after_stop(
        self, request: ChargingStopRequest, session: m.ChargingSession, reply: CommandResponse
    ) -> None:
        current = self.sessions.get(session.session_id)
        if current is not None and current.status == "stopping" and not current.stop_confirmed:
            # No `stopped` / `stop_failed` event came first: the command's result decides.
            now = self.clock()
            event: m.Event = (
                m.StopAccepted(ts=now)
                if reply.ok
                else m.StopRefused(ts=now, reason=reply_reason(reply))
            )
            current = self.sessions.apply_now(current, event)[0] or current
        message = "stopping" if reply.ok else f"stop refused: {reply_reason(reply)}"
        self.respond("stop", request.request_id, reply.ok, message, current)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._report_failure)

    def _report_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("request task failed", exc_info=task.exception())
            self.sessions.count_now(processing_errors=1)

    async def stop(self) -> None:
        """Cancel the commands still waiting for their results."""
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
