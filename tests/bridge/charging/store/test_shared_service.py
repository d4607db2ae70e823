"""Two charging services in one process on one real PostgreSQL store, each with its own fake
client (tests/bridge/charging/test_units.py): what one instance did, the other sees; a
batch written over the other's change runs again; a message, a resent settlement and a
request take effect once; the cleanup pass of either instance times a session out once."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.charging.service import ChargingService
from bridge.charging.settings import ChargingSettings
from bridge.charging.store.postgres import PostgresStore
from tests.bridge.charging.harness import BASE, DEV, ORDER, TOPICS, power_event, settled_event
from tests.bridge.charging.test_units import (
    Clock,
    FakeClient,
    message,
    order_event,
    port_event,
    request,
    settle_tasks,
)

OTHER = "0B000002"


@pytest.fixture
def pair(tmp_path: Path, pg_url: str) -> Iterator[tuple[Any, Any, Clock]]:
    """Two services (`a`, `b`) on one database, each a (service, client) pair."""
    clock = Clock()
    stores: list[PostgresStore] = []

    def build(name: str) -> tuple[ChargingService, FakeClient]:
        store = PostgresStore(pg_url)
        stores.append(store)
        settings = ChargingSettings(
            base_topic=BASE,
            state_dir=tmp_path / name,
            instance_id=name,
            event_logging=False,
            request_timeout_s=5.0,
            session_timeout_s=900.0,
        )
        client = FakeClient()
        return ChargingService(settings, store, client, clock=clock), client

    a, b = build("a"), build("b")
    yield a, b, clock
    for store in stores:
        store.close()


def stored_stats(service: ChargingService) -> dict[str, Any]:
    service.state.reload_stats()
    return dataclasses.asdict(service.stats) | {"active": service.state.active_total}


async def test_what_one_instance_did_the_other_sees_and_each_event_counts_once(
    pair: tuple[Any, Any, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chargebridge.charging")
    (a, a_client), (b, b_client), _ = pair
    await a.handle_shared([port_event(power_event(0.05, duration_s=60))])
    # b's cache never saw the session: a report naming it from another device first tries
    # to create it, meets a's row (Conflict), runs again on the stored session: refused.
    foreign = power_event(0.9, device_id=OTHER, duration_s=999)
    await b.handle_shared([message(f"{BASE}/devices/{OTHER}/event/port", foreign)])
    assert b_client.on(TOPICS.event(OTHER, "device"))[0]["reason"] == "foreign_order"
    # b settles a's session (its device's lock refreshed it); a gets the same message again
    # and a resent settlement: both change nothing.
    settled = order_event(settled_event(0.2, 700))
    await b.handle_shared([settled])
    await a.handle_shared([settled, order_event(settled_event(0.2, 700))])
    done = b_client.on(TOPICS.session(ORDER))[-1]
    assert (done["status"], done["energy_kwh"], done["version"]) == ("completed", 0.2, 2)
    assert [s["version"] for s in a_client.on(TOPICS.session(ORDER))] == [1]
    stats = stored_stats(a)
    assert stats["total_events_processed"] == 2  # the power report and the settlement
    assert stats["duplicate_events"] == 2 and stats["security_events"] == 1
    assert (stats["sessions_created"], stats["sessions_completed"], stats["active"]) == (1, 1, 0)
    assert stats == stored_stats(b)
    assert len(a_client.acked) == 3 and len(b_client.acked) == 2
    assert "batch run again" in caplog.text  # the Conflict above


async def test_a_request_delivered_to_both_instances_is_carried_out_once(
    pair: tuple[Any, Any, Clock],
) -> None:
    (a, a_client), (b, b_client), _ = pair
    start = request("start", {"request_id": "r-1", "device_id": DEV, "port": 1})
    try:
        await a.handle_shared([start])
        await b.handle_shared([start])
        await settle_tasks(a)  # a's command task sends the 0x82
        assert len(a_client.commands("start_charging")) == 1
        assert b_client.commands("start_charging") == []
        assert b_client.on(TOPICS.charging_response("start")) == []
        assert stored_stats(b)["duplicate_events"] == 1
        assert stored_stats(b)["active"] == 1
    finally:
        await a.stop()
        await b.stop()


async def test_either_instance_times_a_silent_session_out_once(
    pair: tuple[Any, Any, Clock],
) -> None:
    (a, _), (b, b_client), clock = pair
    await a.handle_shared([port_event(power_event(0.05, duration_s=60))])
    clock.now += 901
    await b.cleanup_shared()  # b never saw the session: the store says it is due
    await a.cleanup_shared()  # a's copy is stale: refreshed under the lock, nothing to do
    timed_out = b_client.on(TOPICS.session(ORDER))
    assert [(s["status"], s["version"]) for s in timed_out] == [("timeout", 2)]
    stats = stored_stats(a)
    assert (stats["sessions_timeout"], stats["active"]) == (1, 0)
