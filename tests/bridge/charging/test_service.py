"""The charging service against the real Mosquitto; a plain aiomqtt client plays the gateway."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from tests.bridge.charging.harness import (
    DEV,
    ORDER,
    TOPICS,
    card_swipe_event,
    fake_gateway,
    power_event,
    publish_event,
    request,
    running_service,
    settings_for,
    settled_event,
    watcher,
)
from tests.broker import Mosquitto

ZERO_STATS = {
    "total_events_processed": 0,
    "charging_start_events": 0,
    "charging_stop_events": 0,
    "power_update_events": 0,
    "sessions_created": 0,
    "sessions_completed": 0,
    "sessions_timeout": 0,
    "processing_errors": 0,
    "retry_attempts": 0,
    "duplicate_events": 0,
    "active_sessions": 0,
}


def stats(**changes: Any) -> dict[str, Any]:
    return {**ZERO_STATS, **changes}


async def test_server_start_lifecycle(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        fake_gateway(broker) as gw,
        watcher(broker) as w,
        broker.client() as app,
    ):
        await request(app, "start", {"request_id": "r1", "device_id": DEV, "port": 2})
        reply = await w.response("start", "r1")
        assert reply["ok"] is True, reply
        assert reply["message"] == "started"
        session = reply["session"]
        assert session["status"] == "charging"
        sid = session["session_id"]
        assert len(sid) == 32 and sid == sid.upper() and sid == session["order_no"]
        [(command, body)] = await gw.wait_requests(1)
        assert command == "start_charging"
        assert body["order_no"] == sid and body["port"] == 2 and body["mode"] == "full"

        await publish_event(app, "port", power_event(0.05, 200.0, order_no=sid, duration_s=300))
        await publish_event(app, "port", power_event(0.11, 150.0, order_no=sid, duration_s=600))
        live = await w.until(lambda: (s := w.sessions.get(sid)) and s["energy_kwh"] == 0.11 and s)
        assert live["status"] == "charging"
        assert (live["power_w"], live["voltage_v"], live["current_a"]) == (150.0, 229.8, 0.785)
        assert live["max_power_w"] == 220.0  # the peak of the first report
        assert live["temperature_c"] == 28.0 and live["duration_s"] == 600

        await publish_event(app, "order", settled_event(0.12, 650, order_no=sid))
        done = await w.session(sid, "completed")
        assert (done["energy_kwh"], done["duration_s"], done["stop_reason"]) == (
            0.12,
            650,
            "battery_full",
        )
        assert done["end_time"] is not None and done["end_time"].endswith("Z")
        types = [e["type"] for e in done["events"]]
        assert types == ["start_requested", "started", "power", "power", "settled"]
        # started (order event) + 2 power + settled; the started response is not an event.
        final = await w.stats_where(
            **stats(
                total_events_processed=4,
                charging_start_events=1,
                charging_stop_events=1,
                power_update_events=2,
                sessions_created=1,
                sessions_completed=1,
                total_energy_delivered_kwh=0.12,
                average_session_duration_s=650.0,
            )
        )
        assert final["average_processing_time_ms"] > 0


async def test_card_start_and_offline_start(broker: Mosquitto, tmp_path: Path) -> None:
    card_order = "20261126081500" + "1A2B3C4D" + "11220795" + "21" + "00" * 0
    card_order = card_order.ljust(32, "0")
    offline_order = "F" * 32
    async with (
        running_service(settings_for(broker, tmp_path)),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "order", card_swipe_event(port=1))
        await publish_event(gw, "port", power_event(0.01, order_no=card_order, port=1))
        card = await w.session(card_order, "charging")
        assert card["device_id"] == DEV and card["port"] == 1

        # Offline start: the first the service hears of it is a power report.
        event = power_event(0.3, order_no=offline_order, port=3, start_mode="offline")
        await publish_event(gw, "port", event)
        await w.session(offline_order, "charging")
        await w.stats_where(active_sessions=2, sessions_created=2)

        await publish_event(gw, "order", settled_event(0.02, 120, order_no=card_order, port=1))
        await publish_event(gw, "order", settled_event(0.4, 900, order_no=offline_order, port=3))
        await w.session(card_order, "completed")
        await w.session(offline_order, "completed")
        await w.stats_where(
            **stats(
                total_events_processed=5,
                charging_start_events=2,
                charging_stop_events=2,
                power_update_events=2,
                sessions_created=2,
                sessions_completed=2,
                total_energy_delivered_kwh=0.42,
                average_session_duration_s=510.0,
            )
        )


async def test_settlement_of_an_unknown_order_creates_a_completed_session(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "order", settled_event(0.2, 600))
        done = await w.session(ORDER, "completed")
        assert done["energy_kwh"] == 0.2
        await w.stats_where(
            **stats(
                total_events_processed=1,
                charging_stop_events=1,
                sessions_created=1,
                sessions_completed=1,
                total_energy_delivered_kwh=0.2,
                average_session_duration_s=600.0,
            )
        )


async def test_refused_start(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        fake_gateway(broker, start_charging="refuse"),
        watcher(broker) as w,
        broker.client() as app,
    ):
        body = {"request_id": "r2", "device_id": DEV, "port": 1, "order_no": ORDER}
        await request(app, "start", body)
        reply = await w.response("start", "r2")
        assert reply["ok"] is False
        assert reply["message"] == "start refused: no charger plugged into the port"
        assert reply["session"]["status"] == "failed"
        failed = await w.session(ORDER, "failed")
        assert failed["stop_reason"] == "no charger plugged into the port"
        await w.stats_where(**stats(total_events_processed=1, sessions_created=1))
        # The port is free again: a failed session does not block a new start.
        await request(app, "start", {**body, "request_id": "r3", "order_no": "A" * 32})
        assert (await w.response("start", "r3"))["message"].startswith("start refused")


async def test_start_that_times_out_is_retried_then_fails(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = settings_for(broker, tmp_path, request_timeout_s=0.3, max_retries=2)
    async with (
        running_service(settings),
        fake_gateway(broker, start_charging="silent") as gw,
        watcher(broker) as w,
        broker.client() as app,
    ):
        await request(app, "start", {"request_id": "t", "device_id": DEV, "port": 2})
        reply = await w.response("start", "t")
        assert reply["ok"] is False and "timeout" not in reply["session"]["status"]
        assert reply["session"]["status"] == "failed"
        sent = await gw.wait_requests(3)
        assert len({body["request_id"] for _, body in sent}) == 3
        assert len({body["order_no"] for _, body in sent}) == 1
        await w.stats_where(**stats(retry_attempts=2, sessions_created=1))


async def test_offline_device_fails_at_once(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        fake_gateway(broker, start_charging="offline") as gw,
        watcher(broker) as w,
        broker.client() as app,
    ):
        await request(app, "start", {"request_id": "o", "device_id": DEV, "port": 2})
        reply = await w.response("start", "o")
        assert reply["ok"] is False and reply["message"] == "start refused: device offline"
        assert len(gw.requests) == 1
        await w.stats_where(**stats(retry_attempts=0, sessions_created=1))


async def test_stop_then_settlement(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        fake_gateway(broker) as gw,
        watcher(broker) as w,
        broker.client() as app,
    ):
        await request(app, "start", {"request_id": "s1", "device_id": DEV, "port": 2})
        sid = (await w.response("start", "s1"))["session"]["session_id"]
        await request(app, "stop", {"request_id": "s2", "device_id": DEV, "port": 2})
        reply = await w.response("stop", "s2")
        assert reply["ok"] is True and reply["session"]["status"] == "stopping"
        command, body = (await gw.wait_requests(2))[1]
        assert command == "stop_charging"
        assert body["order_no"] == sid and body["port"] == 2
        await publish_event(app, "order", settled_event(0.01, 30, order_no=sid))
        done = await w.session(sid, "completed")
        assert [e["type"] for e in done["events"]][-3:] == ["stop_requested", "stopped", "settled"]
        # started + stopped + settled events; the stop counts `stopped` and the settlement.
        await w.stats_where(
            **stats(
                total_events_processed=3,
                charging_start_events=1,
                charging_stop_events=2,
                sessions_created=1,
                sessions_completed=1,
                total_energy_delivered_kwh=0.01,
            )
        )
        # Stopping a finished session is refused; by session_id this time.
        await request(app, "stop", {"request_id": "s3", "session_id": sid})
        again = await w.response("stop", "s3")
        assert again["ok"] is False and again["message"].endswith("is completed: cannot stop")


async def test_timeout_then_late_settlement(broker: Mosquitto, tmp_path: Path) -> None:
    settings = settings_for(broker, tmp_path, session_timeout_s=0.3, cleanup_interval_s=0.05)
    async with (
        running_service(settings),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "port", power_event(0.05))
        await w.session(ORDER, "charging")
        await w.session(ORDER, "timeout")
        await w.stats_where(sessions_timeout=1, active_sessions=0)
        await publish_event(gw, "order", settled_event(0.07, 400))
        done = await w.session(ORDER, "completed")
        assert [e["type"] for e in done["events"]] == ["power", "timeout", "settled"]
        await w.stats_where(
            **stats(
                total_events_processed=2,
                charging_start_events=1,
                charging_stop_events=1,
                power_update_events=1,
                sessions_created=1,
                sessions_completed=1,
                sessions_timeout=1,
                total_energy_delivered_kwh=0.07,
                average_session_duration_s=400.0,
            )
        )


async def test_duplicate_settlements_count_once(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "port", power_event(0.05))
        first = settled_event(0.3, 1000)
        raw = await publish_event(gw, "order", first)
        await w.session(ORDER, "completed")
        # The same message delivered again (broker redelivery) ...
        await gw.publish(TOPICS.event(DEV, "order"), raw, qos=1)
        # ... and the device resending its record 30 minutes later (new ts and message id).
        await publish_event(gw, "order", settled_event(0.3, 1000, ts=1_790_001_800.0))
        await publish_event(gw, "order", settled_event(0.3, 1000, ts=1_790_003_600.0))
        await w.stats_where(
            **stats(
                total_events_processed=2,
                charging_start_events=1,
                charging_stop_events=1,
                power_update_events=1,
                sessions_created=1,
                sessions_completed=1,
                duplicate_events=3,
                total_energy_delivered_kwh=0.3,
                average_session_duration_s=1000.0,
            )
        )
        assert [e["type"] for e in w.sessions[ORDER]["events"]] == ["power", "settled"]  # type: ignore[index]


async def test_query(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "port", power_event(0.05, port=4))
        await w.session(ORDER, "charging")
        await request(gw, "query", {"request_id": "q1", "session_id": ORDER})
        await request(gw, "query", {"request_id": "q2", "device_id": DEV, "port": 4})
        await request(gw, "query", {"request_id": "q3", "device_id": DEV, "port": 5})
        for rid in ("q1", "q2"):
            reply = await w.response("query", rid)
            assert reply["ok"] is True and reply["session"]["session_id"] == ORDER
        missing = await w.response("query", "q3")
        assert missing == {
            "request_id": "q3",
            "ok": False,
            "message": f"no session on {DEV} port 5",
            "session": None,
        }


async def test_bad_requests_are_answered_and_name_the_field(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        fake_gateway(broker) as gw,
        watcher(broker) as w,
        broker.client() as app,
    ):
        await request(app, "start", b"{not json")
        await request(app, "start", b"[1, 2]")
        await request(app, "launch", {"request_id": "b0"})
        await request(app, "start", {"request_id": "b1", "device_id": DEV, "port": "two"})
        bad_order = {"request_id": "b2", "device_id": DEV, "port": 1, "order_no": "XYZ"}
        await request(app, "start", bad_order)
        await request(app, "start", {"request_id": "b3", "device_id": "4ab373b", "port": 1})
        await request(app, "stop", {"request_id": "b4", "device_id": DEV})
        await request(app, "query", {"request_id": "b5", "session_id": ORDER.lower()})
        await request(app, "start", {"request_id": "b6", "device_id": DEV, "port": 1, "x": 1})
        await request(
            app, "start", {"request_id": "b7", "device_id": DEV, "port": 1, "mode": "time"}
        )

        none_id = await w.until(lambda: w.responses.get("start:None"))
        assert none_id["ok"] is False and none_id["session"] is None
        expected = {
            ("launch", "b0"): "unknown action 'launch'",
            ("start", "b1"): "port",
            ("start", "b2"): "order_no",
            ("start", "b3"): "device_id",
            ("stop", "b4"): "session_id, or device_id and port, are required",
            ("query", "b5"): "session_id",
            ("start", "b6"): "x: Extra inputs are not permitted",
            ("start", "b7"): "mode 'time' needs duration_s",
        }
        for (action, rid), fragment in expected.items():
            reply = await w.response(action, rid)
            assert reply["ok"] is False, reply
            assert fragment in reply["message"], (rid, reply["message"])
            assert reply["session"] is None
        # A good request after all that still works, and none reached the device.
        await request(app, "start", {"request_id": "g", "device_id": DEV, "port": 1})
        assert (await w.response("start", "g"))["ok"] is True
        assert [c for c, _ in gw.requests] == ["start_charging"]
        await request(app, "start", {"request_id": "busy", "device_id": DEV, "port": 1})
        busy = await w.response("start", "busy")
        assert busy["ok"] is False and "has an active session" in busy["message"]
        await w.stats_where(processing_errors=0, sessions_created=1)


async def test_malformed_events_are_counted_not_fatal(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await gw.publish(TOPICS.event(DEV, "port"), b"\xff\xfe garbage", qos=1)
        bad = power_event(0.1)
        del bad["order_no"]
        await gw.publish(TOPICS.event(DEV, "port"), json.dumps(bad), qos=1)
        await publish_event(gw, "port", power_event(0.1))
        await w.session(ORDER, "charging")
        await w.stats_where(processing_errors=2, total_events_processed=1)


async def test_finished_sessions_are_cleared_after_retention(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = settings_for(broker, tmp_path, session_retention_s=0.2, cleanup_interval_s=0.05)
    async with (
        running_service(settings),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "order", settled_event(0.2, 600))
        await w.session(ORDER, "completed")
        await w.until(lambda: ORDER in w.sessions and w.sessions[ORDER] is None)
    # The empty retained message removed it from the broker: a new subscriber sees nothing.
    async with watcher(broker) as late:
        await late.stats_where(sessions_completed=1)
        assert late.sessions == {}


async def test_auto_port_start_learns_the_port(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        running_service(settings_for(broker, tmp_path)),
        fake_gateway(broker) as gw,
        watcher(broker) as w,
        broker.client() as app,
    ):
        body = {"request_id": "a", "device_id": DEV, "port": "auto", "mode": "time"}
        await request(app, "start", {**body, "duration_s": 3600, "balance_cents": 356})
        reply = await w.response("start", "a")
        assert reply["ok"] is True and reply["session"]["port"] == 1  # the device's choice
        [(_, sent)] = await gw.wait_requests(1)
        assert sent["port"] == "auto" and sent["duration_s"] == 3600
        assert sent["balance_cents"] == 356 and sent["mode"] == "time"


async def test_without_session_tracking_events_are_only_counted(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with (
        running_service(settings_for(broker, tmp_path, session_tracking=False)),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "port", power_event(0.05))
        await publish_event(gw, "order", settled_event(0.1, 60))
        await request(gw, "start", {"request_id": "n", "device_id": DEV, "port": 1})
        reply = await w.response("start", "n")
        assert reply["ok"] is False and "session tracking is disabled" in reply["message"]
        await w.stats_where(**stats(total_events_processed=2))
        assert w.sessions == {}


async def test_stats_are_published_at_most_every_stats_interval(
    broker: Mosquitto, tmp_path: Path
) -> None:
    interval = 0.25
    async with (
        running_service(settings_for(broker, tmp_path, stats_interval=interval)),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        for batch in range(4):
            for i in range(batch * 10, batch * 10 + 10):
                await publish_event(gw, "port", power_event(0.01, order_no=f"{i:032X}"))
            await w.stats_where(total_events_processed=batch * 10 + 10)
        arrivals = w.stats_arrivals[1:]  # the first is the retained one, sent on subscribing
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert len(w.stats_arrivals) < 40
        assert min(gaps) > interval * 0.8, gaps
