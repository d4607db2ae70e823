"""Background loops: the gateway's stats (`{b}/gateways/{gateway_id}/stats`) and the idle
sweep (deadlines of connections).

Each loop is one pass (`publish_stats`, `sweep_idle`) repeated forever, so tests run a pass
with an injected clock instead of waiting. `start()`/`stop()` run both as tasks for callers
without a TaskGroup; `bridge.app` runs `stats_forever`/`idle_forever` in its own.
"""

from __future__ import annotations

import asyncio

from bridge.config import GatewaySettings
from bridge.gateway.clock import Clock
from bridge.gateway.connections import Connections
from bridge.gateway.publishing import Publishing
from bridge.gateway.registry import Registry
from bridge.gateway.stats import GatewayStats


class Loops:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        stats: GatewayStats,
        publishing: Publishing,
        connections: Connections,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.stats = stats
        self.publishing = publishing
        self.connections = connections
        self.clock = clock
        self._last_stats: dict[str, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def publish_stats(self) -> bool:
        """Publish this gateway's stats if the counters changed since the last time; True if so."""
        self.stats.events_dropped = self.publishing.mqtt.dropped
        current = self.stats.counters(len(self.registry.conns), self.registry.online_count())
        if current == self._last_stats:
            return False
        gateway_id = self.publishing.gateway_id
        snapshot = self.stats.snapshot(
            current["connections"], current["devices_online"], gateway_id
        )
        self.publishing.submit(
            self.publishing.topics.gateway_stats(gateway_id), snapshot, retain=True
        )
        self._last_stats = current
        return True

    def sweep_idle(self) -> None:
        """Close TCP connections that sent no valid frame within `first_frame_timeout_s` or
        nothing valid for `idle_timeout`; on a serial line, where the line stays open, mark the
        silent devices offline instead."""
        idle = self.settings.idle_timeout
        first = self.settings.first_frame_timeout_s
        now = self.clock.monotonic()
        for cs in list(self.registry.conns.values()):
            if cs.conn.replaceable:
                if cs.conn.closed:
                    continue
                if not cs.framed and now - cs.opened > first:
                    cs.close_reason = "no_frame"
                    self.stats.connections_closed_no_frame += 1
                    cs.conn.close()
                elif now - cs.last_rx > idle:
                    cs.close_reason = "idle"
                    cs.conn.close()
                continue
            for pid in list(cs.devices):
                dev = self.registry.devices[pid]
                if dev.online and now - dev.last_rx > idle:
                    cs.devices.discard(pid)
                    self.connections.offline(dev, "idle")

    async def stats_forever(self) -> None:
        """Publish this gateway's stats when they changed, at most every `stats_interval`."""
        while True:
            self.publish_stats()
            await asyncio.sleep(self.settings.stats_interval)

    async def idle_forever(self) -> None:
        while True:
            s = self.settings
            await asyncio.sleep(min(s.idle_timeout / 4, s.first_frame_timeout_s / 4, 5.0))
            self.sweep_idle()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.stats_forever(), name="bridge-stats"),
            asyncio.create_task(self.idle_forever(), name="idle-sweeper"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
