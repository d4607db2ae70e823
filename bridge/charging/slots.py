"""Client-id slots: no event stays stranded in the broker session of a dead service instance.

Why: the service's MQTT session is persistent (no clean start), so the broker keeps queueing
QoS 1 messages for an instance that is gone for good, including its share of a shared
subscription. With one fixed client id per instance, a kill -9 that is never restarted would
strand that queue for the session's expiry (7 days by default).

Design (docs/deployment.md, "Failover"): on a PostgreSQL store the instances share a fixed set
of client ids, `{client_id}-slot-{k}` for k < `service_slots`. Slot k is *leased* by holding the
PostgreSQL session advisory lock (LOCK_SPACE, k) on a connection dedicated to that slot (a
connection holding two leases could not tell them apart: session advisory locks are
re-entrant). PostgreSQL releases the lock when that connection ends: at once when the process
dies (kill -9 closes its socket), and after its TCP keepalives (about 11 s, `KEEPALIVE_OPTIONS`)
when a whole machine vanishes.

* An instance starts by leasing the lowest free slot and connects under that client id
  (persistent session): a free slot that was used before comes with its queue.
* The table `service_slots` records every slot ever used, and, when slots are first used for
  a client id, the bare client id of the single service that ran before (slot -1), so its
  queue is drained once too. Every `slot_scan_interval_s`, each
  instance tries to lease the used slots nobody holds (an orphan). The one that succeeds
  connects an extra MQTT client under that client id (no clean start, so it gets the queue and
  the messages the dead one had received but not acknowledged), unsubscribes the session from
  the service's topics so no new messages are routed to it, and passes what the broker sends
  through the service's own batch handler (the exactly-once machinery skips whatever the dead
  instance had already applied). After `slot_idle_s` without a message it ends the session
  (a clean start with session expiry 0: the broker forgets it), deletes the row and releases
  the lock.
* A lease whose connection is lost (the database restarted, a network cut) stops the service
  with `SlotLost`: another instance may adopt the slot meanwhile, and two clients under one id
  would knock each other off the broker. The supervisor restarts it on a fresh lease.

SQLite (one instance) keeps the fixed client id and never uses this module.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from bridge.charging.store.base import StoreError
from bridge.mqtt.client import Message, MqttClient, MqttSettings

log = logging.getLogger("chargebridge.charging.slots")

# Server side (the PostgreSQL backend notices a vanished client machine: 5 + 2 * 3 s) and
# client side (we notice a vanished server) TCP keepalives of every lease connection.
KEEPALIVE_OPTIONS = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
)
CLIENT_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS service_slots ("
    " client_id TEXT NOT NULL, slot INTEGER NOT NULL, holder TEXT NOT NULL,"
    " leased_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (client_id, slot))"
)


class SlotLost(StoreError):
    """A lease's connection to PostgreSQL is gone: the service stops (see the module doc)."""


def lock_space(client_id: str) -> int:
    """The first key of the slots' advisory locks: one space per base client id, so several
    deployments (base topics) can share a database; positive, as pg_locks shows it."""
    return zlib.crc32(b"chargebridge-slots:" + client_id.encode()) & 0x7FFFFFFF


LEGACY_SLOT = -1  # the client id itself, as a service before slots used it


def slot_client_id(client_id: str, slot: int) -> str:
    """Slot k's MQTT client id; LEGACY_SLOT is the bare id of a service before slots."""
    return client_id if slot == LEGACY_SLOT else f"{client_id}-slot-{slot}"


@dataclass
class Lease:
    """One held slot: the connection whose life is the lease."""

    slot: int
    client_id: str
    conn: Any  # psycopg.Connection; the lock lives exactly as long as it does


class SlotBook:
    """The synchronous PostgreSQL side (called in a thread): lease, find orphans, retire."""

    def __init__(self, url: str, client_id: str, slots: int, holder: str) -> None:
        self.url = url
        self.client_id = client_id
        self.slots = slots
        self.holder = holder
        self.space = lock_space(client_id)
        self._scanner: Any = None  # holds no lock until it becomes a lease (then replaced)

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "--store postgresql:// needs psycopg: pip install 'chargebridge[postgres]'"
            ) from None
        try:
            return psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=10,
                options=KEEPALIVE_OPTIONS,
                **CLIENT_KEEPALIVES,
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the store for a slot lease: {exc}") from None

    def _scan_conn(self) -> Any:
        if self._scanner is None or self._scanner.closed:
            conn = self._connect()
            with conn.transaction():
                # Instances starting together: one creates the table (CREATE ... IF NOT
                # EXISTS alone may fail in the other) and one adds the row below.
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (self.space, -2))
                conn.execute(SCHEMA)
                # First use of slots for this client id: the session of the single service
                # that ran before (the bare client id) is drained once like a dead slot's.
                conn.execute(
                    "INSERT INTO service_slots SELECT %s, %s, 'before slots', %s "
                    "WHERE NOT EXISTS (SELECT 1 FROM service_slots WHERE client_id = %s)",
                    (self.client_id, LEGACY_SLOT, time.time(), self.client_id),
                )
            self._scanner = conn
        return self._scanner

    def _try(self, slot: int) -> Lease | None:
        """Lease `slot` if nobody holds it; the scanner connection becomes the lease's."""
        conn = self._scan_conn()
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (self.space, slot)).fetchone()
        if not (row and row[0]):
            return None
        self._scanner = None
        conn.execute(
            "INSERT INTO service_slots VALUES (%s, %s, %s, %s) ON CONFLICT (client_id, slot) "
            "DO UPDATE SET holder = EXCLUDED.holder, leased_at = EXCLUDED.leased_at",
            (self.client_id, slot, self.holder, time.time()),
        )
        return Lease(slot, slot_client_id(self.client_id, slot), conn)

    def lease_free(self) -> Lease | None:
        """The lowest slot nobody holds, leased and recorded as used; None when all are held."""
        try:
            for slot in range(self.slots):
                lease = self._try(slot)
                if lease is not None:
                    return lease
        except StoreError:
            raise
        except Exception as exc:  # psycopg.Error
            self.close()
            raise StoreError(f"cannot lease a client-id slot in the store: {exc}") from None
        return None

    def used(self) -> list[int]:
        rows = (
            self._scan_conn()
            .execute(
                "SELECT slot FROM service_slots WHERE client_id = %s ORDER BY slot",
                (self.client_id,),
            )
            .fetchall()
        )
        return [int(slot) for (slot,) in rows]

    def adopt_orphans(self, held: set[int]) -> list[Lease]:
        """Lease every used slot that nobody holds (not those in `held`, which are ours)."""
        leases: list[Lease] = []
        try:
            for slot in self.used():
                if slot not in held and (lease := self._try(slot)) is not None:
                    leases.append(lease)
        except StoreError:
            raise
        except Exception as exc:  # psycopg.Error: the database went away under the scan
            for lease in leases:
                self.release(lease)
            self.close()
            raise StoreError(f"cannot look for orphaned client-id slots: {exc}") from None
        return leases

    def retire(self, lease: Lease) -> None:
        """The slot's session is ended: forget it was used, then release it."""
        try:
            lease.conn.execute(
                "DELETE FROM service_slots WHERE client_id = %s AND slot = %s",
                (self.client_id, lease.slot),
            )
        finally:
            self.release(lease)

    @staticmethod
    def alive(lease: Lease) -> bool:
        try:
            lease.conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    @staticmethod
    def release(lease: Lease) -> None:
        """Closing the connection releases its lock (and is all a dead process does)."""
        with suppress(Exception):
            lease.conn.close()

    def close(self) -> None:
        if self._scanner is not None:
            with suppress(Exception):
                self._scanner.close()
            self._scanner = None


# Applies and commits a batch (raises if it cannot); the caller acknowledges it afterwards.
BatchHandler = Callable[[list[Message]], Awaitable[None]]


async def _no_handler(messages: list[Message]) -> None:
    raise RuntimeError("ServiceSlots.run() was not given the batch handler")


def wanted(store_url: str) -> bool:
    """Slots are for a shared (PostgreSQL) store; SQLite keeps the one fixed client id."""
    return store_url.split(":", 1)[0].lower() in ("postgresql", "postgres")


class ServiceSlots:
    """The slots unit of one service instance: `start()` leases its own slot (returns the
    client id to connect with), `run()` watches that lease and drains orphans (in the
    service's TaskGroup: a lost lease ends the service), `stop()` releases everything."""

    def __init__(
        self,
        book: SlotBook,
        mqtt: MqttSettings,
        subscriptions: Sequence[str],
        *,
        scan_interval_s: float = 5.0,
        idle_s: float = 5.0,
        batch_limit: int = 1000,
        batch_interval_s: float = 0.0,
        lease_wait_s: float = 30.0,
    ) -> None:
        """`mqtt`: the service's own settings (persistent session, manual acks), whose client
        id a drain replaces; `subscriptions`: the filters a drained session is taken off;
        the batch handler comes with `run()`."""
        self.book = book
        self.mqtt = mqtt
        self.subscriptions = list(subscriptions)
        self.handle: BatchHandler = _no_handler
        self.scan_interval_s = scan_interval_s
        self.idle_s = idle_s
        self.batch_limit = batch_limit
        self.batch_interval_s = batch_interval_s
        self.lease_wait_s = lease_wait_s
        self.own: Lease | None = None
        self.draining: dict[int, Lease] = {}
        self.drained = 0  # messages handled from adopted slots, for logs and tests
        self.retired: list[int] = []  # slots whose sessions this instance ended

    async def start(self) -> str:
        """Lease the lowest free slot, waiting up to `lease_wait_s` for one to free up."""
        deadline = time.monotonic() + self.lease_wait_s
        while (lease := await asyncio.to_thread(self.book.lease_free)) is None:
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"all {self.book.slots} client-id slots of {self.book.client_id} are "
                    "leased by running instances: raise service_slots (docs/deployment.md)"
                )
            await asyncio.sleep(1.0)
        self.own = lease
        log.info("leased MQTT client-id slot %d: %s", lease.slot, lease.client_id)
        return lease.client_id

    async def run(self, handle: BatchHandler) -> None:
        """Watch our lease; adopt and drain orphaned slots, each in its own task, through
        `handle` (the service's batch handler: applies and commits, raises if it cannot)."""
        self.handle = handle
        async with asyncio.TaskGroup() as tg:
            while True:
                await self.scan(tg)
                await asyncio.sleep(self.scan_interval_s)

    async def scan(self, tg: asyncio.TaskGroup) -> None:
        own = self.own
        assert own is not None, "start() first"
        if not await asyncio.to_thread(self.book.alive, own):
            raise SlotLost(
                f"lost the lease of MQTT client-id slot {own.slot} (the connection to the "
                "store ended); stopping so that no other instance shares the client id"
            )
        held = {own.slot, *self.draining}
        for lease in await asyncio.to_thread(self.book.adopt_orphans, held):
            log.warning(
                "adopting orphaned MQTT client-id slot %d (%s): draining its queue",
                lease.slot,
                lease.client_id,
            )
            self.draining[lease.slot] = lease
            tg.create_task(self._drain(lease), name=f"drain-slot-{lease.slot}")

    async def _drain(self, lease: Lease) -> None:
        """Take the slot's session over, stop its routing, handle its queue, end it."""
        settings = self.mqtt.model_copy(update={"client_id": lease.client_id})
        count = 0
        async with MqttClient(settings) as client:  # no subscriptions: the session has them
            await self._unsubscribe(client)
            batches = client.batches(self.batch_limit, self.batch_interval_s)
            while True:
                try:
                    async with asyncio.timeout(self.idle_s):
                        messages = await anext(batches)
                except TimeoutError:
                    if client.connected.is_set():
                        break
                    # Offline, the queue is still the broker's: wait for the reconnection.
                    batches = client.batches(self.batch_limit, self.batch_interval_s)
                    continue
                await self.handle(messages)
                for message in messages:
                    client.ack(message)
                count += len(messages)
                self.drained += len(messages)
        ender = settings.model_copy(
            update={"clean_start": True, "session_expiry_s": 0, "manual_ack": False}
        )
        async with MqttClient(ender) as client:
            await client.connected.wait()
        await asyncio.to_thread(self.book.retire, lease)
        del self.draining[lease.slot]
        self.retired.append(lease.slot)
        log.warning(
            "drained %d messages of MQTT client-id slot %d and ended its session",
            count,
            lease.slot,
        )

    async def _unsubscribe(self, client: MqttClient) -> None:
        """Once taken off the service's filters, the session gets no new messages; those
        already queued for it are still delivered."""
        while self.subscriptions:
            await client.connected.wait()
            try:
                await client.unsubscribe(self.subscriptions)
                return
            except Exception as exc:  # the connection dropped meanwhile: on the next one
                log.info("unsubscribing a drained slot failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Release every lease. A drain cut short keeps its row: another instance (or this
        one, restarted) adopts the slot again."""
        leases = [*self.draining.values(), *([self.own] if self.own else [])]
        for lease in leases:
            await asyncio.to_thread(self.book.release, lease)
        self.draining.clear()
        self.own = None
        await asyncio.to_thread(self.book.close)
