"""Read back-pressure: device connections stop being read while MQTT is far behind.

Every frame read turns into messages queued for the broker (about ten for a charger's
registration and first heartbeat). When thousands of chargers connect at once, reading them
all as fast as the sockets deliver queues a hundred thousand messages in memory, and the heap
that burst grows to is not given back afterwards (docs/performance.md, "Memory per charger").
So while the broker connection is up and more than `pause_at` messages wait for it, the TCP
connections are not read (their bytes wait in the kernel, TCP flow control slows the
chargers); they are read again once the backlog is below `resume_at`. While the broker is
unreachable nothing drains, so reading continues: devices are still answered and the bounded
outbox drops the oldest events, as before. Time spent paused does not count towards a
connection's `first_frame_timeout_s` or `idle_timeout` (its frames are waiting for us).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bridge.gateway.clock import Clock
from bridge.gateway.registry import Registry

log = logging.getLogger(__name__)

PAUSE_AT = 5_000  # messages queued for the broker
RESUME_AT = 1_000
CHECK_S = 0.05


def backlog(mqtt: Any) -> int:
    """Messages waiting for a connected broker; 0 when it is not connected (nothing drains).
    Duck-typed on `MqttClient.queued` and `.connected`; a publisher without them has none."""
    connected = getattr(mqtt, "connected", None)
    if isinstance(connected, asyncio.Event) and not connected.is_set():
        return 0
    queued = getattr(mqtt, "queued", 0)
    return queued if isinstance(queued, int) else 0


class ReadGate:
    """Pauses and resumes reading on every TCP connection of the registry."""

    def __init__(
        self,
        registry: Registry,
        mqtt: Any,
        clock: Clock,
        pause_at: int = PAUSE_AT,
        resume_at: int = RESUME_AT,
        check_s: float = CHECK_S,
    ) -> None:
        self.registry = registry
        self.mqtt = mqtt
        self.clock = clock
        self.pause_at = pause_at
        self.resume_at = resume_at
        self.check_s = check_s
        self.paused = False
        self.paused_at = 0.0  # clock.monotonic() when reading was paused
        self.pauses = 0  # how often reading was paused, for tests and logs

    def check(self) -> None:
        """After a read: pause every connection when the backlog is over `pause_at`."""
        if self.paused:
            return
        queued = backlog(self.mqtt)
        if queued < self.pause_at:
            return
        self.paused = True
        self.paused_at = self.clock.monotonic()
        self.pauses += 1
        for cs in self.registry.conns.values():
            if cs.conn.replaceable:
                cs.conn.pause_reading()
        log.debug("MQTT backlog high, reading devices paused", extra={"queued": queued})
        asyncio.get_running_loop().call_later(self.check_s, self.poll)

    def poll(self) -> None:
        """While paused, every `check_s` (run by the loop; tests call it): resume below
        `resume_at`."""
        if not self.paused:
            return
        if backlog(self.mqtt) > self.resume_at:
            asyncio.get_running_loop().call_later(self.check_s, self.poll)
            return
        self.paused = False
        held = self.clock.monotonic() - self.paused_at
        for cs in self.registry.conns.values():
            if cs.conn.replaceable:
                cs.opened += held
                cs.last_rx += held
                cs.conn.resume_reading()
