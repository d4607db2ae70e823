"""ChargingStore group commit: one transaction for a batch of messages, savepoints inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.charging.model import ChargingSession
from bridge.charging.store import ChargingStore


def session(sid: str) -> ChargingSession:
    return ChargingSession(sid, "04AB373B", 1, "charging", 1.0, 1.0)


def test_batch_commits_every_change_once_it_exits(tmp_path: Path) -> None:
    store = ChargingStore(tmp_path)
    with store.batch():
        store.commit(now=1.0, sessions=[session("A" * 32)], seen=["msg:1"])
        store.commit(now=1.0, sessions=[session("B" * 32)], seen=["msg:2"])
        assert store.has_seen("msg:1")  # visible to later messages of the same batch
    store.close()
    reopened = ChargingStore(tmp_path)
    sessions, _ = reopened.load()
    assert set(sessions) == {"A" * 32, "B" * 32}
    assert reopened.has_seen("msg:2")


def test_failing_change_in_a_batch_is_undone_alone(tmp_path: Path) -> None:
    store = ChargingStore(tmp_path)

    class Boom:
        session_id = "C" * 32

        def to_payload(self) -> dict[str, object]:
            raise RuntimeError("boom")

    with store.batch():
        store.commit(now=1.0, sessions=[session("A" * 32)], seen=["msg:1"])
        with pytest.raises(RuntimeError):
            store.commit(now=1.0, sessions=[Boom()], seen=["msg:3"])  # type: ignore[list-item]
        store.commit(now=1.0, seen=["msg:2"])
    sessions, _ = store.load()
    assert set(sessions) == {"A" * 32}
    assert store.has_seen("msg:1") and store.has_seen("msg:2")
    assert not store.has_seen("msg:3")


def test_batch_that_raises_commits_nothing(tmp_path: Path) -> None:
    store = ChargingStore(tmp_path)
    with pytest.raises(KeyError), store.batch():
        store.commit(now=1.0, sessions=[session("A" * 32)])
        raise KeyError("crash before the commit")
    assert store.load()[0] == {}
