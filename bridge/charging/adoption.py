"""Adoption: a service with an empty store takes over what the broker retains.

A new state dir (a replaced disk, a moved service) must not overwrite the sessions and
statistics the broker still holds with an empty state, so before the first publish the
service reads the retained `{b}/sessions/+` and `{b}/charging/stats` on a separate, clean
connection. A probe message marks the end: the broker queues the retained messages of a
subscription before anything the same client publishes afterwards, so once our own probe
comes back we have them all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field

from bridge.charging import model as m
from bridge.mqtt.client import MqttClient, MqttSettings, payload_bytes
from bridge.mqtt.topics import Topics

log = logging.getLogger("chargebridge.charging")

ADOPT_TIMEOUT_S = 10.0


@dataclass
class Adopted:
    """What the broker retained: sessions by id, and the statistics if there were any."""

    sessions: dict[str, m.ChargingSession] = field(default_factory=dict)
    stats: m.ChargingStats | None = None

    def read(self, topics: Topics, topic: str, payload: bytes) -> None:
        """One retained message; one that cannot be read is logged and skipped."""
        if not payload:
            return
        try:
            data = json.loads(payload)
            if topic == topics.charging_stats:
                self.stats = m.ChargingStats.from_payload(data)
            elif topics.parse_session(topic):
                s = m.ChargingSession.from_payload(data)
                self.sessions[s.session_id] = s
        except (ValueError, TypeError) as exc:
            log.warning("not adopting %s: %s", topic, exc)


async def read_retained(
    settings: MqttSettings, topics: Topics, *, timeout: float = ADOPT_TIMEOUT_S
) -> Adopted:
    """Read the retained sessions and statistics under `topics` with a clean connection made
    from the service's `settings`; on timeout, what was read so far."""
    probe = topics.adoption_probe(uuid.uuid4().hex)
    clean = settings.model_copy(
        update={"client_id": "", "clean_start": True, "session_expiry_s": None, "manual_ack": False}
    )
    subs = [(topics.all_sessions, 1), (topics.charging_stats, 1), (probe, 1)]
    adopted = Adopted()
    try:
        async with asyncio.timeout(timeout), MqttClient(clean, subscriptions=subs) as c:
            await c.connected.wait()
            c.submit(probe, b"", qos=1)
            async for message in c.messages:
                topic = str(message.topic)
                if topic == probe:
                    break
                adopted.read(topics, topic, payload_bytes(message))
    except TimeoutError:
        log.warning("adopting retained state timed out; starting with what was read")
    return adopted
