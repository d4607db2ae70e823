"""Sessions and statistics survive a killed service, a wiped broker and a new state dir."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import run_service
from bridge.charging.store import SqliteStore
from tests.bridge.charging.harness import (
    BASE,
    DEV,
    ORDER,
    TOPICS,
    power_event,
    publish_event,
    request,
    running_service,
    settings_for,
    settled_event,
    watcher,
)
from tests.broker import Mosquitto

OTHER = "B" * 32


class ServiceProcess:
    """`python -m bridge service` as a child process, killable with SIGKILL."""

    def __init__(self, broker: Mosquitto, state_dir: Path, log: Path) -> None:
        self.args = [
            sys.executable,
            "-m",
            "bridge",
            "service",
            "--mqtt",
            broker.url,
            "--base-topic",
            BASE,
            "--state-dir",
            str(state_dir),
            "--service-client-id",
            "chargebridge-service-proc",
            "--stats-interval",
            "0.05",
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def service_process(broker: Mosquitto, tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(broker, tmp_path / "state", tmp_path / "service.log")
    try:
        yield proc
    finally:
        proc.close()


async def test_killed_service_resumes_with_state_and_missed_events(
    broker: Mosquitto, service_process: ServiceProcess
) -> None:
    service_process.start()
    async with (
        watcher(broker) as w,
        broker.client() as gw,
    ):
        # Its first statistics show it subscribed: from then on the broker queues for it.
        await w.until(lambda: w.stats, timeout=20)
        await publish_event(gw, "port", power_event(0.05))
        await w.session(ORDER, "charging")
        await w.stats_where(total_events_processed=1, sessions_created=1, active_sessions=1)

        service_process.kill()
        # While it is down: the session goes on and ends, and another one starts.
        await publish_event(gw, "port", power_event(0.15, duration_s=600))
        await publish_event(gw, "order", settled_event(0.2, 700))
        await publish_event(gw, "port", power_event(0.01, order_no=OTHER, port=1))
        await request(gw, "query", {"request_id": "after", "session_id": ORDER})
        assert w.sessions[ORDER] is not None and w.sessions[ORDER]["status"] == "charging"

        service_process.start()
        reply = await w.response("query", "after", timeout=20)
        assert reply["ok"] is True and reply["session"]["status"] == "completed"
        done = await w.session(ORDER, "completed")
        assert done["energy_kwh"] == 0.2
        assert [e["type"] for e in done["events"]] == ["power", "power", "settled"]
        await w.session(OTHER, "charging")
        await w.stats_where(
            total_events_processed=4,
            charging_start_events=2,
            charging_stop_events=1,
            power_update_events=3,
            sessions_created=2,
            sessions_completed=1,
            duplicate_events=0,
            processing_errors=0,
            active_sessions=1,
            total_energy_delivered_kwh=0.2,
            average_session_duration_s=700.0,
        )


async def test_wiped_broker_gets_the_retained_state_back(broker: Mosquitto, tmp_path: Path) -> None:
    async with running_service(settings_for(broker, tmp_path)):
        async with (
            watcher(broker) as w,
            broker.client() as gw,
        ):
            await publish_event(gw, "port", power_event(0.05))
            await publish_event(gw, "order", settled_event(0.3, 900, order_no=OTHER, port=1))
            await w.session(ORDER, "charging")
            await w.session(OTHER, "completed")
            before = await w.stats_where(total_events_processed=2, sessions_completed=1)

        broker.stop()
        broker.wipe_store()
        broker.start()

        async with watcher(broker) as fresh:
            await fresh.until(lambda: len(fresh.sessions) == 2, timeout=20)
            assert fresh.sessions[ORDER]["status"] == "charging"  # type: ignore[index]
            assert fresh.sessions[OTHER]["energy_kwh"] == 0.3  # type: ignore[index]
            keys = ("total_events_processed", "sessions_created", "sessions_completed")
            await fresh.stats_where(**{k: before[k] for k in keys})
            # ... and it processes events again (it subscribed anew on the empty broker).
            async with broker.client() as gw:
                await publish_event(gw, "order", settled_event(0.1, 60))
            await fresh.session(ORDER, "completed")
            await fresh.stats_where(total_events_processed=3, sessions_completed=2)


async def test_empty_state_dir_adopts_what_the_broker_retains(
    broker: Mosquitto, tmp_path: Path
) -> None:
    first = settings_for(broker, tmp_path / "one", service_client_id="service-one")
    async with (
        running_service(first),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await publish_event(gw, "order", settled_event(0.3, 900))
        await publish_event(gw, "port", power_event(0.02, order_no=OTHER, port=1))
        await w.session(ORDER, "completed")
        await w.session(OTHER, "charging")
        await w.stats_where(total_events_processed=2, sessions_created=2)

    second = settings_for(broker, tmp_path / "two", service_client_id="service-two")
    async with (
        running_service(second),
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await request(gw, "query", {"request_id": "q", "device_id": DEV, "port": 1})
        reply = await w.response("query", "q")
        assert reply["ok"] is True and reply["session"]["session_id"] == OTHER
        # A resent settlement of the adopted, completed session changes nothing ...
        await publish_event(gw, "order", settled_event(0.3, 900))
        # ... and counting goes on from the adopted statistics.
        await publish_event(gw, "order", settled_event(0.1, 100, order_no=OTHER, port=1))
        await w.session(OTHER, "completed")
        await w.stats_where(
            total_events_processed=3,
            sessions_created=2,
            sessions_completed=2,
            duplicate_events=1,
            active_sessions=0,
            total_energy_delivered_kwh=0.4,
            average_session_duration_s=500.0,
        )


async def test_a_backlog_handled_as_one_batch_counts_each_event_once(
    broker: Mosquitto, service_process: ServiceProcess
) -> None:
    """What queued while the service was down arrives at once and is handled as one batch
    (one transaction): a redelivered copy and a resent settlement inside it count once."""
    service_process.start()
    async with (
        watcher(broker) as w,
        broker.client() as gw,
    ):
        await w.until(lambda: w.stats, timeout=20)
        service_process.kill()
        raw = await publish_event(gw, "port", power_event(0.05))
        await gw.publish(TOPICS.event(DEV, "port"), raw, qos=1)  # a redelivered copy
        await publish_event(gw, "port", power_event(0.15, duration_s=600))
        await publish_event(gw, "order", settled_event(0.2, 700))
        await publish_event(gw, "order", settled_event(0.2, 700, ts=1_790_001_800.0))
        await publish_event(gw, "port", power_event(0.01, order_no=OTHER, port=1))

        service_process.start()
        done = await w.session(ORDER, "completed", timeout=20)
        assert done["energy_kwh"] == 0.2
        assert [e["type"] for e in done["events"]] == ["power", "power", "settled"]
        await w.session(OTHER, "charging")
        await w.stats_where(
            total_events_processed=4,
            power_update_events=3,
            sessions_created=2,
            sessions_completed=1,
            duplicate_events=2,
            processing_errors=0,
            active_sessions=1,
            total_energy_delivered_kwh=0.2,
        )


async def test_a_store_that_cannot_commit_stops_the_service_and_the_event_stays_queued(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is acknowledged that was not written: a failing commit (disk full, I/O error)
    stops the service, and the next one gets the event from the broker."""
    settings = settings_for(broker, tmp_path / "state")
    commit = SqliteStore.commit

    def failing(self: SqliteStore, **kw: Any) -> None:
        if kw.get("seen"):  # the transaction of a processed message
            raise sqlite3.OperationalError("disk I/O error")
        commit(self, **kw)

    monkeypatch.setattr(SqliteStore, "commit", failing)
    async with watcher(broker) as w, broker.client() as gw:
        ready = asyncio.Event()
        service = asyncio.create_task(run_service(settings, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        await publish_event(gw, "port", power_event(0.05))
        with pytest.raises(BaseExceptionGroup) as stopped:
            await asyncio.wait_for(service, 10)
        assert stopped.group_contains(sqlite3.OperationalError)
        assert ORDER not in w.sessions

        monkeypatch.undo()
        async with running_service(settings):
            await w.session(ORDER, "charging")
            await w.stats_where(total_events_processed=1, sessions_created=1, duplicate_events=0)
