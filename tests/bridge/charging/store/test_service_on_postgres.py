"""The charging service on a real PostgreSQL store: killed with SIGKILL and started again on
another (empty) state dir, as on a replacement machine, it carries on from the database:
sessions, statistics, and a resent settlement recognised. The replacement takes over the
instance id, hence the MQTT session with what the broker queued meanwhile."""

from __future__ import annotations

from pathlib import Path

from tests.bridge.charging.harness import (
    ORDER,
    power_event,
    publish_event,
    settled_event,
    watcher,
)
from tests.bridge.charging.test_durability import ServiceProcess
from tests.broker import Mosquitto


async def test_a_service_on_another_machine_carries_on_from_postgres(
    broker: Mosquitto, tmp_path: Path, pg_url: str
) -> None:
    first = ServiceProcess(broker, tmp_path / "box-a", tmp_path / "a.log")
    first.args += ["--store", pg_url, "--instance-id", "box"]
    second = ServiceProcess(broker, tmp_path / "box-b", tmp_path / "b.log")
    second.args += ["--store", pg_url, "--instance-id", "box"]
    try:
        first.start()
        async with watcher(broker) as w, broker.client() as gw:
            await w.until(lambda: w.stats, timeout=20)
            await publish_event(gw, "port", power_event(0.05))
            await w.session(ORDER, "charging")
            await w.stats_where(total_events_processed=1, sessions_created=1)
            first.kill()
            # While no service runs: the session ends; the device resends its settlement.
            await publish_event(gw, "order", settled_event(0.2, 700))
            await publish_event(gw, "order", settled_event(0.2, 700))
            second.start()
            done = await w.session(ORDER, "completed", timeout=30)
            assert done["energy_kwh"] == 0.2
            await w.stats_where(
                timeout=20,
                total_events_processed=2,
                sessions_created=1,
                sessions_completed=1,
                duplicate_events=1,
                total_energy_delivered_kwh=0.2,
            )
        assert not (tmp_path / "box-b" / "charging.sqlite3").exists()  # all in PostgreSQL
    finally:
        first.close()
        second.close()
