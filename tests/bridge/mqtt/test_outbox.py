"""The outbox on its own: order, the bound, critical messages, coalescing, keys, durability."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.mqtt.client import MessageDropped, MqttClient, MqttSettings
from bridge.mqtt.outbox import MAX_GROUP, Outbox, OutboxLocked, OutboxMessage, SqliteOutbox
from tests.broker import Mosquitto


def drain(outbox: Outbox) -> list[tuple[str, bytes]]:
    out = []
    while (m := outbox.take()) is not None:
        out.append((m.topic, m.payload))
        outbox.acked(m.seq)
    return out


@pytest.fixture(params=["memory", "sqlite"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Outbox:
    if request.param == "memory":
        return Outbox(5)
    return SqliteOutbox(tmp_path / "o.sqlite3", 5)


def test_messages_come_out_in_order_and_in_flight_ones_go_back_first(outbox: Outbox) -> None:
    for i in range(4):
        outbox.add("t", str(i).encode())
    first, second = outbox.take(), outbox.take()
    assert first is not None and second is not None
    outbox.acked(first.seq)
    outbox.requeue()  # connection lost with `second` in flight
    assert len(outbox) == 3
    assert drain(outbox) == [("t", b"1"), ("t", b"2"), ("t", b"3")]
    assert len(outbox) == 0


def test_the_oldest_non_critical_messages_are_dropped_beyond_the_bound(outbox: Outbox) -> None:
    outbox.add("e", b"0")
    outbox.add("settled", b"s", critical=True)
    dropped = []
    for i in range(1, 8):
        dropped += outbox.add("e", str(i).encode()).dropped
    assert len(outbox) == 5 and outbox.dropped == 4 == len(dropped)
    assert drain(outbox) == [("settled", b"s"), *[("e", str(i).encode()) for i in range(4, 8)]]


def test_critical_messages_are_kept_even_beyond_the_bound(outbox: Outbox) -> None:
    for i in range(7):
        outbox.add("settled", str(i).encode(), critical=True)
    added = outbox.add("e", b"x")
    assert added.dropped == [added.seq]  # the only droppable one is the newest
    assert len(outbox) == 7 and outbox.dropped == 1
    assert [p for _, p in drain(outbox)] == [str(i).encode() for i in range(7)]


def test_in_flight_messages_are_not_dropped(outbox: Outbox) -> None:
    outbox.add("e", b"0")
    in_flight = outbox.take()
    assert in_flight is not None
    for i in range(1, 10):
        outbox.add("e", str(i).encode())
    assert len(outbox) == 5
    outbox.acked(in_flight.seq)
    assert [p for _, p in drain(outbox)] == [b"6", b"7", b"8", b"9"]


def test_a_retained_state_supersedes_the_queued_one_and_moves_to_the_end(outbox: Outbox) -> None:
    first = outbox.add("state/a", b"1", retain=True)
    outbox.add("event", b"e")
    second = outbox.add("state/a", b"2", retain=True)
    assert second.replaced == first.seq and not second.dropped
    assert drain(outbox) == [("event", b"e"), ("state/a", b"2")]


def test_a_retained_state_already_in_flight_is_not_superseded(outbox: Outbox) -> None:
    outbox.add("state/a", b"1", retain=True)
    assert outbox.take() is not None
    assert outbox.add("state/a", b"2", retain=True).replaced is None
    outbox.requeue()
    assert drain(outbox) == [("state/a", b"1"), ("state/a", b"2")]


def test_keys_are_found_while_queued_and_remembered_once_published(outbox: Outbox) -> None:
    added = outbox.add("settled", b"s", critical=True, key="k")
    assert outbox.find_key("k") == added.seq and outbox.find_key("other") is False
    message = outbox.take()
    assert message is not None and outbox.find_key("k") == added.seq
    outbox.acked(message.seq)
    assert outbox.find_key("k") is True


def test_a_refused_keyed_message_may_be_submitted_again(outbox: Outbox) -> None:
    outbox.add("settled", b"s", critical=True, key="k")
    message = outbox.take()
    assert message is not None
    outbox.failed(message.seq)
    assert outbox.find_key("k") is False and len(outbox) == 0


def test_sqlite_outbox_survives_a_restart_in_order(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = b"corr"
    first = SqliteOutbox(path, 100)
    for i in range(5):
        first.add("e", str(i).encode())
    first.add("resp", b"r", properties=props)
    first.add("settled", b"s", critical=True, key="k1")
    first.add("settled", b"s2", critical=True, key="k2")
    sent = first.take()
    assert sent is not None
    first.acked(sent.seq)  # "0" published
    in_flight = first.take()  # "1" in flight at the crash
    assert in_flight is not None
    message = None
    while (message := first.take()) is not None and message.key != "k2":
        first.acked(message.seq)
    assert message is not None  # "k2" in flight too
    first.flush()  # what the event loop does at the end of the turn
    first._db.close()  # a crash: no close(), the process just ends

    second = SqliteOutbox(path, 100)
    assert second.find_key("k1") is True  # published before the crash
    restored = []
    while (m := second.take()) is not None:
        restored.append(m)
    assert [(m.topic, m.payload) for m in restored] == [("e", b"1"), ("settled", b"s2")]
    assert restored[1].critical and second.find_key("k2") == restored[1].seq
    new = second.add("e", b"new")
    assert new.seq > restored[-1].seq  # new messages after the old ones
    second.close()

    third = SqliteOutbox(path, 100)
    assert [p for _, p in drain(third)] == [b"1", b"s2", b"new"]
    third.close()


def test_sqlite_outbox_restores_properties(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = b"corr"
    first = SqliteOutbox(path)
    first.add("resp", b"r", properties=props)
    first.close()
    second = SqliteOutbox(path)
    restored = second.take()
    assert restored is not None and restored.properties is not None
    assert restored.properties.CorrelationData == b"corr"
    second.close()


def test_sqlite_outbox_writes_settlements_at_once_and_skips_what_never_needed_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox = SqliteOutbox(path, 3)
    for i in range(10):  # no event loop here: nothing written yet; 7 dropped in memory
        outbox.add("e", str(i).encode())
    outbox.add("s", b"1", retain=True)
    outbox.add("s", b"2", retain=True)
    assert outbox.stored_count() == 0
    message = outbox.take()
    assert message is not None and message.payload == b"8"
    assert outbox.stored_count() == 0  # not critical: handed out before it is written
    outbox.acked(message.seq)  # the broker has it: it is never written
    outbox.add("settled", b"x", critical=True, key="k")
    assert on_disk(outbox) == [b"9", b"2", b"x"]  # at once, with everything queued before it
    assert [m.payload for m in drain_until_key(outbox, "k")] == [b"9", b"2", b"x"]
    # the key is written before the caller hears of the acknowledgement (with the deletes)
    assert published_on_disk(outbox) == ["k"] and on_disk(outbox) == []
    outbox.close()


def drain_until_key(outbox: SqliteOutbox, key: str) -> list[OutboxMessage]:
    """Publish and acknowledge messages up to the one with `key`."""
    out = []
    while (m := outbox.take()) is not None:
        out.append(m)
        outbox.acked(m.seq)
        if m.key == key:
            break
    return out


def published_on_disk(outbox: SqliteOutbox) -> list[str]:
    return [k for (k,) in outbox._db.execute("SELECT key FROM published ORDER BY at")]


async def test_sqlite_outbox_writes_changes_from_many_loop_turns_in_one_transaction(
    tmp_path: Path,
) -> None:
    """Group commit: queued messages are collected over loop turns (here the window never ends
    by itself) and written MAX_GROUP at a time, in order."""
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 10_000, commit_window_s=3600)
    commits = []
    outbox._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    for i in range(MAX_GROUP + 88):
        outbox.add("e", str(i).encode())
        await asyncio.sleep(0)  # a new loop turn for each message, as at a low rate
    assert len(commits) == 1 and outbox.stored_count() == MAX_GROUP
    outbox.flush()
    assert len(commits) == 2
    assert on_disk(outbox) == [str(i).encode() for i in range(MAX_GROUP + 88)]
    outbox.close()


async def test_sqlite_outbox_stored_waits_for_the_group_commit(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 1000)
    for i in range(50):
        outbox.add("e", str(i).encode())
        await asyncio.sleep(0)
    await outbox.stored()
    assert outbox.unstored == 0
    assert on_disk(outbox) == [str(i).encode() for i in range(50)]
    outbox.close()


KILLED_CHILD = """
import asyncio, sys
from pathlib import Path
from bridge.mqtt.outbox import SqliteOutbox

async def main() -> None:
    outbox = SqliteOutbox(Path(sys.argv[1]), 10_000)
    for i in range(2000):
        if i == 1000:
            outbox.add("settled", b"s", critical=True, key="k")
        outbox.add("e", str(i).encode())
        if i % 10 == 0:
            await asyncio.sleep(0)  # as a gateway: a few messages per loop turn
    await outbox.stored()
    print("stored", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_messages_stored_survive_a_kill_of_the_process(tmp_path: Path) -> None:
    """What the outbox reported as stored survives SIGKILL: no close(), nothing flushed after."""
    path = tmp_path / "o.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"stored\n"
    finally:
        child.kill()
        child.wait()
    reopened = SqliteOutbox(path, 10_000)
    assert isinstance(reopened.find_key("k"), int)  # queued, not published
    payloads = [p for _, p in drain(reopened)]
    expected = [str(i).encode() for i in range(2000)]
    assert payloads == [*expected[:1000], b"s", *expected[1000:]]
    reopened.close()


def test_sqlite_outbox_forgets_published_keys_after_their_ttl(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    first = SqliteOutbox(path, key_ttl_s=3600)
    first.add("settled", b"s", critical=True, key="k")
    message = first.take()
    assert message is not None
    first.acked(message.seq)
    first.close()
    for ttl, known in ((3600, True), (0, False)):
        reopened = SqliteOutbox(path, key_ttl_s=ttl)
        assert reopened.find_key("k") is known
        reopened.close()


def test_a_second_process_cannot_open_the_same_outbox(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    first = SqliteOutbox(path)
    with pytest.raises(OutboxLocked, match="in use"):
        SqliteOutbox(path)
    first.close()
    SqliteOutbox(path).close()  # free again once closed


async def test_client_futures_follow_drops_coalescing_and_keys(broker: Mosquitto) -> None:
    async with broker.client(identifier="outbox-client-watch", clean_session=False) as sub:
        await sub.subscribe("chargebridge/t/#", qos=1)
    async with MqttClient(MqttSettings(url=broker.url), outbox=Outbox(4)) as mqtt:
        async with asyncio.timeout(10):
            await mqtt.wait_connected()
        broker.stop()
        async with asyncio.timeout(10):
            await mqtt.disconnected.wait()
        settled = mqtt.submit("chargebridge/t/settled", b"s", critical=True, key="k")
        events = [mqtt.submit("chargebridge/t/event", str(i)) for i in range(2)]
        old_state = mqtt.submit("chargebridge/t/state", b"1", retain=True)
        new_state = mqtt.submit(
            "chargebridge/t/state", b"2", retain=True
        )  # supersedes the queued one
        events += [mqtt.submit("chargebridge/t/event", str(i)) for i in range(2, 4)]  # drop e0, e1
        again = mqtt.submit("chargebridge/t/settled", b"s-resent", critical=True, key="k")
        assert mqtt.queued == 4 and mqtt.dropped == 2
        for fut in events[:2]:
            with pytest.raises(MessageDropped):
                await fut
        broker.start()
        async with asyncio.timeout(20):
            await asyncio.gather(old_state, settled, *events[2:], new_state, again)
        assert mqtt.submit(
            "chargebridge/t/settled", b"s", critical=True, key="k"
        ).done()  # published
    async with broker.client(identifier="outbox-client-watch", clean_session=False) as sub:
        received = []
        async with asyncio.timeout(10):
            async for m in sub.messages:
                received.append((str(m.topic), m.payload))
                if len(received) == 4:
                    break
    assert received == [
        ("chargebridge/t/settled", b"s"),
        ("chargebridge/t/state", b"2"),
        ("chargebridge/t/event", b"2"),
        ("chargebridge/t/event", b"3"),
    ]


class FailingWrites:
    """A sqlite3 connection whose writes fail while `failing` is set, as on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.failing = True
        self.failures = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        if self.failing:
            self.failures += 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def on_disk(outbox: SqliteOutbox) -> list[bytes]:
    return [bytes(p) for (p,) in outbox._db.execute("SELECT payload FROM outbox ORDER BY seq")]


def test_a_failing_write_keeps_every_pending_change_and_retries_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that fails (disk full) loses nothing: the queued inserts, the deletes of
    published messages and the published keys are all written by the next write that works,
    and publishing goes on from memory meanwhile."""
    caplog.set_level(logging.INFO, "chargebridge.mqtt")
    path = tmp_path / "o.sqlite3"
    outbox = SqliteOutbox(path, 100)
    outbox.add("e", b"old")
    outbox.flush()
    assert on_disk(outbox) == [b"old"]
    db = FailingWrites(outbox._db)
    outbox._db = db  # type: ignore[assignment]

    old = outbox.take()  # handed out although its flush fails
    assert old is not None and old.payload == b"old"
    outbox.acked(old.seq)  # its delete is pending
    outbox.add("settled", b"s", critical=True, key="k1")
    outbox.add("e", b"kept")
    settled = outbox.take()
    assert settled is not None and settled.key == "k1"
    outbox.acked(settled.seq)  # its key is pending
    outbox.add("e", b"later")
    outbox.flush()
    assert db.failures >= 2
    assert on_disk(outbox) == [b"old"], "a failed write must leave the table as it was"
    assert "cannot write the outbox" in caplog.text
    assert len(outbox) == 2  # publishing goes on from memory

    db.failing = False
    outbox.flush()  # the next write: everything that was pending
    assert on_disk(outbox) == [b"kept", b"later"]
    assert "writable again" in caplog.text
    db.db.close()  # a crash: no close(), the process just ends

    reopened = SqliteOutbox(path, 100)
    assert reopened.find_key("k1") is True  # the settlement is not published twice
    assert [p for _, p in drain(reopened)] == [b"kept", b"later"]  # "old" not sent again
    reopened.close()


def test_deletes_alone_are_written_without_the_messages_queued_since(tmp_path: Path) -> None:
    """Once one message was written (a late PUBACK), a steady flow of messages acknowledged
    within their tick writes its delete and nothing more: the flow's young messages are not
    written with it (they were, and their deletes then made the next write, and so on)."""
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 100, commit_window_s=3600)
    outbox.add("e", b"late")
    late = outbox.take()
    assert late is not None
    outbox._tick()
    outbox._tick()  # outlived a tick unacknowledged: written
    assert outbox.rows_written == 1
    outbox.acked(late.seq)
    for turn in range(20):  # each tick: one message queued, acknowledged before the next
        outbox.add("e", b"flow %d" % turn)
        message = outbox.take()
        assert message is not None
        outbox._tick()
        outbox.acked(message.seq)
    assert on_disk(outbox) == []  # the delete of "late" was written...
    assert outbox.rows_written == 1  # ...and none of the flow
    assert outbox.unstored == 0
    outbox.close()


async def test_sqlite_outbox_writes_only_what_outlives_a_tick_unacknowledged(
    tmp_path: Path,
) -> None:
    """Ticks (every half window; called here by hand, the window being an hour): a message
    acknowledged before the tick after the one that found it queued is never written; one
    still unacknowledged then is written with every pending change; deletes alone wait one
    tick more."""
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 100, commit_window_s=3600)
    outbox.add("e", b"slow")
    outbox._tick()  # "slow" was queued before this tick
    assert outbox.stored_count() == 0
    outbox.add("e", b"quick")
    slow, quick = outbox.take(), outbox.take()
    assert slow is not None and quick is not None
    outbox.acked(quick.seq)  # acknowledged within its first tick: never written
    outbox._tick()  # "slow" outlived a whole tick unacknowledged
    assert on_disk(outbox) == [b"slow"]
    outbox.acked(slow.seq)
    outbox._tick()
    assert on_disk(outbox) == [b"slow"]  # its delete waits for company, one tick
    outbox._tick()
    assert on_disk(outbox) == [] and outbox.unstored == 0
    outbox.add("e", b"again")
    outbox._tick()
    again = outbox.take()
    assert again is not None
    outbox.acked(again.seq)
    outbox._tick()
    assert outbox.rows_written == 1 and outbox.unstored == 0
    outbox.close()
