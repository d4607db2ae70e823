"""Runs many simulated chargers against a gateway, over TCP or one shared serial line.

Per device there is no task and no thread: a small driver object, an `asyncio.Protocol` for its
TCP connection, and at most one loop timer (`call_at`) for the device's next deadline. Tens of
thousands of devices fit in one process. Device time runs `speed` times faster than the wall
clock; every protocol interval (heartbeat, 0x06, settlement retry, `link`) scales with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import serial_asyncio_fast

from protocol import BadFrame, Frame, StreamDecoder

from .device import DeviceTiming, SimulatedDevice, UserBehaviour
from .stats import FleetStats

log = logging.getLogger(__name__)

KINDS = ("2", "10", "16", "legacy", "mixed", "mixed-legacy")
"""Ports per device (2, 10, 16), legacy dual sockets (0x01/0x04, no 0x06), the 2/10/16 mix,
and the same mix with every fifth device a legacy dual socket."""

_MIX = (2, 2, 2, 10, 16)
_LEGACY_IN_MIX = 2
"""Index (mod 5) of the legacy device in the `mixed-legacy` mix: one dual socket of three."""


@dataclass(frozen=True, slots=True)
class TcpTarget:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> TcpTarget:
        """`HOST:PORT` (IPv6 as `[::1]:7054`)."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))


@dataclass(frozen=True, slots=True)
class SerialTarget:
    """A pyserial URL (`/dev/ttyUSB0`, `socket://host:port`, ...); all devices share it like
    extensions on one RS-485 line and answer only frames carrying their own physical ID."""

    url: str
    baudrate: int = 9600


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What to simulate. Times in `timing`/`users` are device seconds; back-off is wall-clock."""

    devices: int = 1
    kind: str = "2"
    speed: float = 1.0
    seed: int = 0
    ramp_per_s: float = 500.0
    auto_plug: bool = False
    timing: DeviceTiming = field(default_factory=DeviceTiming)
    users: UserBehaviour = field(default_factory=UserBehaviour)
    first_index: int = 0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_connecting: int = 256
    local_hosts: tuple[str, ...] = ()
    """Source addresses, used round-robin (e.g. 127.0.0.2, 127.0.0.3 to spread a big fleet
    over several addresses when the gateway limits connections per address)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.devices < 0 or self.speed <= 0:
            raise ValueError("devices must be >= 0 and speed > 0")

    def ports_of(self, index: int) -> int:
        """Port count of device `index`: fixed, or a 2/10/16 mix (mostly dual sockets)."""
        if self.kind == "legacy":
            return 2
        if self.kind not in ("mixed", "mixed-legacy"):
            return int(self.kind)
        return _MIX[index % 5]

    def legacy_of(self, index: int) -> bool:
        """Whether device `index` is a legacy (pre-2019) dual socket."""
        if self.kind == "mixed-legacy":
            return index % 5 == _LEGACY_IN_MIX
        return self.kind == "legacy"


class DeviceClock:
    """Device time = wall-clock (loop) time since start x speed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.loop, self.speed, self.t0 = loop, speed, loop.time()

    def now(self) -> float:
        return (self.loop.time() - self.t0) * self.speed

    def loop_time(self, device_time: float) -> float:
        return self.t0 + device_time / self.speed


class _Driver:
    """Moves one device's bytes and timer; the transport may be shared (serial bus)."""

    __slots__ = (
        "attempts",
        "device",
        "fleet",
        "index",
        "next_delay",
        "timer",
        "timer_when",
        "transport",
    )

    def __init__(self, index: int, device: SimulatedDevice, fleet: Fleet) -> None:
        self.index = index
        self.device = device
        self.fleet = fleet
        self.transport: asyncio.Transport | None = None
        # uvloop's call_at returns a plain Handle (no `when()`) for a past deadline, so the
        # deadline the timer was armed for is kept here.
        self.timer: asyncio.Handle | None = None
        self.timer_when = math.inf
        self.attempts = 0
        self.next_delay: float | None = None

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.fleet.stats.connected += 1
        self.fleet.stats.connects += 1
        self.device.connect(self.fleet.clock.now())
        self.pump()

    def detach(self) -> None:
        if self.transport is None:
            return
        self.transport = None
        self.fleet.stats.connected -= 1
        self.fleet.stats.disconnects += 1
        self.device.disconnect(self.fleet.clock.now())
        self.pump()

    def feed(self, frame: Frame) -> None:
        # The back-off restarts only once the server has talked: a server that accepts and
        # drops at once (connection limit) must not cause a reconnect storm.
        self.attempts = 0
        self.fleet.stats.frames_received += 1
        self.device.receive(frame, self.fleet.clock.now())
        self.pump()

    def on_timer(self) -> None:
        self.timer = None
        self.device.tick(self.fleet.clock.now())
        self.pump()

    def pump(self) -> None:
        """Write what the device produced, honour a reboot, re-arm the timer."""
        out = self.device.take_output()
        if out and self.transport is not None:
            self.transport.writelines(out)
        if self.device.reboot_at is not None and self.transport is not None:
            self.fleet.reboot(self)
        self.schedule()
        self.fleet.changed.set()

    def schedule(self) -> None:
        deadline = self.device.next_deadline()
        when = self.fleet.clock.loop_time(deadline) if deadline != math.inf else math.inf
        if self.timer is not None:
            if self.timer_when == when:
                return
            self.timer.cancel()
            self.timer = None
        if when != math.inf and not self.fleet.stopping:
            self.timer = self.fleet.loop.call_at(when, self.on_timer)
            self.timer_when = when

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _StreamProtocol(asyncio.Protocol):
    """Splits the incoming stream into frames and hands each to its device(s)."""

    def __init__(self, fleet: Fleet, drivers: dict[int, _Driver], owner: _Driver | None) -> None:
        self.fleet = fleet
        self.drivers = drivers
        self.owner = owner
        self.decoder = StreamDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio subclasses.
        self.transport = cast(asyncio.Transport, transport)
        for driver in self.drivers.values():
            driver.attach(self.transport)

    def data_received(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if isinstance(item, Frame):
                driver = self.drivers.get(item.physical_id)
                if driver is not None and driver.transport is not None:
                    driver.feed(item)
            elif isinstance(item, BadFrame):
                self.fleet.stats.bad_frames += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for driver in self.drivers.values():
            driver.detach()
        self.fleet.connection_lost(self)


class Fleet:
    """N simulated devices against one target; `async with Fleet(...) as fleet:` runs them."""

    def __init__(self, config: FleetConfig, target: TcpTarget | SerialTarget) -> None:
        self.config = config
        self.target = target
        self.stats = FleetStats(devices=config.devices)
        self.changed = asyncio.Event()
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self.clock = DeviceClock(self.loop, config.speed)
        self._rng = random.Random(config.seed)
        timing = config.timing
        if isinstance(target, SerialTarget):
            # No communication module on the bus: no ICCID and no `link` keepalive.
            timing = replace(timing, link_idle_s=math.inf)
        self.devices = [
            SimulatedDevice.create(
                config.first_index + i,
                ports=config.ports_of(config.first_index + i),
                seed=config.seed,
                stats=self.stats,
                timing=timing,
                users=config.users if config.auto_plug else None,
                iccid=not isinstance(target, SerialTarget),
                legacy=config.legacy_of(config.first_index + i),
            )
            for i in range(config.devices)
        ]
        self._drivers = [_Driver(i, d, self) for i, d in enumerate(self.devices)]
        self._protocols: set[_StreamProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting = asyncio.Semaphore(config.max_connecting)
        self._started = time.monotonic()

    async def __aenter__(self) -> Fleet:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        _raise_fd_limit(self.config.devices + 64)
        for driver in self._drivers:
            driver.schedule()
        if isinstance(self.target, SerialTarget):
            self._spawn(self._open_bus(), "simulator-serial-bus")
        else:
            self._spawn(self._ramp(), "simulator-ramp")

    async def stop(self) -> None:
        """Cancel pending connects, stop every timer and close every connection."""
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for driver in self._drivers:
            driver.stop()
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run before returning

    def snapshot(self) -> dict[str, Any]:
        """Counters and latency percentiles (wall-clock seconds) for reports and live views."""
        out = self.stats.as_dict(time_scale=self.config.speed)
        out["elapsed_s"] = round(time.monotonic() - self._started, 3)
        out["device_time_s"] = round(self.clock.now(), 1)
        return out

    def plug(self, index: int, port: int) -> None:
        """A user plugs a charger into `port` (0-based) of device `index`."""
        self._act(index, SimulatedDevice.plug, port)

    def unplug(self, index: int, port: int) -> None:
        self._act(index, SimulatedDevice.unplug, port)

    def swipe_card(self, index: int, port: int) -> None:
        self._act(index, SimulatedDevice.swipe_card, port)

    def _act(
        self, index: int, action: Callable[[SimulatedDevice, int, float], None], port: int
    ) -> None:
        driver = self._drivers[index]
        action(driver.device, port, self.clock.now())
        driver.pump()

    async def wait_until(self, predicate: Callable[[FleetStats], bool]) -> None:
        """Return once `predicate(stats)` holds (re-checked after every device event)."""
        while not predicate(self.stats):
            self.changed.clear()
            await self.changed.wait()

    # ------------------------------------------------------------- internals

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ramp(self) -> None:
        """Open the initial connections at `ramp_per_s` (pacing, not synchronisation)."""
        interval = 1.0 / self.config.ramp_per_s if self.config.ramp_per_s > 0 else 0.0
        start = self.loop.time()
        for i, driver in enumerate(self._drivers):
            delay = start + i * interval - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._connecting.acquire()
            self._spawn(self._connect(driver), f"simulator-connect-{i}")

    async def _connect(self, driver: _Driver) -> None:
        assert isinstance(self.target, TcpTarget)
        proto = _StreamProtocol(self, {driver.device.physical_id: driver}, driver)
        self._protocols.add(proto)
        sources = self.config.local_hosts
        local = (sources[driver.index % len(sources)], 0) if sources else None
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self.loop.create_connection(
                    lambda: proto, self.target.host, self.target.port, local_addr=local
                )
        except (OSError, TimeoutError) as exc:
            self._protocols.discard(proto)
            self.stats.connect_failures += 1
            why = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            self.stats.failed_connects.append((started, why))
            self.changed.set()
            log.debug("device %08X: connect failed: %s", driver.device.physical_id, exc)
            self._reconnect_later(driver)
        finally:
            self._connecting.release()

    async def _open_bus(self) -> None:
        assert isinstance(self.target, SerialTarget)
        drivers = {d.device.physical_id: d for d in self._drivers}
        proto = _StreamProtocol(self, drivers, None)
        self._protocols.add(proto)
        try:
            await serial_asyncio_fast.create_serial_connection(
                self.loop, lambda: proto, self.target.url, baudrate=self.target.baudrate
            )
        except (OSError, ValueError) as exc:
            self._protocols.discard(proto)
            self.stats.connect_failures += 1
            log.warning("serial %s: %s", self.target.url, exc)
            self._later(self.config.reconnect_max_s, self._open_bus, "simulator-serial-bus")

    def connection_lost(self, proto: _StreamProtocol) -> None:
        self._protocols.discard(proto)
        if self.stopping:
            return
        if proto.owner is None:
            self._later(self.config.reconnect_min_s, self._open_bus, "simulator-serial-bus")
        else:
            self._reconnect_later(proto.owner)

    def reboot(self, driver: _Driver) -> None:
        """0x87 answered: drop the link now and come back once the device has restarted."""
        device = driver.device
        assert device.reboot_at is not None
        transport = driver.transport
        delay = max(0.0, self.clock.loop_time(device.reboot_at) - self.loop.time())
        if isinstance(self.target, SerialTarget):
            driver.detach()
            if transport is not None:
                self.loop.call_later(delay, self._reattach, driver, transport)
        elif transport is not None:
            driver.next_delay = delay
            transport.close()

    def _reattach(self, driver: _Driver, transport: asyncio.Transport) -> None:
        if not self.stopping and not transport.is_closing():
            driver.attach(transport)

    def _reconnect_later(self, driver: _Driver) -> None:
        if driver.next_delay is not None:
            delay, driver.next_delay = driver.next_delay, None
        else:
            base = min(
                self.config.reconnect_max_s, self.config.reconnect_min_s * 2**driver.attempts
            )
            delay = base * self._rng.uniform(0.5, 1.0)
            driver.attempts += 1

        self._later(delay, lambda: self._connect_paced(driver), "simulator-reconnect")

    async def _connect_paced(self, driver: _Driver) -> None:
        await self._connecting.acquire()
        await self._connect(driver)

    def _later(self, delay: float, factory: Callable[[], Any], name: str) -> None:
        def run() -> None:
            if not self.stopping:
                self._spawn(factory(), name)

        self.loop.call_later(delay, run)


def _raise_fd_limit(wanted: int) -> None:
    """One socket per device: lift the soft open-files limit up to the hard limit if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
