"""What the durable outbox costs; prints one JSON object.

Through a real Mosquitto (started here from the project's mosquitto.conf, as the tests do):
- `connected`: `--messages` event-sized messages (~400 B JSON) submitted in batches of
  `--batch` per event-loop turn (as the gateway does per socket read), every PUBACK awaited:
  messages/s with the in-memory `Outbox` and with `SqliteOutbox`;
- `outage_queue`: the same submitted while the broker is down (the cost of queueing, with
  SQLite the transaction per loop turn), then `outage_drain`: the broker started again, messages/s
  until every one is acknowledged;
- `paced_cpu_us_per_event`: a gateway at an ordinary rate, `--rate` events/s (1,000), each
  event two messages (an event and a retained state) submitted in its own loop turn: the
  process's CPU time (user + system) per event with the in-memory `Outbox` (the reference),
  `SqliteOutbox` with one transaction per loop turn (`commit_window_s=0`, as before group
  commit), with group commit as before 2026-12-02 evening (everything pending written a window
  after the first change) and as now (half-window ticks, only messages at least half a window
  old written); median of `--rounds` interleaved runs, and the share of messages written;
- `coalescing`: a heartbeat flood during an outage (`--devices` devices x 20 heartbeats, each one
  retained device state and three events): messages left queued with and without coalescing.

    python bench/outbox.py [--messages 20000] [--batch 10] [--devices 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.mqtt.client import MqttClient, MqttSettings
from bridge.mqtt.outbox import Outbox, SqliteOutbox
from tests.broker import Mosquitto

PAYLOAD = json.dumps(
    {
        "type": "power",
        "ts": "2026-11-26T09:00:00.000Z",
        "device_id": "04AB373B",
        "gateway_id": "bench",
        "command": 6,
        "message_id": 1234,
        "port": 1,
        "status": "charging",
        "order_no": "12345678123456781234567812345678",
        "duration_s": 600,
        "energy_kwh": 0.12,
        "power_w": 234.2,
        "max_power_w": 240.0,
        "min_power_w": 230.0,
        "avg_power_w": 235.0,
        "peak_power_w": 240.0,
        "voltage_v": 220.0,
        "current_a": 1.06,
        "temperature_c": 25.0,
        "port_temperature_c": None,
        "start_mode": "online",
    }
).encode()


async def submit_all(mqtt: MqttClient, n: int, batch: int) -> list[asyncio.Future[None]]:
    futures = []
    for i in range(0, n, batch):
        futures += [
            mqtt.submit(f"chargebridge/bench/{i % 100}", PAYLOAD) for _ in range(min(batch, n - i))
        ]
        await asyncio.sleep(0)  # one event-loop turn per batch
    return futures


async def connected(broker: Mosquitto, outbox: Outbox, n: int, batch: int) -> float:
    async with MqttClient(MqttSettings(url=broker.url), outbox=outbox) as mqtt:
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        start = time.perf_counter()
        await asyncio.gather(*await submit_all(mqtt, n, batch))
        return n / (time.perf_counter() - start)


async def outage(broker: Mosquitto, outbox: Outbox, n: int, batch: int) -> tuple[float, float]:
    async with MqttClient(MqttSettings(url=broker.url), outbox=outbox) as mqtt:
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        broker.stop()
        await asyncio.wait_for(mqtt.disconnected.wait(), 10)
        start = time.perf_counter()
        futures = await submit_all(mqtt, n, batch)
        outbox.flush()
        queue_rate = n / (time.perf_counter() - start)
        broker.start()
        await asyncio.wait_for(mqtt.wait_connected(), 60)
        start = time.perf_counter()
        await asyncio.gather(*futures)
        return queue_rate, n / (time.perf_counter() - start)


class WholeWindow(SqliteOutbox):
    """The group commit before the half-window ticks (main at b41c1e3): everything pending is
    written one window after the first change, however young."""

    def _schedule_flush(self, delay: float | None = None) -> None:
        super()._schedule_flush(self.commit_window_s if delay is None else delay)


WRITTEN: dict[str, list[float]] = {}  # variant -> share of messages written, per run


async def paced(
    broker: Mosquitto, outbox: Outbox, events: int, rate: float, name: str = ""
) -> float:
    """CPU µs per event, two messages per event, one event per loop turn at `rate`/s."""
    async with MqttClient(MqttSettings(url=broker.url), outbox=outbox) as mqtt:
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        loop = asyncio.get_running_loop()
        futures = []
        cpu = time.process_time()
        start = loop.time()
        for i in range(events):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            futures.append(mqtt.submit(f"chargebridge/bench/{i % 1000}/event", PAYLOAD))
            futures.append(mqtt.submit(f"chargebridge/bench/{i % 1000}/state", PAYLOAD[:300]))
        await asyncio.gather(*futures)
        if isinstance(outbox, SqliteOutbox):
            await outbox.stored()
        used = time.process_time() - cpu
    if isinstance(outbox, SqliteOutbox):
        WRITTEN.setdefault(name, []).append(outbox.rows_written / events / 2)
    outbox.close()
    return used / events * 1e6


def flood(outbox: Outbox, devices: int) -> int:
    for _ in range(20):
        for dev in range(devices):
            outbox.add(f"bench/devices/{dev:08X}", PAYLOAD[:300], retain=True)
            for kind in ("port", "port", "device"):
                outbox.add(f"bench/devices/{dev:08X}/event/{kind}", PAYLOAD)
    return len(outbox)


def best(runs: int, measure: Callable[[], float]) -> float:
    return max(measure() for _ in range(runs))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced: events/s")
    parser.add_argument("--events", type=int, default=3000, help="paced: events per run")
    parser.add_argument("--rounds", type=int, default=3, help="paced: interleaved runs")
    parser.add_argument("--paced-only", action="store_true")
    args = parser.parse_args()
    n, batch = args.messages, args.batch
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        try:
            variants: dict[str, Callable[[int], Outbox]] = {
                "memory_reference": lambda _: Outbox(),
                "sqlite_transaction_per_loop_turn": lambda k: SqliteOutbox(
                    Path(tmp) / f"t{k}.sqlite3", commit_window_s=0
                ),
                "sqlite_group_commit_whole_window": lambda k: WholeWindow(
                    Path(tmp) / f"w{k}.sqlite3"
                ),
                "sqlite_group_commit": lambda k: SqliteOutbox(Path(tmp) / f"g{k}.sqlite3"),
            }
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            for k in range(args.rounds):
                for name, make in variants.items():
                    cpu[name].append(await paced(broker, make(k), args.events, args.rate, name))
            paced_result = {
                "rate": args.rate,
                "events": args.events,
                "messages_per_event": 2,
                "runs": {name: [round(x, 1) for x in xs] for name, xs in cpu.items()},
                "median": {name: round(statistics.median(xs), 1) for name, xs in cpu.items()},
                "share_of_messages_written": {
                    name: [round(x, 3) for x in xs] for name, xs in WRITTEN.items()
                },
            }
            if args.paced_only:
                print(json.dumps({"paced_cpu_us_per_event": paced_result}))
                return
            memory_rate = await connected(broker, Outbox(), n, batch)
            sqlite_rate = await connected(broker, SqliteOutbox(Path(tmp) / "a.sqlite3"), n, batch)
            memory_queue, memory_drain = await outage(broker, Outbox(), n, batch)
            sqlite_queue, sqlite_drain = await outage(
                broker, SqliteOutbox(Path(tmp) / "b.sqlite3"), n, batch
            )
        finally:
            broker.stop()
        flood_sqlite = SqliteOutbox(Path(tmp) / "c.sqlite3")
        start = time.perf_counter()
        coalesced = flood(flood_sqlite, args.devices)
        flood_sqlite.flush()
        flood_s = time.perf_counter() - start
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_note": "measured on a shared machine; compare with the reference of this run",
        "messages": n,
        "batch_per_loop_turn": batch,
        "payload_bytes": len(PAYLOAD),
        "paced_cpu_us_per_event": paced_result,
        "connected_msgs_per_s": {"memory": round(memory_rate), "sqlite": round(sqlite_rate)},
        "outage_queue_msgs_per_s": {"memory": round(memory_queue), "sqlite": round(sqlite_queue)},
        "outage_drain_msgs_per_s": {"memory": round(memory_drain), "sqlite": round(sqlite_drain)},
        "coalescing": {
            "submitted": args.devices * 20 * 4,
            "queued_with": coalesced,
            "queued_without": flood(Outbox(coalesce_retained=False), args.devices),
            "sqlite_flood_msgs_per_s": round(args.devices * 20 * 4 / flood_s),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
