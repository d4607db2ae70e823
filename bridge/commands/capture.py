"""`chargebridge capture`: record a running gateway's raw frames over MQTT into JSON lines.

Works from any machine that reaches the broker (the gateway may be a remote edge box): it
publishes `{b}/bridge/request/capture`, then writes every `CaptureFrame` the gateway streams
(bridge/capture.py) as one line to `--out`, until the gateway's end message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import IO, Any

from bridge.commands.common import run_role
from bridge.config import CommonSettings, add_settings_arguments
from bridge.mqtt.client import MqttClient
from bridge.mqtt.topics import Topics

HELP = "record raw frames of a running gateway (over MQTT) to a JSON-lines file"
RESPONSE_TIMEOUT_S = 10.0
END_GRACE_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, CommonSettings)
    parser.add_argument(
        "--device", default="all", metavar="ID|all", help="device id (8 hex digits) or all"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to capture")
    parser.add_argument("--max-frames", type=int, default=50_000, help="stop after so many frames")
    parser.add_argument(
        "--out", type=Path, default=Path("-"), metavar="FILE", help="output file (- = stdout)"
    )


class CaptureFailed(Exception):
    pass


async def capture(
    settings: CommonSettings,
    device: str,
    seconds: float,
    max_frames: int,
    out: IO[str],
    response_timeout: float = RESPONSE_TIMEOUT_S,
) -> int:
    """Ask the gateway for a capture and write its frames; returns the number of frames."""
    topics = Topics(settings.base_topic)
    request_id = uuid.uuid4().hex
    mqtt = MqttClient(
        settings.mqtt_settings(client_id=""),
        subscriptions=[(topics.bridge_response("capture"), 1), (topics.capture_stream("+"), 1)],
    )
    body = {
        "request_id": request_id,
        "device_id": device if device == "all" else device.upper(),
        "seconds": seconds,
        "max_frames": max_frames,
    }
    stream: str | None = None
    early: list[tuple[str, Any]] = []  # stream messages that came before the response
    frames = 0
    async with mqtt:
        async with asyncio.timeout(response_timeout):
            await mqtt.wait_connected()
        mqtt.submit(topics.bridge_request("capture"), json.dumps(body))
        deadline = asyncio.get_running_loop().time() + response_timeout
        async with asyncio.timeout_at(deadline) as scope:
            async for message in mqtt.messages:
                topic, data = str(message.topic), _json(message.payload)
                if topic == topics.bridge_response("capture"):
                    if not isinstance(data, dict) or data.get("request_id") != request_id:
                        continue
                    if not data.get("ok"):
                        raise CaptureFailed(f"gateway refused: {data.get('message')}")
                    stream = str(data["topic"])
                    print(f"capturing on {stream}: {data.get('message')}", file=sys.stderr)
                    scope.reschedule(asyncio.get_running_loop().time() + seconds + END_GRACE_S)
                    pending, early = [d for t, d in early if t == stream], []
                    for record in pending:
                        if _write(record, out):
                            return frames
                        frames += 1
                elif stream is None:
                    early.append((topic, data))
                elif topic == stream:
                    if _write(data, out):
                        return frames
                    frames += 1
    return frames


def _write(record: Any, out: IO[str]) -> bool:
    """Write one frame record; True at the end record."""
    if not isinstance(record, dict):
        return False
    if record.get("type") == "end":
        print(
            f"capture ended ({record.get('reason')}): {record.get('frames')} frames",
            file=sys.stderr,
        )
        return True
    out.write(json.dumps(record, separators=(",", ":")) + "\n")
    out.flush()
    return False


def _json(payload: Any) -> Any:
    try:
        return json.loads(payload) if payload else None
    except (ValueError, TypeError):
        return None


def main(args: argparse.Namespace) -> int:
    result: list[int] = []

    async def serve(settings: CommonSettings) -> None:
        out = sys.stdout if str(args.out) == "-" else args.out.open("w", encoding="utf-8")
        try:
            result.append(await capture(settings, args.device, args.seconds, args.max_frames, out))
        except TimeoutError:
            print(
                "chargebridge capture: no answer from the gateway (is it running, with this "
                "base topic?), or its stream stopped before the end",
                file=sys.stderr,
            )
        except CaptureFailed as exc:
            print(f"chargebridge capture: {exc}", file=sys.stderr)
        finally:
            if out is not sys.stdout:
                out.close()

    code = run_role("capture", CommonSettings, args, serve)
    return code if code else (0 if result else 1)
