"""The gateway: frames in, replies out, events and states to MQTT, device commands.

`Gateway` wires units with one job each and keeps the surface `bridge.app`, capture and
metrics use:

- `connections.Connections`: the `LinkHandler`; binds frames to devices, writes, taps;
- `trust.Trust`: who may speak for a physical id (pins, allowlist) and how fast;
- `duties.Duties`: the replies the protocol requires at once (heartbeat, registration, time);
- `flows.Flows`: settlements (answered once the broker has the event) and card swipes;
- `commands.Commands`: the MQTT request API and the replies to our commands;
- `publishing.Publishing`: events and retained states;
- `loops.Loops`: `gateways/{gateway_id}/stats` and the idle sweep;
- `peers.Peers`: other gateways on the base topic (who answers, hand-over, dead gateways);
- `power.Power`: `adjust_power` and the site power cap (`site_power_limit_w`);
- `upgrade.Upgrades`: `upgrade_firmware` transfers.

Every frame is decoded once; that one result feeds the events, the responses and the taps.
"""

from __future__ import annotations

from typing import Any, Literal

from bridge.config import GatewaySettings
from bridge.gateway.clock import Clock, SystemClock
from bridge.gateway.commands import MAX_QUEUED_PER_DEVICE, Commands
from bridge.gateway.connections import Connections, FrameTap
from bridge.gateway.dispatcher import Dispatcher
from bridge.gateway.duties import Answers, Duties
from bridge.gateway.flows import Flows
from bridge.gateway.loops import Loops
from bridge.gateway.peers import Peers
from bridge.gateway.power import Power
from bridge.gateway.publishing import Publisher, Publishing
from bridge.gateway.registry import Registry
from bridge.gateway.stats import GatewayStats
from bridge.gateway.trust import PinStore, Trust
from bridge.gateway.upgrade import Upgrades
from bridge.links.base import Connection
from bridge.mqtt.payloads import CommandResponse
from bridge.mqtt.topics import Topics
from protocol import StreamItem

__all__ = ["MAX_QUEUED_PER_DEVICE", "FrameTap", "Gateway", "Publisher", "subscriptions"]


def subscriptions(topics: Topics) -> list[tuple[str, int]]:
    """What a gateway subscribes to from the start: other gateways' presence first, then
    device requests. Device states (`{b}/devices/+`) are added by `peers` once another gateway
    shows up, so a gateway alone costs nothing more than before."""
    return [(topics.all_gateway_states, 1), (topics.all_device_requests, 1)]


class Gateway:
    """Implements `LinkHandler` for every link; publishes through a `Publisher`."""

    def __init__(
        self,
        settings: GatewaySettings,
        mqtt: Publisher,
        topics: Topics,
        *,
        clock: Clock | None = None,
        pins: PinStore | None = None,
    ) -> None:
        """`pins`: where the pinned ICCIDs live (`bridge.app` passes the state dir's SQLite
        store); in memory when not given."""
        self.settings = settings
        self.mqtt = mqtt
        self.topics = topics
        self.gateway_id = settings.gateway_id
        self.clock = clock or SystemClock()
        self.registry = Registry(settings.max_devices)
        self.stats = GatewayStats()
        self.publishing = Publishing(mqtt, topics, settings.gateway_id)
        self.trust = Trust(settings, self.stats, self.publishing, self.clock, pins)
        self.connections = Connections(
            self.registry,
            self.stats,
            self.publishing,
            self.clock,
            self.trust,
            settings.debug_devices,
        )
        self.dispatcher = Dispatcher(
            self.connections.send_command,
            self.stats,
            timeout_s=settings.command_timeout_s,
            spacing_s=settings.command_spacing_s,
        )
        answers = Answers(self.connections)
        self.flows = Flows(settings, self.publishing, answers)
        self.duties = Duties(
            self.connections, self.publishing, self.stats, self.clock, self.flows, answers
        )
        self.commands = Commands(
            settings,
            self.registry,
            self.stats,
            self.publishing,
            self.dispatcher,
            self.flows,
            self.clock,
            self.trust,
        )
        self.loops = Loops(
            settings, self.registry, self.stats, self.publishing, self.connections, self.clock
        )
        self.power = Power(settings, self.registry, self.publishing, self.dispatcher, self.clock)
        self.upgrades = Upgrades(settings, self.publishing, self.dispatcher)
        self.peers = Peers(
            settings.gateway_id,
            topics,
            self.registry,
            self.publishing,
            self.connections,
            self.stats,
        )
        self.commands.peers = self.peers
        self.commands.power = self.power
        self.commands.upgrades = self.upgrades
        self.duties.power = self.power
        self.duties.upgrades = self.upgrades
        self.duties.dispatcher = self.dispatcher
        self.duties.on_status_only_changes = settings.port_status_on_change_only
        self.connections.on_upstream = self.duties.on_frame
        self.connections.on_reply = self.commands.on_reply
        self.connections.on_offline = self.dispatcher.device_gone

    @property
    def taps(self) -> list[FrameTap]:
        """Observers of every frame exchanged (capture, metrics); append or remove."""
        return self.connections.taps

    # ------------------------------------------------------------------ LinkHandler

    def connection_made(self, conn: Connection) -> None:
        self.connections.connection_made(conn)

    def connection_dropped(self, conn: Connection, reason: str) -> None:
        self.connections.connection_dropped(conn, reason)

    def connection_lost(self, conn: Connection) -> None:
        self.connections.connection_lost(conn)

    def data_received(self, conn: Connection, data: bytes) -> None:
        self.connections.data_received(conn, data)
        # What this read made is published and written now, not in a round at the next
        # loop turn (at ordinary rates a read is one frame: docs/performance.md, p-gw2).
        self.mqtt.send_queued()

    def items_received(self, conn: Connection, items: list[StreamItem], nbytes: int) -> None:
        self.connections.items_received(conn, items, nbytes)
        self.mqtt.send_queued()

    # ------------------------------------------------------------------ MQTT

    def gateway_state(self, state: Literal["online", "offline"]) -> None:
        self.publishing.gateway_state(state)

    async def on_mqtt_connect(self) -> None:
        """After every (re)connection the bridge and every device state are published again."""
        self.publishing.republish(self.registry)

    async def handle_request(
        self, topic: str, payload: bytes, properties: Any = None, *, retain: bool = False
    ) -> None:
        """A message on one of the gateway's `subscriptions`: presence and device states
        feed `peers`; device requests are served (by this gateway only if it answers)."""
        if self.peers.observe(topic, payload):
            return
        await self.commands.handle_request(topic, payload, properties, retain=retain)

    async def _request(self, device_id: str, command: str, payload: bytes) -> CommandResponse:
        return await self.commands.request(device_id, command, payload)

    # ------------------------------------------------------------------ background work

    async def stats_forever(self) -> None:
        await self.loops.stats_forever()

    async def idle_forever(self) -> None:
        await self.loops.idle_forever()

    def start(self) -> None:
        """Run the background loops as tasks (`bridge.app` runs the `*_forever` itself)."""
        self.loops.start()

    async def stop(self) -> None:
        await self.loops.stop()

    async def shutdown(self, flush_timeout_s: float = 5.0) -> None:
        """Publish every device offline and the bridge offline, then wait for the broker."""
        self.flows.stop()
        await self.power.stop()
        await self.peers.stop()
        for dev in self.registry.devices.values():
            if dev.online:
                self.connections.offline(dev, "shutdown")
        self.publishing.gateway_state("offline")
        await self.publishing.flush(flush_timeout_s)
