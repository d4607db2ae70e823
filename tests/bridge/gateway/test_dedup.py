"""`BoundedTtlMap`: entries live `ttl_s`, at most `max_items` are kept; `add` is `in` + `put`."""

from __future__ import annotations

import pytest

from bridge.gateway import dedup
from bridge.gateway.dedup import BoundedTtlMap


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(dedup.time, "monotonic", lambda: now[0])
    return now


def test_add_stores_a_new_key_and_returns_a_live_ones_value(clock: list[float]) -> None:
    recent: BoundedTtlMap[str, bytes] = BoundedTtlMap(10, 5.0)
    assert recent.add("a", b"") is None
    assert "a" in recent
    recent.update("a", b"reply")
    clock[0] += 4.9
    assert recent.add("a", b"") == b"reply"  # still live: nothing stored
    assert recent.get("a") == b"reply"
    clock[0] += 0.2  # past the first add's ttl (a live add does not extend it)
    assert recent.add("a", b"") is None
    assert recent.get("a") == b""
    clock[0] += 4.9
    assert recent.get("a") == b""  # the new entry's own ttl


def test_add_keeps_at_most_max_items_dropping_the_oldest(clock: list[float]) -> None:
    recent: BoundedTtlMap[int, bytes] = BoundedTtlMap(3, 5.0)
    for key in range(5):
        assert recent.add(key, b"") is None
    assert len(recent) == 3
    assert 0 not in recent and 1 not in recent
    assert recent.add(4, b"x") == b""  # the newest is still there
