"""Which webhook events an MQTT message means (pure: no I/O).

Sessions: the retained `{b}/sessions/{id}` is the whole session; what changed is found by
comparing its `status` with the last status this unit saw for the session (kept durably by
the queue), so a retained session redelivered after a reconnect or a restart means nothing
new. Device events: `{b}/devices/{id}/event/device` of type online, offline, alarm, security.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# status -> the event it means when first seen
STATUS_EVENTS = {
    "completed": "session_completed",
    "failed": "session_failed",
    "timeout": "session_timeout",
}
STARTED = ("charging", "stopping")  # the device accepted the order
NOT_STARTED = (None, "starting")
DEVICE_EVENT_TYPES = {
    "online": "device_online",
    "offline": "device_offline",
    "alarm": "alarm",
    "security": "security",
}


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event to deliver; `key` is its Idempotency-Key, stable across retries and restarts,
    `stream` the order it belongs to (a session, or a device)."""

    type: str
    key: str
    stream: str
    body: dict[str, Any]


def session_events(session: dict[str, Any], last_status: str | None) -> list[str]:
    """Event types the move from `last_status` (None: never seen) to `session`'s status
    means, in order. `session_started` needs the session seen as started: a session first
    seen already finished (e.g. a 0x03 for an order the service never saw) has none."""
    status = session.get("status")
    if not isinstance(status, str) or status == last_status:
        return []
    out = []
    if status in STARTED and last_status in NOT_STARTED:
        out.append("session_started")
    if status in STATUS_EVENTS:
        out.append(STATUS_EVENTS[status])
    return out


def session_event(type_: str, session: dict[str, Any], ts: str) -> WebhookEvent:
    session_id = str(session["session_id"])
    key = f"{session_id}:{type_}"
    return WebhookEvent(
        type_,
        key,
        f"session:{session_id}",
        {"event": type_, "id": key, "ts": ts, "session": session},
    )


def device_event(device_id: str, payload: dict[str, Any], ts: str) -> WebhookEvent | None:
    """The webhook event of a device event, or None for types webhooks do not carry. The key
    is the device, the type and the event's own `ts` (the same on a QoS 1 redelivery)."""
    type_ = DEVICE_EVENT_TYPES.get(str(payload.get("type")))
    if type_ is None:
        return None
    key = f"{device_id}:{type_}:{payload.get('ts') or ts}"
    body = {"event": type_, "id": key, "ts": ts, "device_id": device_id, "payload": payload}
    return WebhookEvent(type_, key, f"device:{device_id}", body)
