"""Composition root of every role: builds the parts and runs them in one TaskGroup.

`GatewayApp(settings).serve(ready=...)` serves the gateway until cancelled, `run_service` the
charging service; `run` (gateway + charging service in one process) and `demo` compose them
with their own parts. Gateway shutdown order: stop accepting devices, publish every device and
the gateway's presence offline, flush to the broker, close the device connections, disconnect,
close the durable outbox (what the broker did not take stays there for the next start). The charging
service disconnects, cancels the commands still waiting, then closes its store.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bridge import statedir
from bridge.capture import CaptureUnit
from bridge.charging.presence import ServicePresence, instance_id
from bridge.charging.service import (
    MAX_BATCH,
    ChargingService,
    default_instance_id,
    service_mqtt_settings,
    service_subscriptions,
)
from bridge.charging.settings import ChargingSettings
from bridge.charging.slots import BatchHandler, ServiceSlots, SlotBook
from bridge.charging.store import ChargingStore, StoreError, open_store, shared_url
from bridge.charging.store.sqlite import SqliteStore
from bridge.config import GatewaySettings
from bridge.errors import StartupError
from bridge.gateway.core import Gateway, subscriptions
from bridge.gateway.trust import PINS_FILENAME, SqlitePinStore
from bridge.homeassistant import HomeAssistantUnit
from bridge.links.serial import SerialLink
from bridge.links.tcp import TcpLink
from bridge.metrics import MetricsUnit
from bridge.mqtt.client import Message, MqttClient, MqttSettings, Will, payload_bytes
from bridge.mqtt.outbox import SqliteOutbox
from bridge.mqtt.payloads import GatewayState
from bridge.mqtt.topics import Topics
from bridge.webhooks.unit import webhook_units

log = logging.getLogger(__name__)

OUTBOX_FILENAME = "gateway-outbox.sqlite3"  # one gateway per state dir


def gateway_mqtt_settings(settings: GatewaySettings, topics: Topics) -> MqttSettings:
    """Clean session (stale device commands are not worth replaying) and the offline will."""
    return settings.mqtt_settings(
        client_id=f"chargebridge-gateway-{settings.gateway_id}",
        clean_start=True,
        will=Will(
            topic=topics.gateway_state(settings.gateway_id),
            payload=GatewayState(state="offline", gateway_id=settings.gateway_id).to_json(),
            retain=True,
        ),
    )


class GatewayApp:
    """One gateway process. As one of `--workers N` (bridge/workers.py) its listeners set
    SO_REUSEPORT (`reuse_port`) and its pins live in the workers' common file (`shared_pins`)."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        reuse_port: bool = False,
        shared_pins: Path | None = None,
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.shared_pins = shared_pins
        self.topics = Topics(settings.base_topic)
        self.tcp_links: list[TcpLink] = []
        self.serial_links: list[SerialLink] = []
        self.gateway: Gateway | None = None
        self.mqtt: MqttClient | None = None
        self.metrics: MetricsUnit | None = None
        self.homeassistant: HomeAssistantUnit | None = None
        self.capture: CaptureUnit | None = None

    @property
    def tcp_addresses(self) -> list[tuple[str, int]]:
        """Bound (host, port) of every TCP listener, valid once `ready` is set."""
        return [addr for link in self.tcp_links for addr in link.addresses]

    async def serve(self, *, ready: asyncio.Event | None = None) -> None:
        settings = self.settings
        statedir.prepare(settings.state_dir)
        outbox = SqliteOutbox(settings.state_dir / OUTBOX_FILENAME, settings.max_queued_messages)
        try:
            pins = SqlitePinStore(
                self.shared_pins or settings.state_dir / PINS_FILENAME,
                settings.max_devices,
                shared=self.shared_pins is not None,
            )
        except BaseException:
            outbox.close()
            raise
        try:
            await self._serve(outbox, pins, ready)
        finally:
            pins.close()
            outbox.close()

    async def _serve(
        self, outbox: SqliteOutbox, pins: SqlitePinStore, ready: asyncio.Event | None
    ) -> None:
        settings = self.settings
        mqtt = self.mqtt = MqttClient(
            gateway_mqtt_settings(settings, self.topics),
            subscriptions=subscriptions(self.topics),
            outbox=outbox,
            retain_as_published=True,  # a retained request is refused when published, too
            publish_interval_s=settings.publish_interval_s,
        )
        if len(outbox):
            log.info("publishing messages left in the outbox", extra={"queued": len(outbox)})
        gateway = self.gateway = Gateway(settings, mqtt, self.topics, pins=pins)
        mqtt.on_connect = gateway.on_mqtt_connect
        # The listeners before the broker: the gateway's `online` state (published on
        # connecting) means chargers can connect. Opened after it, a loaded machine let a
        # client see `online` and be refused (tests/security/test_hostile_input.py did).
        # What chargers send before the broker is there waits in the outbox.
        try:
            for host, port in settings.tcp_listeners:
                link = TcpLink(
                    gateway,
                    host,
                    port,
                    max_connections_per_ip=settings.max_connections_per_ip,
                    max_write_buffer=settings.max_write_buffer,
                    reuse_port=self.reuse_port,
                )
                await link.start()  # OSError (port taken) propagates unwrapped
                self.tcp_links.append(link)
        except BaseException:
            for link in self.tcp_links:
                link.stop_accepting()
            raise
        async with mqtt:
            try:
                async with asyncio.TaskGroup() as tg:
                    for url in settings.serial:
                        serial = SerialLink(
                            gateway,
                            url,
                            baudrate=settings.serial_baudrate,
                            max_write_buffer=settings.max_write_buffer,
                        )
                        self.serial_links.append(serial)
                        tg.create_task(serial.run(), name=f"serial {url}")
                    tg.create_task(gateway.stats_forever(), name="bridge-stats")
                    tg.create_task(gateway.idle_forever(), name="idle-sweeper")
                    tg.create_task(self._requests(mqtt, gateway, tg), name="device-requests")
                    for name, unit in self._units(gateway, mqtt):
                        tg.create_task(unit, name=name)
                    if self.metrics is not None:
                        await self.metrics.ready.wait()
                    log.info(
                        "gateway running",
                        extra={"gateway_id": settings.gateway_id, "tcp": self.tcp_addresses},
                    )
                    if ready is not None:
                        ready.set()
            finally:
                await self._shutdown(gateway)

    def _units(
        self, gateway: Gateway, mqtt: MqttClient
    ) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The self-contained units (docs/integrations.md), each with its own MQTT connection
        except metrics, which reads the gateway's outbox depth."""
        settings = self.settings
        self.capture = CaptureUnit(settings, gateway)
        units: list[tuple[str, Coroutine[Any, Any, None]]] = [("capture", self.capture.run())]
        if settings.homeassistant:
            self.homeassistant = HomeAssistantUnit(settings)
            units.append(("homeassistant", self.homeassistant.run()))
        if settings.metrics_address is not None:
            self.metrics = MetricsUnit(settings, gateway, mqtt)
            units.append(("metrics", self.metrics.run()))
        return units

    async def _requests(self, mqtt: MqttClient, gateway: Gateway, tg: asyncio.TaskGroup) -> None:
        async for message in mqtt.messages:
            tg.create_task(
                gateway.handle_request(
                    str(message.topic),
                    payload_bytes(message),
                    message.properties,
                    retain=bool(message.retain),
                )
            )

    async def _shutdown(self, gateway: Gateway) -> None:
        for link in self.tcp_links:
            link.stop_accepting()
        with suppress(Exception):
            await gateway.shutdown()
        for cs in list(gateway.registry.conns.values()):
            cs.conn.close()
        for serial in self.serial_links:
            serial.close()
        log.info("gateway stopped")


async def run_gateway(settings: GatewaySettings, *, ready: asyncio.Event | None = None) -> None:
    """Serve the gateway until cancelled."""
    await GatewayApp(settings).serve(ready=ready)


async def run_service(settings: ChargingSettings, *, ready: asyncio.Event | None = None) -> None:
    """Run the charging service until cancelled; `ready` is set once connected and current.

    The state dir is locked before the store is opened or anything connects: a second service
    on it stops with one line instead of knocking this one's fixed client id off the broker.
    On a PostgreSQL store any number of instances run (docs/scaling.md): the lock is then
    the instance's (`--instance-id`; its client id is a leased slot's), and `instance_id`
    is set."""
    shared = shared_url(settings.store)
    if not settings.instance_id:
        default = default_instance_id(shared, settings.gateway_id)
        settings = settings.model_copy(update={"instance_id": default})
    role = f"service-{settings.instance_id}" if shared else "service"
    with statedir.locked(settings.state_dir, role):
        await _run_service(settings, ready)


@contextmanager
def store_readable(settings: ChargingSettings) -> Iterator[None]:
    """A store file SQLite cannot read (at open, or when its state is loaded) is a one-line
    `StartupError` naming the file and the fix."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        url = settings.store
        where = url.removeprefix("sqlite://") if url.startswith("sqlite:///") else None
        where = where or str(settings.state_dir / SqliteStore.FILENAME)
        raise StartupError(
            f"the charging store {where} cannot be read ({exc}): restore it from a backup, or"
            " move it away to start empty (the service then adopts what the broker retains)"
        ) from None


async def _run_service(settings: ChargingSettings, ready: asyncio.Event | None) -> None:
    # In a thread: quick_check of a large file, or waiting for a PostgreSQL store's lock,
    # must not stall a gateway in the same process (`run`).
    limits = settings.dedupe_limits()
    with store_readable(settings):
        store = await asyncio.to_thread(open_store, settings.store, settings.state_dir, limits)
    subscriptions = service_subscriptions(Topics(settings.base_topic), shared=store.shared)
    mqtt_settings = service_mqtt_settings(settings, shared=store.shared)
    slots = service_slots(settings, mqtt_settings, subscriptions) if store.shared else None
    try:
        if slots is not None:  # a shared store: lease a client-id slot (charging/slots.py)
            client_id = await slots.start()
            mqtt_settings = mqtt_settings.model_copy(update={"client_id": client_id})
        mqtt = MqttClient(mqtt_settings, subscriptions=subscriptions)
        with store_readable(settings):
            service = ChargingService(settings, store, mqtt)  # loads the sessions
    except BaseException:
        store.close()
        if slots is not None:
            await slots.stop()
        raise
    mqtt.on_connect = service.on_connect
    try:
        async with mqtt, asyncio.TaskGroup() as tg:
            tg.create_task(service.consume(), name="charging-consume")
            tg.create_task(service.stats_loop(), name="charging-stats")
            tg.create_task(service.cleanup_loop(), name="charging-cleanup")
            tg.create_task(watch_store(store, settings.store_check_interval_s))
            for name, unit in webhook_units(settings):  # --webhook: docs/integrations.md
                tg.create_task(unit, name=name)
            await mqtt.connected.wait()
            # `{b}/charging/state` online only once the service is connected (docs/scaling.md)
            presence = ServicePresence(settings, instance_id(settings))
            tg.create_task(presence.run(), name="charging-presence")
            if slots is not None:
                tg.create_task(slots.run(drained_by(service)), name="charging-slots")
            log.info("charging service ready on %s", mqtt.settings.redacted_url())
            if ready is not None:
                ready.set()
    except* StoreError as group:
        raise group.exceptions[0] from None  # one line, exit 1 (commands.common.run_role)
    finally:
        await service.stop()
        store.close()
        if slots is not None:  # after the disconnect: nobody may adopt a slot still in use
            await slots.stop()


def service_slots(
    settings: ChargingSettings, mqtt: MqttSettings, subscriptions: list[tuple[str, int]]
) -> ServiceSlots:
    """The client-id slots unit of an instance on a shared (PostgreSQL) store."""
    book = SlotBook(
        settings.store, settings.client_id, settings.service_slots, settings.instance_id
    )
    return ServiceSlots(
        book,
        mqtt,
        [topic for topic, _ in subscriptions],
        scan_interval_s=settings.slot_scan_interval_s,
        idle_s=settings.slot_idle_s,
        batch_limit=MAX_BATCH,
        batch_interval_s=settings.batch_interval_s,
    )


def drained_by(service: ChargingService) -> BatchHandler:
    """A drained slot's messages take the service's own path (acknowledged by the slot's
    client after the commit)."""

    async def handle(messages: list[Message]) -> None:
        if service.state.shared is not None:
            # It acknowledges through the service's own client, which knows none of these
            # messages (a no-op); the slot's client acknowledges them after this returns.
            await service.handle_shared(messages)
        else:
            service.handle_batch(messages)

    return handle


async def watch_store(store: ChargingStore, interval: float) -> None:
    """End the service when its store is gone (a deleted or replaced SQLite file): writing
    on would lose every later commit at the next start."""
    while True:
        await asyncio.sleep(interval)
        try:
            store.check()
        except StoreError as exc:
            log.error("%s; stopping the charging service", exc)
            raise
