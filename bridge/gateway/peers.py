"""Other gateways on the same base topic: who holds which charger, who answers, who cleans up.

Every gateway subscribes to `{b}/gateways/+/state` (presence, retained, with the will) and,
once another gateway shows up, to `{b}/devices/+` (device state, retained, naming the holder in
`gateway_id` and the holding connection's start in `connected_at`). From them it keeps only
what the three rules below need (docs/scaling.md):

- **who answers a device request**: the gateway holding the charger; when none does, one
  elected responder (the smallest online gateway id) answers `offline`, after a short grace
  that covers a hand-over in progress. A gateway alone answers at once, as always.
- **hand-over**: a device state naming another gateway with a newer connection makes this
  gateway let go of the charger silently (`Connections.hand_over`); an older one (or an
  `offline` overwriting our `online`) makes it publish its own state again, so the retained
  state always converges on the newest connection.
- **a dead gateway**: when a gateway's presence turns `offline` (its will), the elected
  responder subscribes to `{b}/devices/+` again, so the broker replays the retained states,
  and republishes those still naming the dead gateway `online` with `online: false`.

Memory per charger held elsewhere is one dict entry: physical id -> the holder's id, interned
(no payload is kept; the dead-gateway sweep reads the broker's retained copies instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from bridge.gateway.connections import Connections
from bridge.gateway.publishing import Publishing
from bridge.gateway.registry import Device, Registry
from bridge.gateway.stats import GatewayStats
from bridge.mqtt.payloads import DEVICE_ID_RE, DeviceState
from bridge.mqtt.topics import Topics

log = logging.getLogger(__name__)

REQUEST_GRACE_S = 0.5  # how long a non-holder waits for a hand-over before `offline` is sent
MAX_REMOTE_DEVICES = 1_000_000  # chargers held elsewhere that are remembered
MAX_GATEWAY_IDS = 4096  # distinct gateway ids interned / remembered as gone

Resubscribe = Callable[[str], Awaitable[Any]]


def _ms(iso: Any) -> int | None:
    """An ISO 8601 UTC time (`connected_at`) as integer milliseconds, or None."""
    if not isinstance(iso, str):
        return None
    try:
        return math.floor(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


class Peers:
    """Implements the rules above; fed by `observe` with every presence and device state
    message, asked by `answers` before a device request is served."""

    def __init__(
        self,
        gateway_id: str,
        topics: Topics,
        registry: Registry,
        publishing: Publishing,
        connections: Connections,
        stats: GatewayStats,
        *,
        grace_s: float = REQUEST_GRACE_S,
    ) -> None:
        self.gateway_id = gateway_id
        self.topics = topics
        self.registry = registry
        self.publishing = publishing
        self.connections = connections
        self.stats = stats
        self.grace_s = grace_s
        self.online: set[str] = set()  # other gateways whose presence is `online`
        self.gone: dict[str, None] = {}  # gateways seen `offline`, oldest first (bounded)
        self.holders: dict[int, str] = {}  # physical id -> other gateway holding it online
        self._ids: dict[str, str] = {}  # interned gateway ids
        # The MQTT client's `subscribe` (device states, once another gateway shows up) and
        # `resubscribe` (the broker replays the retained device states for a sweep).
        self.subscribe: Resubscribe | None = getattr(publishing.mqtt, "subscribe", None)
        self.resubscribe: Resubscribe | None = getattr(publishing.mqtt, "resubscribe", None)
        self.watching = False  # subscribed to `{b}/devices/+`
        self._sweep_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep_again = False
        self._news = asyncio.Event()  # set (and renewed) on a device state while one waits
        self._waiting = 0

    # ------------------------------------------------------------------ who answers

    @property
    def responder(self) -> str:
        """The gateway that answers requests for chargers no gateway holds."""
        return min(self.online | {self.gateway_id})

    def _elected(self) -> bool:
        return not self.online or self.gateway_id < min(self.online)

    def holds(self, physical_id: int | None) -> bool:
        dev = self.registry.devices.get(physical_id) if physical_id is not None else None
        return dev is not None and dev.online

    def held_elsewhere(self, physical_id: int | None) -> bool:
        holder = self.holders.get(physical_id) if physical_id is not None else None
        return holder is not None and holder in self.online

    async def answers(self, device_id: str) -> bool:
        """Whether this gateway answers a request for `device_id` (exactly one does)."""
        pid = int(device_id, 16) if DEVICE_ID_RE.match(device_id) else None
        if self.holds(pid) or not self.online:
            return True  # the holder; or alone, answering at once as a single gateway does
        if not self.held_elsewhere(pid):
            # A charger moving between gateways is held by none for a moment: wait for a
            # device state (ours comes back to us too) to settle it, or for the grace to end.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.grace_s
            self._waiting += 1
            try:
                while not (self.holds(pid) or self.held_elsewhere(pid)):
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await self._news.wait()
            finally:
                self._waiting -= 1
        if self.holds(pid):
            return True
        return not self.held_elsewhere(pid) and self._elected()

    # ------------------------------------------------------------------ MQTT in

    def observe(self, topic: str, payload: bytes) -> bool:
        """Take a presence or device state message; False for any other topic."""
        gateway = self.topics.parse_gateway_topic(topic)
        if gateway is not None:
            if gateway[1] == "state":
                self._presence(gateway[0], payload)
            return True
        device_id = self.topics.parse_device(topic)
        if device_id is not None:
            self._device_state(device_id, payload)
            return True
        return False

    def _intern(self, gateway_id: str) -> str:
        known = self._ids.get(gateway_id)
        if known is not None:
            return known
        if len(self._ids) < MAX_GATEWAY_IDS:
            self._ids[gateway_id] = gateway_id
        return gateway_id

    def _presence(self, gateway_id: str, payload: bytes) -> None:
        if gateway_id == self.gateway_id:
            return  # our own (or our will, replaced by `online` when we reconnect)
        if not payload:
            # Cleared: an operator forgot a gateway that will not come back (docs/scaling.md).
            self.online.discard(gateway_id)
            self.gone.pop(gateway_id, None)
            return
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            self.stats.peer_states_unreadable += 1
            return
        state = body.get("state")
        if state == "online":
            self.online.add(self._intern(gateway_id))
            self.gone.pop(gateway_id, None)
            self._watch()
            return
        was_online = gateway_id in self.online
        self.online.discard(gateway_id)
        self.gone[self._intern(gateway_id)] = None
        while len(self.gone) > MAX_GATEWAY_IDS:
            del self.gone[next(iter(self.gone))]
        held = [pid for pid, holder in self.holders.items() if holder == gateway_id]
        for pid in held:
            del self.holders[pid]
        if was_online:
            log.info(
                "gateway offline",
                extra={"gateway_id": gateway_id, "chargers": len(held), "sweeper": self.responder},
            )
        if not self.watching:
            self._watch()  # the subscription replays the retained states: the sweep
        elif was_online and self._elected():
            self._sweep()

    def _device_state(self, device_id: str, payload: bytes) -> None:
        if not DEVICE_ID_RE.match(device_id):
            return
        pid = int(device_id, 16)
        if self._waiting:
            self._news.set()
            self._news = asyncio.Event()
        if not payload:
            self.holders.pop(pid, None)  # cleared
            return
        try:
            body = json.loads(payload)
            holder = body["gateway_id"]
            online = body["online"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            self.stats.peer_states_unreadable += 1
            return
        if not isinstance(holder, str) or not isinstance(online, bool):
            self.stats.peer_states_unreadable += 1
            return
        dev = self.registry.devices.get(pid)
        mine = dev is not None and dev.online
        if holder == self.gateway_id:
            if mine:
                self.holders.pop(pid, None)  # it came to us from another gateway
                if not online:
                    self._restore(dev)  # marked offline for us (a sweep while we were away)
            elif online and pid not in self.holders:
                # We do not hold it: a state left from before a crash of ours (or the echo of
                # one since superseded, which costs one more `offline`).
                if dev is not None:
                    self._restore(dev)
                else:
                    self._republish_offline(device_id, payload)
            return
        if not online:
            self.holders.pop(pid, None)
            if mine:
                self._restore(dev)  # a stale offline from the gateway it left
            return
        if dev is not None:
            stale_claim = holder in self.gone  # a dead gateway's state: nobody holds it there
            if mine and (stale_claim or not self._newer(body.get("connected_at"), holder, dev)):
                self._restore(dev)  # ours is the newer connection
                return
            if mine:
                self.stats.chargers_handed_over += 1
                self.connections.hand_over(dev, holder)
            else:
                # What we know of it is stale: never republish it (it would name us).
                del self.registry.devices[pid]
        if holder in self.gone:
            if self._elected() and self._republish_offline(device_id, payload):
                self.stats.chargers_swept_offline += 1
            return
        if pid in self.holders or len(self.holders) < MAX_REMOTE_DEVICES:
            self.holders[pid] = self._intern(holder)

    def _newer(self, connected_at: Any, holder: str, dev: Device) -> bool:
        """Whether `holder`'s connection to the charger began after ours (ties: the larger
        gateway id wins)."""
        theirs = _ms(connected_at)
        if theirs is None:
            return False  # no time to compare (a gateway before v1.1): ours stands
        if dev.connected_at is None:
            return True
        return (theirs, holder) > (math.floor(dev.connected_at * 1000), self.gateway_id)

    def _restore(self, dev: Device | None) -> None:
        assert dev is not None
        self.publishing.device_state(dev)

    # ------------------------------------------------------------------ dead gateways

    def _republish_offline(self, device_id: str, payload: bytes) -> bool:
        """Publish a retained `online` device state again as `online: false`, the rest of it
        unchanged (no gateway keeps the payloads); True if it did."""
        try:
            state = DeviceState.model_validate_json(payload)
        except ValidationError:
            self.stats.peer_states_unreadable += 1
            return False
        if not state.online:
            return False
        offline = state.model_copy(update={"online": False})
        self.publishing.submit(self.topics.device(device_id), offline, retain=True)
        log.info(
            "charger shown offline for a gateway that does not hold it",
            extra={"device_id": device_id, "gateway_id": state.gateway_id},
        )
        return True

    def _watch(self) -> None:
        """Subscribe to the device states, from the first other gateway seen on."""
        if self.watching or self.subscribe is None:
            return
        self.watching = True
        loop = asyncio.get_running_loop()
        self._tasks.add(task := loop.create_task(self._subscribe(), name="peer-device-states"))
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(self) -> None:
        assert self.subscribe is not None
        try:
            await self.subscribe(self.topics.all_devices)
        except Exception as exc:
            log.warning("could not subscribe to device states", extra={"error": repr(exc)})

    def _sweep(self) -> None:
        """Have the broker replay every retained device state (one at a time)."""
        if self.resubscribe is None:
            return
        if self._sweep_task is not None and not self._sweep_task.done():
            self._sweep_again = True
            return
        self._sweep_task = asyncio.get_running_loop().create_task(
            self._replay(), name="dead-gateway-sweep"
        )

    async def _replay(self) -> None:
        assert self.resubscribe is not None
        while True:
            self._sweep_again = False
            try:
                await self.resubscribe(self.topics.all_devices)
            except Exception as exc:
                log.warning("could not replay device states", extra={"error": repr(exc)})
            if not self._sweep_again:
                return

    async def stop(self) -> None:
        tasks = [t for t in (self._sweep_task, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
