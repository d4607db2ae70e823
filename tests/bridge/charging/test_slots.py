"""Client-id slots (bridge/charging/slots.py) against a real PostgreSQL, and a dead slot's
queue drained by a survivor through a real Mosquitto."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bridge.charging.service import (
    default_instance_id,
    service_mqtt_settings,
    service_subscriptions,
)
from bridge.charging.settings import ChargingSettings
from bridge.charging.slots import ServiceSlots, SlotBook, SlotLost, lock_space
from bridge.charging.store import StoreError
from bridge.mqtt.client import MqttClient, MqttSettings
from tests.bridge.charging.harness import (
    ORDER,
    TOPICS,
    power_event,
    publish_event,
    running_service,
    settings_for,
    settled_event,
    watcher,
)
from tests.bridge.charging.store.conftest import pg_cluster, pg_url  # noqa: F401
from tests.broker import Mosquitto

CID = "chargebridge-service-test"


@pytest.fixture
def books(pg_url: str) -> Iterator[list[SlotBook]]:  # noqa: F811
    """book(n) stands for instance n; all are closed at the end."""
    made: list[SlotBook] = []
    yield made
    for book in made:
        book.close()


def book(books: list[SlotBook], url: str, slots: int = 4, client_id: str = CID) -> SlotBook:
    b = SlotBook(url, client_id, slots, f"instance-{len(books)}")
    books.append(b)
    return b


def slot_rows(url: str, client_id: str = CID) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT slot, holder FROM service_slots WHERE client_id = %s", (client_id,)
        ).fetchall()
    return {int(slot): str(holder) for slot, holder in rows}


def test_instances_lease_distinct_slots_and_record_them(
    books: list[SlotBook],
    pg_url: str,  # noqa: F811
) -> None:
    a, b = book(books, pg_url), book(books, pg_url)
    first, second = a.lease_free(), b.lease_free()
    assert first is not None and second is not None
    assert (first.slot, second.slot) == (0, 1)
    assert (first.client_id, second.client_id) == (f"{CID}-slot-0", f"{CID}-slot-1")
    assert slot_rows(pg_url) == {-1: "before slots", 0: "instance-0", 1: "instance-1"}
    # A lease is exclusive: nobody adopts a held slot, not even the holder's own book.
    legacy = a.adopt_orphans(held={0})
    assert [lease.slot for lease in legacy] == [-1]
    assert book(books, pg_url).adopt_orphans(held=set()) == []


def test_the_client_id_before_slots_is_drained_once(
    books: list[SlotBook],
    pg_url: str,  # noqa: F811
) -> None:
    """The first instance on slots finds the single service's bare client id recorded as slot
    -1: its queue is adopted like a dead slot's, once, and never recorded again."""
    a = book(books, pg_url)
    own = a.lease_free()
    assert own is not None
    (legacy,) = a.adopt_orphans(held={own.slot})
    assert (legacy.slot, legacy.client_id) == (-1, CID)
    a.retire(legacy)
    b = book(books, pg_url)
    own_b = b.lease_free()
    assert own_b is not None
    assert b.adopt_orphans(held={own_b.slot}) == []
    assert -1 not in slot_rows(pg_url)


def test_a_released_slot_is_an_orphan_adopted_once(
    books: list[SlotBook],
    pg_url: str,  # noqa: F811
) -> None:
    a, b, c = book(books, pg_url), book(books, pg_url), book(books, pg_url)
    own_a, own_b = a.lease_free(), b.lease_free()
    assert own_a is not None and own_b is not None
    SlotBook.release(own_b)  # instance b is gone
    adopted = a.adopt_orphans(held={own_a.slot})
    assert [lease.slot for lease in adopted] == [-1, 1]  # -1: the client id before slots
    assert c.adopt_orphans(held=set()) == []  # a second survivor finds them taken
    # Retired: no longer used, so nobody scans for it; free for a newcomer, with no queue.
    for lease in adopted:
        a.retire(lease)
    assert slot_rows(pg_url) == {0: "instance-0"}
    assert c.adopt_orphans(held=set()) == []
    again = c.lease_free()
    assert again is not None and again.slot == 1


def test_a_newcomer_takes_the_lowest_free_slot_with_its_queue(
    books: list[SlotBook],
    pg_url: str,  # noqa: F811
) -> None:
    a, b = book(books, pg_url), book(books, pg_url)
    leases = [a.lease_free(), a.lease_free(), a.lease_free()]
    assert [lease.slot for lease in leases if lease] == [0, 1, 2]
    assert leases[1] is not None
    SlotBook.release(leases[1])
    newcomer = b.lease_free()
    assert newcomer is not None and newcomer.slot == 1


def test_all_slots_held_is_a_clear_error(books: list[SlotBook], pg_url: str) -> None:  # noqa: F811
    a = book(books, pg_url, slots=2)
    held = [a.lease_free(), a.lease_free()]  # kept: a lease lives as long as its connection
    assert None not in held
    unit = ServiceSlots(book(books, pg_url, slots=2), service_mqtt(), [], lease_wait_s=0.0)
    with pytest.raises(StoreError, match=r"all 2 client-id slots .* raise service_slots"):
        asyncio.run(unit.start())


def test_client_ids_have_their_own_slots(books: list[SlotBook], pg_url: str) -> None:  # noqa: F811
    assert lock_space("site-a") != lock_space("site-b")
    a = book(books, pg_url, client_id="site-a").lease_free()
    b = book(books, pg_url, client_id="site-b").lease_free()
    assert a is not None and b is not None and a.slot == b.slot == 0


HOLDER = """
import sys, time
from bridge.charging.slots import SlotBook
lease = SlotBook(sys.argv[1], sys.argv[2], 4, "doomed").lease_free()
print(lease.slot, flush=True)
time.sleep(600)
"""


def test_a_killed_process_releases_its_slot_at_once(
    books: list[SlotBook],
    pg_url: str,  # noqa: F811
) -> None:
    survivor = book(books, pg_url)
    own = survivor.lease_free()
    assert own is not None
    for lease in survivor.adopt_orphans(held={own.slot}):  # the client id before slots
        survivor.retire(lease)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg_url, CID], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "1"
        assert survivor.adopt_orphans(held={own.slot}) == []  # alive: held
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # The server ends the backend when the socket closes; poll for it (no event to await).
        deadline = time.monotonic() + 10
        while not (adopted := survivor.adopt_orphans(held={own.slot})):
            assert time.monotonic() < deadline, "the killed holder's lock was not released"
            time.sleep(0.05)
        assert [lease.slot for lease in adopted] == [1]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_lost_lease_stops_the_instance(books: list[SlotBook], pg_url: str) -> None:  # noqa: F811
    unit = ServiceSlots(book(books, pg_url), service_mqtt(), [])

    async def scenario() -> None:
        await unit.start()
        assert unit.own is not None
        pid = unit.own.conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:  # the database drops it
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        async with asyncio.TaskGroup() as tg:
            with pytest.raises(SlotLost, match="lost the lease of MQTT client-id slot 0"):
                await unit.scan(tg)
        await unit.stop()

    asyncio.run(scenario())


def service_mqtt() -> MqttSettings:
    return service_mqtt_settings(ChargingSettings(service_client_id=CID))


# --- with a real broker: a dead slot's queue drained by a survivor --------------------------


async def test_a_survivor_drains_a_dead_slots_queue_and_ends_its_session(
    broker: Mosquitto,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    """Instance 1 held slot 1 and died for good; events queued in its session while no
    instance ran. A survivor (slot 0) adopts slot 1, handles its queue exactly as its own,
    takes the session off the topics and ends it, and frees the slot."""
    settings = settings_for(
        broker,
        tmp_path / "state",
        store=pg_url,
        slot_scan_interval_s=0.2,
        slot_idle_s=0.5,
    )
    dead = SlotBook(pg_url, CID, settings.service_slots, "dead")
    leases = [dead.lease_free(), dead.lease_free()]
    assert [lease.slot for lease in leases if lease] == [0, 1]
    # Slot 1's persistent session, subscribed like a service, then gone (its process died).
    dead_mqtt = service_mqtt_settings(settings).model_copy(update={"client_id": f"{CID}-slot-1"})
    dead_subscriptions = service_subscriptions(TOPICS, shared=True)
    async with MqttClient(dead_mqtt, subscriptions=dead_subscriptions) as client:
        await client.connected.wait()
    for lease in leases:
        SlotBook.release(lease)
    dead.close()
    async with broker.client() as gw:
        await publish_event(gw, "port", power_event(0.05))
        await publish_event(gw, "order", settled_event(0.3, 600))
    assert slot_rows(pg_url) == {-1: "before slots", 0: "dead", 1: "dead"}

    async with watcher(broker) as w, running_service(settings):
        done = await w.session(ORDER, "completed", timeout=30)
        assert done["energy_kwh"] == 0.3
        await w.stats_where(
            timeout=20, total_events_processed=2, sessions_created=1, sessions_completed=1
        )
        deadline = time.monotonic() + 30
        while slot_rows(pg_url).keys() != {0}:  # each drain ends, then deletes its row
            assert time.monotonic() < deadline, "the drained slot was never retired"
            await asyncio.sleep(0.1)
        # the survivor's own lease (on a shared store the default id ignores the gateway id)
        assert slot_rows(pg_url)[0] == default_instance_id(True, "unused")
        # The survivor goes on under its own slot; events reach it as before.
        async with broker.client() as gw:
            await publish_event(gw, "port", power_event(0.1, order_no="AB" * 16, port=3))
        await w.stats_where(timeout=20, total_events_processed=3, sessions_created=2)
