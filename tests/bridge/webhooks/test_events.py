"""Which webhook events a session's status change and a device event mean (pure)."""

from __future__ import annotations

import pytest

from bridge.webhooks.events import device_event, session_event, session_events


@pytest.mark.parametrize(
    ("last", "status", "expected"),
    [
        (None, "starting", []),
        (None, "charging", ["session_started"]),
        ("starting", "charging", ["session_started"]),
        ("charging", "charging", []),  # a redelivered retained session: nothing new
        ("charging", "stopping", []),
        ("charging", "completed", ["session_completed"]),
        ("stopping", "completed", ["session_completed"]),
        ("completed", "completed", []),
        (None, "completed", ["session_completed"]),  # card/offline start seen only settled
        ("starting", "failed", ["session_failed"]),
        ("charging", "timeout", ["session_timeout"]),
        ("timeout", "completed", ["session_completed"]),  # a late 0x03 still completes it
    ],
)
def test_session_status_changes(last: str | None, status: str, expected: list[str]) -> None:
    assert session_events({"session_id": "S", "status": status}, last) == expected


def test_session_event_key_is_stable_and_body_carries_the_session() -> None:
    session = {"session_id": "AB" * 16, "status": "completed", "energy_kwh": 1.5}
    first = session_event("session_completed", session, "2026-12-01T00:00:00.000Z")
    again = session_event("session_completed", session, "2026-12-02T00:00:00.000Z")
    assert first.key == again.key == f"{'AB' * 16}:session_completed"
    assert first.stream == f"session:{'AB' * 16}"
    assert first.body == {
        "event": "session_completed",
        "id": first.key,
        "ts": "2026-12-01T00:00:00.000Z",
        "session": session,
    }


def test_device_events() -> None:
    payload = {"type": "offline", "ts": "2026-12-01T00:00:01.000Z", "device_id": "04AB373B"}
    event = device_event("04AB373B", payload, "2026-12-01T00:00:02.000Z")
    assert event is not None
    assert event.type == "device_offline"
    assert event.key == "04AB373B:device_offline:2026-12-01T00:00:01.000Z"
    assert event.body["payload"] == payload and event.body["device_id"] == "04AB373B"
    assert device_event("04AB373B", {"type": "heartbeat"}, "t") is None
    assert device_event("04AB373B", {"type": "security", "ts": "x"}, "t").type == "security"  # type: ignore[union-attr]
