"""Issue 15 against the charging service, with a real Mosquitto: what it must not believe.

Reports bound to their session (a forged settlement from another charger), retained and empty
request messages, requests that cannot be parsed, and start requests for unknown devices.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.bridge.charging.harness import (
    DEV,
    ORDER,
    TOPICS,
    _common,
    fake_gateway,
    power_event,
    publish_event,
    request,
    running_service,
    settings_for,
    settled_event,
    watcher,
)
from tests.bridge.helpers import mqtt_collector
from tests.broker import Mosquitto

IMPOSTOR = "04BADBAD"


def confirmed_event(order_no: str, port: int, device_id: str) -> dict[str, Any]:
    """0x04 (legacy devices) as the gateway publishes it."""
    return {
        **_common("confirmed", 0x04, None, device_id),
        "port": port,
        "order_no": order_no,
        "start_mode": "online",
        "start_mode_code": 1,
        "card_id": "00000000",
        "duration_s": 0,
    }


async def test_a_report_naming_another_chargers_order_is_refused(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        mqtt_collector(broker, f"{TOPICS.base}/devices/+/event/device") as security,
        running_service(settings_for(broker, tmp_path)),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "port", power_event(0.5, port=2))
        await w.session(ORDER, "charging")
        # The order number is public (every monitor reads it): a frame from another physical
        # id, and one from the right charger's other port, both name it.
        await publish_event(gw, "order", settled_event(0.01, 60, device_id=IMPOSTOR))
        await publish_event(gw, "port", power_event(9.9, port=2, device_id=IMPOSTOR))
        await publish_event(gw, "port", power_event(9.9, port=3))
        await publish_event(gw, "order", confirmed_event(ORDER, 2, IMPOSTOR))
        await w.stats_where(security_events=4)

        session = w.sessions[ORDER]
        assert session is not None
        assert session["status"] == "charging" and session["energy_kwh"] == 0.5
        assert session["device_id"] == DEV and session["port"] == 2
        refused = await security.wait(
            TOPICS.event(IMPOSTOR, "device"), lambda m: m["command"] == 0x03
        )
        assert refused["type"] == "security" and refused["reason"] == "foreign_order"
        assert refused["device_id"] == IMPOSTOR and refused["order_no"] == ORDER
        assert refused["port"] == 2 and refused["session_device_id"] == DEV
        other_port = await security.wait(TOPICS.event(DEV, "device"), lambda m: m["port"] == 3)
        assert other_port["reason"] == "foreign_order"

        # The real charger's own settlement still completes the session.
        await publish_event(gw, "order", settled_event(0.6, 900))
        done = await w.session(ORDER, "completed")
        assert done["energy_kwh"] == 0.6
        await w.stats_where(security_events=4, sessions_completed=1)


async def test_retained_and_empty_requests_are_ignored_and_counted(
    broker: Mosquitto, tmp_path: Path
) -> None:
    start = {"request_id": "retained", "device_id": DEV, "port": 2}
    async with broker.client() as app:
        await app.publish(TOPICS.charging_request("start"), json.dumps(start), qos=1, retain=True)
    async with fake_gateway(broker) as gw, watcher(broker) as w:
        for run in (1, 2):  # the retained start reaches the service at every start
            async with running_service(settings_for(broker, tmp_path)):
                await w.stats_where(requests_ignored=run)
        async with running_service(settings_for(broker, tmp_path)), broker.client() as app:
            # clearing the retained message: an empty payload, not a `{}` request
            await app.publish(TOPICS.charging_request("start"), b"", qos=1, retain=True)
            await app.publish(TOPICS.charging_request("query"), b"", qos=1)
            await w.stats_where(requests_ignored=5)
            # a request sent afterwards is served: the ignored ones were ignored, not queued
            await request(app, "query", {"request_id": "after", "session_id": ORDER})
            assert (await w.response("query", "after"))["ok"] is False
        assert gw.requests == []
        assert w.sessions == {} and w.stats["sessions_created"] == 0
        assert not any(key.endswith(":retained") for key in w.responses)


async def test_unparsable_requests_are_answered_invalid_with_their_id(
    broker: Mosquitto, tmp_path: Path
) -> None:
    deep = b'{"request_id": "deep", "device_id": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    broken = b'{"request_id": "broken", "port": 2,,}'
    not_utf8 = b'{"request_id": "bytes", "port": "\xff"}'
    async with (
        running_service(settings_for(broker, tmp_path)),
        watcher(broker) as w,
        broker.client() as app,
    ):
        for payload in (deep, broken, not_utf8):
            await request(app, "start", payload)
        for rid in ("deep", "broken", "bytes"):
            reply = await w.response("start", rid)
            assert reply["ok"] is False and reply["message"].startswith("invalid"), reply
            assert reply["session"] is None
        await request(app, "stop", b"[1, 2]")
        reply = await w.until(lambda: w.responses.get("stop:None"))
        assert reply["message"].startswith("invalid")
        await w.stats_where(processing_errors=0, sessions_created=0)


async def test_starts_for_unknown_devices_leave_no_retained_session(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        fake_gateway(broker, start_charging="offline") as gw,
        watcher(broker) as w,
        broker.client() as app,
    ):
        ids = [f"0{n:07X}" for n in range(1, 21)]
        for n, device_id in enumerate(ids):
            body = {"request_id": f"u{n}", "device_id": device_id, "port": 1}
            await request(app, "start", body)
        for n in range(len(ids)):
            reply = await w.response("start", f"u{n}")
            assert reply["ok"] is False and reply["session"] is None
            assert reply["message"] == "start refused: device offline"
        await gw.wait_requests(len(ids))
        # every `starting` session published meanwhile was cleared again
        await w.until(lambda: all(s is None for s in w.sessions.values()))
        await w.stats_where(active_sessions=0)
    # nothing retained under sessions/ for a newcomer
    async with mqtt_collector(broker, TOPICS.all_sessions) as later:
        await asyncio.sleep(0)  # subscribed; retained messages would be delivered at once
        async with broker.client() as probe:
            await probe.publish(TOPICS.session("F" * 32), b"{}", qos=1)
        await later.wait(TOPICS.session("F" * 32), lambda m: True)
        assert [m.topic for m in later.messages] == [TOPICS.session("F" * 32)]
