"""The durable queue on its own (real SQLite files): order per stream and URL, retries,
dead letters, bounds, and what survives reopening."""

from __future__ import annotations

from pathlib import Path

from bridge.webhooks.events import WebhookEvent
from bridge.webhooks.queue import SessionMark, WebhookQueue

A, B = "http://a/", "http://b/"


def event(stream: str, type_: str) -> WebhookEvent:
    return WebhookEvent(type_, f"{stream}:{type_}", stream, {})


def add(queue: WebhookQueue, *events: WebhookEvent, now: float = 0.0) -> int:
    return queue.commit(list(events), [e.key.encode() for e in events], {}, now)


def test_one_row_per_url_and_a_key_is_queued_once(tmp_path: Path) -> None:
    queue = WebhookQueue(tmp_path, [A, B])
    assert add(queue, event("s1", "started")) == 2
    assert add(queue, event("s1", "started")) == 0  # a redelivery
    assert len(queue) == 2
    assert {(d.url, d.key) for d in queue.due(1.0, 10)} == {(A, "s1:started"), (B, "s1:started")}


def test_only_the_oldest_of_a_stream_is_due(tmp_path: Path) -> None:
    queue = WebhookQueue(tmp_path, [A])
    add(queue, event("s1", "started"), event("s1", "completed"), event("s2", "completed"))
    due = queue.due(1.0, 10)
    assert [d.key for d in due] == ["s1:started", "s2:completed"]
    first = due[0]
    assert queue.failed(first, "HTTP 500", retry_in=10.0) is False
    # s1 waits for its first event's retry; s2 is not held up by it
    assert [d.key for d in queue.due(2.0, 10)] == ["s2:completed"]
    assert queue.next_due() is not None
    queue.delivered(due[1].seq)
    [retry] = queue.due(first_retry := 1e12, 10)
    assert (retry.key, retry.attempts) == ("s1:started", 1) and first_retry
    queue.delivered(retry.seq)
    assert [d.key for d in queue.due(1e12, 10)] == ["s1:completed"]
    assert queue.counters() == {"delivered": 2, "failures": 1, "dead_lettered": 0, "dropped": 0}


def test_dead_letter_after_max_attempts_then_the_next_goes(tmp_path: Path) -> None:
    queue = WebhookQueue(tmp_path, [A], max_attempts=3)
    add(queue, event("s1", "started"), event("s1", "completed"))
    for attempt in range(3):
        [head] = queue.due(1e12, 10)
        assert (head.key, head.attempts) == ("s1:started", attempt)
        assert queue.failed(head, "timeout", retry_in=0.0) is (attempt == 2)
    assert [d.key for d in queue.due(1e12, 10)] == ["s1:completed"]
    [dead] = queue.dead_letters()
    assert (dead["key"], dead["attempts"], dead["reason"]) == ("s1:started", 3, "failed: timeout")
    assert queue.counters()["dead_lettered"] == 1


def test_bounded_the_oldest_are_dropped(tmp_path: Path) -> None:
    queue = WebhookQueue(tmp_path, [A], max_queued=3)
    add(queue, *(event(f"s{i}", "completed") for i in range(5)))
    assert len(queue) == 3
    assert {d.key for d in queue.due(1.0, 10)} == {"s2:completed", "s3:completed", "s4:completed"}
    assert queue.counters()["dropped"] == 2
    assert {d["reason"] for d in queue.dead_letters()} == {"queue_full"}


def test_everything_survives_reopening(tmp_path: Path) -> None:
    queue = WebhookQueue(tmp_path, [A, B])
    add(queue, event("s1", "completed"))
    queue.commit([], [], {"s1": SessionMark("completed", 7)})
    [head, _] = queue.due(1.0, 10)
    queue.failed(head, "HTTP 503", retry_in=0.0)
    created = queue.created_at
    queue.close()
    # B is no longer configured: its row is dead-lettered, A's is kept with its attempt
    queue = WebhookQueue(tmp_path, [A])
    assert queue.created_at == created
    [row] = queue.due(1e12, 10)
    assert (row.url, row.key, row.body) == (A, "s1:completed", b"s1:completed")
    assert row.attempts == (1 if head.url == A else 0)
    assert queue.marks(["s1", "s2"]) == {"s1": SessionMark("completed", 7)}
    assert queue.dead_letters()[0]["reason"] == "url_removed"
    assert queue.counters()["failures"] == 1
