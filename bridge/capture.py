"""Raw frame capture on request, a self-contained unit of the gateway (docs/integrations.md).

An operator anywhere that reaches the broker asks the running gateway:

    {b}/bridge/request/capture  {"request_id": "c1", "device_id": "04AB373B", "seconds": 60}

The gateway answers on `{b}/bridge/response/capture` with the stream topic, then publishes every
frame it exchanges with the chosen device(s), both directions, as one `CaptureFrame` per
message on `{b}/bridge/capture/{capture_id}`, and a final `CaptureEnd`. `chargebridge capture`
does all this and writes the records as JSON lines, which `chargebridge decode --capture` and
`chargebridge replay` read. The stream goes through its own MQTT connection, never through the
gateway's outbox, and is bounded: `seconds` <= 3600, `max_frames` <= 200000, 4 captures at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.config import GatewaySettings
from bridge.gateway.core import Gateway
from bridge.gateway.registry import Device
from bridge.mqtt.client import MqttClient
from bridge.mqtt.payloads import Payload, iso_utc
from bridge.mqtt.topics import Topics
from protocol import Frame, Sender

log = logging.getLogger(__name__)

MAX_CAPTURES = 4
DIRECTIONS = {Sender.DEVICE: "device_to_server", Sender.SERVER: "server_to_device"}


class CaptureRequest(BaseModel):
    """`{b}/bridge/request/capture`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str | None = Field(default=None, description="echoed in the response")
    device_id: Annotated[str, Field(pattern=r"^([0-9A-F]{8}|all)$")] = Field(
        default="all", description="8 upper-case hex digits, or `all`"
    )
    seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0, description="how long to capture"
    )
    max_frames: Annotated[int, Field(ge=1, le=200_000)] = Field(
        default=50_000, description="the capture ends early after so many frames"
    )


class CaptureResponse(Payload):
    """`{b}/bridge/response/capture`."""

    request_id: str | None
    ok: bool
    result: Literal["ok", "invalid", "busy"]
    message: str
    capture_id: str | None = None
    topic: str | None = Field(default=None, description="where the frames are published")


class CaptureFrame(Payload):
    """One frame on `{b}/bridge/capture/{capture_id}` and one line of a capture file."""

    type: Literal["frame"] = "frame"
    ts: str
    t: float = Field(description="seconds since the capture started")
    device_id: str
    direction: Literal["device_to_server", "server_to_device"]
    command: int
    message_id: int
    hex: str = Field(description="the whole frame, upper-case hex")


class CaptureEnd(Payload):
    """The last message of a capture."""

    type: Literal["end"] = "end"
    ts: str
    frames: int
    reason: Literal["time", "limit", "shutdown"]


class _Capture:
    def __init__(self, unit: CaptureUnit, capture_id: str, req: CaptureRequest) -> None:
        self.unit = unit
        self.topic = unit.topics.capture_stream(capture_id)
        self.device_id = None if req.device_id == "all" else req.device_id
        self.max_frames = req.max_frames
        self.frames = 0
        self.started = time.monotonic()
        self.timer = asyncio.get_running_loop().call_later(req.seconds, self.end, "time")

    def tap(self, sender: Sender, dev: Device, frame: Frame) -> None:
        if self.device_id is not None and dev.device_id != self.device_id:
            return
        self.frames += 1
        record = CaptureFrame(
            ts=iso_utc(),
            t=round(time.monotonic() - self.started, 6),
            device_id=dev.device_id,
            direction=DIRECTIONS[sender],
            command=frame.command,
            message_id=frame.message_id,
            hex=frame.encode().hex().upper(),
        )
        self.unit.send(self.topic, record)
        if self.frames >= self.max_frames:
            self.end("limit")

    def end(self, reason: Literal["time", "limit", "shutdown"]) -> None:
        if self.unit.captures.pop(self.topic, None) is None:
            return
        self.timer.cancel()
        self.unit.gateway.taps.remove(self.tap)
        self.unit.send(self.topic, CaptureEnd(ts=iso_utc(), frames=self.frames, reason=reason))
        log.info("capture ended", extra={"topic": self.topic, "frames": self.frames})


class CaptureUnit:
    """Answers capture requests; `run()` serves until cancelled."""

    def __init__(self, settings: GatewaySettings, gateway: Gateway) -> None:
        self.gateway = gateway
        self.topics = Topics(settings.base_topic)
        self.captures: dict[str, _Capture] = {}
        self.mqtt = MqttClient(
            settings.mqtt_settings(
                client_id=f"chargebridge-capture-{settings.gateway_id}", clean_start=True
            ),
            subscriptions=[(self.topics.bridge_request("capture"), 1)],
        )

    def send(self, topic: str, payload: Payload) -> None:
        fut = self.mqtt.submit(topic, payload.to_json())
        fut.add_done_callback(_ignore_failure)

    async def run(self) -> None:
        async with self.mqtt:
            try:
                async for message in self.mqtt.messages:
                    payload = message.payload
                    self.request(payload if isinstance(payload, bytes) else b"")
            finally:
                for capture in list(self.captures.values()):
                    capture.end("shutdown")  # flushed when the client closes

    def request(self, payload: bytes) -> CaptureResponse:
        resp = self._start(payload)
        self.send(self.topics.bridge_response("capture"), resp)
        return resp

    def _start(self, payload: bytes) -> CaptureResponse:
        request_id = _request_id(payload)
        try:
            req = CaptureRequest.model_validate_json(payload or b"{}")
        except ValidationError as exc:
            message = "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or 'request'}: {e['msg']}"
                for e in exc.errors()
            )
            return CaptureResponse(
                request_id=request_id, ok=False, result="invalid", message=message
            )
        if len(self.captures) >= MAX_CAPTURES:
            return CaptureResponse(
                request_id=req.request_id,
                ok=False,
                result="busy",
                message=f"{MAX_CAPTURES} captures are running already",
            )
        capture_id = secrets.token_hex(6)
        capture = _Capture(self, capture_id, req)
        self.captures[capture.topic] = capture
        self.gateway.taps.append(capture.tap)
        log.info("capture started", extra={"topic": capture.topic, "device_id": req.device_id})
        return CaptureResponse(
            request_id=req.request_id,
            ok=True,
            result="ok",
            message=f"capturing {req.device_id} for {req.seconds:g} s",
            capture_id=capture_id,
            topic=capture.topic,
        )


def _request_id(payload: bytes) -> str | None:
    try:
        body: Any = json.loads(payload)
    except ValueError:
        return None
    rid = body.get("request_id") if isinstance(body, dict) else None
    return rid if isinstance(rid, str) else None


def _ignore_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # a capture message lost with the connection is not worth a log line
