"""The charging service alone: gateway events in, retained session states out; prints one
JSON object.

A raw paho-mqtt publisher plays the gateway: it publishes `event/port` power events (the
gateway's exact payload, ~480 bytes) for 1,000 sessions round-robin at QoS 1, paced at each
phase's rate (0 = as fast as the broker takes them). Charging service processes (`python -m
bridge service`) turn them into retained `{b}/sessions/{id}` states that a QoS 1 subscriber
watches. Per phase: `delivered_per_s` (events whose state, or a newer one of the same
session, was seen, per second from the first publish to the last arrival), send -> state
latency, and the services' CPU time and bytes written to disk per event (from /proc, summed
over the instances). The reference, in the same run through the same broker: raw paho
publishing as many messages to a QoS 1 subscriber.

Configurations side by side in one run (`--configs`, STORE:INSTANCES): SQLite (the default
file, one instance), PostgreSQL with one instance, and PostgreSQL with two instances on one
store (`--instance-id`, shared subscriptions: the events are split between them). PostgreSQL
is a private cluster (tests/postgres.py, fsync on); its bytes written are the database
server's, not the service's, so that column covers SQLite only.

`floor:1` runs `bench/_service_floor.py` instead of the service: the least a hand-written
Python service does with the same parts and guarantees (paho, SQLite at `synchronous=FULL`,
acknowledgement after the commit, fingerprints, the retained session state): the floor of
the service's CPU per event, in the same run.

Failover (`--failover`, on PostgreSQL with two instances): a paced stream of power events
(`FAILOVER_RATE`/s), one instance killed with SIGKILL in the middle and never restarted, the
stream going on for `FAILOVER_AFTER_S` more seconds; its reference, in the same run, is the
same stream with no instance killed. Reported: from the kill (or that moment) until the
statistics (kept in the store, counting both instances) show every published event processed
(`kill_to_all_processed_s`; the dead instance's share waits in its broker session until the
survivor adopts its client-id slot and drains it: bridge/charging/slots.py), and the same
from the end of the stream.

    .venv/bin/python bench/service_stage.py [--quick] [--configs sqlite:1,postgresql:1,postgresql:2]
        [--failover | --no-failover]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _harness import (
    PYTHON,
    Counter,
    Procs,
    SessionStates,
    Watch,
    cpu_times,
    emit,
    machine,
    paho_reference,
    percentile,
    written_bytes,
)

SESSIONS = 1000
FLOOR = Path(__file__).resolve().with_name("_service_floor.py")
FAILOVER_RATE = 200  # events/s during the failover run: within what two instances keep up with
FAILOVER_BEFORE_S = 6.0  # the stream runs so long before the kill
FAILOVER_AFTER_S = 3.0  # and so long after it
SLOT_SCAN_S = 5.0  # the default slot_scan_interval_s: the failover figure includes it


def order_no(index: int) -> str:
    return (0xB0 << 120 | index).to_bytes(16, "big").hex().upper()


def device_id(index: int) -> str:
    return f"{0x04100000 + index:08X}"


def power_event(index: int, duration: int) -> bytes:
    return json.dumps(
        {
            "ts": "2026-11-26T10:00:00.000Z",
            "device_id": device_id(index),
            "gateway_id": "bench",
            "command": 6,
            "message_id": duration % 65536,
            "type": "power",
            "port": 1,
            "status": "charging",
            "status_code": 1,
            "order_no": order_no(index),
            "duration_s": duration,
            "energy_kwh": duration / 100,
            "power_w": 230.0,
            "max_power_w": 250.0,
            "min_power_w": 210.0,
            "avg_power_w": 230.0,
            "peak_power_w": 260.0,
            "voltage_v": 221.2,
            "current_a": 1.05,
            "temperature_c": 9.0,
            "port_temperature_c": 9.5,
            "start_mode": "online",
            "start_mode_code": 1,
        }
    ).encode()


def usage(pids: list[int]) -> tuple[float, float, int]:
    """(user s, system s, bytes written) summed over processes."""
    times = [cpu_times(pid) for pid in pids]
    return (
        sum(t[0] for t in times),
        sum(t[1] for t in times),
        sum(written_bytes(pid) for pid in pids),
    )


def run_phase(
    mqtt_port: int, pids: list[int], states: SessionStates, rate: int, count: int, first: int
) -> dict[str, Any]:
    import paho.mqtt.client as paho

    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"stage-{rate}")
    window = threading.Semaphore(100)  # as the gateway's client: 100 unacknowledged
    pub.max_inflight_messages_set(100)
    pub.on_publish = lambda *a: window.release()
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    frames = [(k % SESSIONS, first + k // SESSIONS) for k in range(count)]
    payloads = [
        (f"chargebridge/devices/{device_id(i)}/event/port", power_event(i, d)) for i, d in frames
    ]
    sent: list[float] = []
    before = usage(pids)
    start = time.monotonic()
    for k, (topic, payload) in enumerate(payloads):
        if rate:
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        window.acquire()
        sent.append(time.monotonic())
        pub.publish(topic, payload, qos=1)
    states.wait_for([(order_no(i), d) for i, d in frames[-SESSIONS:]], 120)
    after = usage(pids)
    pub.loop_stop()
    pub.disconnect()
    latencies = []
    end = start
    for (i, d), t in zip(frames, sent, strict=True):
        arrived = states.arrival((order_no(i), d))
        if arrived is not None:
            latencies.append(arrived - t)
            end = max(end, arrived)
    return {
        "rate": rate or "max",
        "events": count,
        "delivered": len(latencies),
        "delivered_per_s": round(len(latencies) / (end - start), 1) if end > start else None,
        "latency_ms": {
            "p50": round((percentile(latencies, 50) or 0) * 1000, 2),
            "p99": round((percentile(latencies, 99) or 0) * 1000, 2),
        },
        "service_cpu_us_per_event": {
            "user": round((after[0] - before[0]) / count * 1e6, 1),
            "system": round((after[1] - before[1]) / count * 1e6, 1),
        },
        "service_written_bytes_per_event": round((after[2] - before[2]) / count),
    }


def start_services(
    procs: Procs, mqtt_port: int, store_args: list[str], instances: int, *extra: str
) -> list[subprocess.Popen[bytes]]:
    """`instances` service processes on one store; ids `bench-{k}` when there are several."""
    if instances == 1:
        return [procs.service(mqtt_port, *store_args, *extra)]
    services = []
    for k in range(instances):
        args = [
            PYTHON, "-m", "bridge", "service",
            "--mqtt", f"mqtt://127.0.0.1:{mqtt_port}",
            "--state-dir", str(procs.tmp / f"service{k}"),
            "--log-level", "warning",
            "--event-logging", "false",
            "--instance-id", f"bench-{k}",
            *store_args,
            *extra,
        ]  # fmt: skip
        services.append(procs.spawn(args, f"service{k}"))
    return services


def wait_stats(mqtt_port: int) -> None:
    """The services publish their statistics once subscribed: their queues exist from then."""
    stats = Counter()
    stats_watch = Watch(mqtt_port, "chargebridge/charging/stats", stats, qos=1)
    stats.wait(1, 60)
    stats_watch.close()


def run_config(
    store: str, store_args: list[str], instances: int, phases: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """All phases against `instances` service processes on one store, through a fresh broker."""
    with Procs() as procs:
        mqtt_port = procs.mosquitto()
        if store == "floor":
            floor = [PYTHON, str(FLOOR), "--port", str(mqtt_port), "--state-dir", str(procs.tmp)]
            services = [procs.spawn(floor, "floor")]
        else:
            services = start_services(procs, mqtt_port, store_args, instances)
        states = SessionStates()
        watch = Watch(mqtt_port, "chargebridge/sessions/+", states, qos=1)
        wait_stats(mqtt_port)
        if instances > 1:
            time.sleep(2.0)  # the others subscribe as well (no event announces it)
        results = []
        first = 1
        for rate, count in phases:
            ours = run_phase(mqtt_port, [p.pid for p in services], states, rate, count, first)
            first += count // SESSIONS + 1
            ref = paho_reference(mqtt_port, count, rate=rate or None)
            ours["reference_paho"] = ref
            if ours["delivered_per_s"]:
                ours["ratio_to_reference"] = round(ours["delivered_per_s"] / ref["msgs_per_s"], 3)
            ours["store"] = store
            ours["instances"] = instances
            results.append(ours)
        watch.close()
    return results


class Processed:
    """The newest `total_events_processed` of the retained statistics, and when it came."""

    PATTERN = re.compile(rb'"total_events_processed":(\d+)')

    def __init__(self) -> None:
        self.value = 0
        self.cond = threading.Condition()

    def __call__(self, topic: str, payload: bytes, now: float) -> None:
        found = self.PATTERN.search(payload)
        if found:
            with self.cond:
                self.value = int(found.group(1))
                self.cond.notify_all()

    def wait(self, n: int, timeout: float) -> float | None:
        """The time `n` was reached, or None (then `value` tells how far it got)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.value >= n, timeout):
                return None
        return time.monotonic()


def run_failover(store_args: list[str], kill: bool = True) -> dict[str, Any]:
    """Two instances on one PostgreSQL store under a paced stream; one killed for good
    (`kill`), or none (the reference: how long the stream takes to be processed anyway)."""
    with Procs() as procs:
        mqtt_port = procs.mosquitto()
        services = start_services(procs, mqtt_port, store_args, 2, "--stats-interval", "0.2")
        wait_stats(mqtt_port)
        time.sleep(2.0)  # both subscribed (no event announces it)
        processed = Processed()
        watch = Watch(mqtt_port, "chargebridge/charging/stats", processed, qos=1)
        time.sleep(0.5)
        base = processed.value
        import paho.mqtt.client as paho

        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="failover-load")
        window = threading.Semaphore(100)
        pub.max_inflight_messages_set(100)
        pub.on_publish = lambda *a: window.release()
        pub.connect("127.0.0.1", mqtt_port)
        pub.loop_start()
        total = int(FAILOVER_RATE * (FAILOVER_BEFORE_S + FAILOVER_AFTER_S))
        kill_at = int(FAILOVER_RATE * FAILOVER_BEFORE_S)
        killed = end = 0.0
        start = time.monotonic()
        for k in range(total):
            delay = start + k / FAILOVER_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if k == kill_at:
                if kill:
                    services[1].send_signal(signal.SIGKILL)
                killed = time.monotonic()
            i, d = k % SESSIONS, 1 + k // SESSIONS
            window.acquire()
            pub.publish(f"chargebridge/devices/{device_id(i)}/event/port", power_event(i, d), qos=1)
        end = time.monotonic()
        done = processed.wait(base + total, 120)
        pub.loop_stop()
        pub.disconnect()
        watch.close()
        drained = survivor_drains(procs.tmp / "service0.log", wait=kill)
        return {
            "instances": 2,
            "killed": kill,
            "rate": FAILOVER_RATE,
            "events": total,
            "killed_after_s": round(killed - start, 2),
            "processed": processed.value - base,
            "kill_to_all_processed_s": round(done - killed, 2) if done else None,
            "stream_end_to_all_processed_s": round(done - end, 2) if done else None,
            "slot_scan_interval_s": SLOT_SCAN_S,
            "drained_by_survivor": drained,  # slot -> messages; -1: the pre-slots client id
        }


def survivor_drains(log: Path, wait: bool) -> dict[str, int]:
    """Messages per drained slot, from the survivor's log; with `wait`, until slot 1's drain
    (which ends `slot_idle_s` after the last message) has logged its line."""
    pattern = re.compile(r"drained (\d+) messages of MQTT client-id slot (-?\d+)")
    deadline = time.monotonic() + 60
    while True:
        found = pattern.findall(log.read_text(errors="replace")) if log.exists() else []
        drained = {slot: int(n) for n, slot in found}
        if not wait or "1" in drained or time.monotonic() > deadline:
            return drained
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="shorter phases (5 s; 10,000 events flat out)"
    )
    parser.add_argument(
        "--configs",
        default="sqlite:1,postgresql:1,postgresql:2",
        help="comma-separated STORE:INSTANCES: sqlite:1 (the default file store), "
        "floor:1 (bench/_service_floor.py, the CPU floor), "
        "postgresql:N (N instances on a private cluster from tests/postgres.py, fsync on; "
        "needs the postgres extra)",
    )
    parser.add_argument(
        "--failover",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the failover time (two instances on PostgreSQL, one killed)",
    )
    parser.add_argument(
        "--rates",
        default="1000,5000,max",
        help="comma-separated phases, frames/s or max (e.g. --rates 1000: CPU per event at an "
        "ordinary rate only)",
    )
    args = parser.parse_args()
    seconds = 5 if args.quick else 10
    phases = [(1000, 1000 * seconds), (5000, 5000 * seconds), (0, 10000 if args.quick else 30000)]
    wanted = {0 if r == "max" else int(r) for r in args.rates.split(",")}
    phases = [(rate, count) for rate, count in phases if rate in wanted]
    results: dict[str, list[dict[str, Any]]] = {}
    failover: dict[str, Any] | None = None
    configs = [c.split(":") for c in args.configs.split(",") if c]
    for store, n in configs:
        if (store, n) not in (("sqlite", "1"), ("floor", "1")) and (
            store != "postgresql" or not n.isdigit()
        ):
            parser.error(f"unknown configuration {store}:{n} (sqlite:1, floor:1 or postgresql:N)")
    cluster = None
    try:
        for store, n in configs:
            if store in ("sqlite", "floor"):
                results[f"{store}:{n}"] = run_config(store, [], 1, phases)
                continue
            if cluster is None:
                sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
                from tests.postgres import PostgresCluster

                cluster = PostgresCluster(fsync=True).start()
            url = cluster.fresh_database()
            results[f"{store}:{n}"] = run_config(store, ["--store", url], int(n), phases)
        if args.failover:
            if cluster is None:
                sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
                from tests.postgres import PostgresCluster

                cluster = PostgresCluster(fsync=True).start()
            failover = {
                "one_killed": run_failover(["--store", cluster.fresh_database()]),
                "reference_none_killed": run_failover(
                    ["--store", cluster.fresh_database()], kill=False
                ),
            }
    finally:
        if cluster is not None:
            cluster.stop()
    emit(
        {
            "benchmark": "service_stage",
            "machine": machine(),
            "configs": results,
            "failover": failover,
        }
    )


if __name__ == "__main__":
    main()
