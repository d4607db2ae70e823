"""The charging service alone: gateway events in, retained session states out; prints one
JSON object.

A raw paho-mqtt publisher plays the gateway: it publishes `event/port` power events (the
gateway's exact payload, ~480 bytes) for 1,000 sessions round-robin at QoS 1, paced at each
phase's rate (0 = as fast as the broker takes them). A charging service process (`python -m
bridge service`) turns them into retained `{b}/sessions/{id}` states that a QoS 1 subscriber
watches. Per phase: `delivered_per_s` (events whose state, or a newer one of the same
session, was seen, per second from the first publish to the last arrival), send -> state
latency, and the service's CPU time and bytes written to disk per event (from /proc). The
reference, in the same run through the same broker: raw paho publishing as many messages to a
QoS 1 subscriber. Both stores side by side in one run (`--stores`): SQLite (the default
file) and PostgreSQL (a private cluster, one service instance); on PostgreSQL the bytes
written are the database server's, not the service's, so that column covers SQLite only.

    .venv/bin/python bench/service_stage.py [--quick] [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _harness import (
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


def run_phase(
    mqtt_port: int, service_pid: int, states: SessionStates, rate: int, count: int, first: int
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
    before = (*cpu_times(service_pid), written_bytes(service_pid))
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
    after = (*cpu_times(service_pid), written_bytes(service_pid))
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


def run_store(store: str, extra: list[str], phases: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """All phases against one service process on one store, through a fresh broker."""
    with Procs() as procs:
        mqtt_port = procs.mosquitto()
        service = procs.service(mqtt_port, *extra)
        states = SessionStates()
        watch = Watch(mqtt_port, "chargebridge/sessions/+", states, qos=1)
        # The service publishes its statistics once subscribed: its queue exists from then on.
        stats = Counter()
        stats_watch = Watch(mqtt_port, "chargebridge/charging/stats", stats, qos=1)
        stats.wait(1, 30)
        stats_watch.close()
        results = []
        first = 1
        for rate, count in phases:
            ours = run_phase(mqtt_port, service.pid, states, rate, count, first)
            first += count // SESSIONS + 1
            ref = paho_reference(mqtt_port, count, rate=rate or None)
            ours["reference_paho"] = ref
            if ours["delivered_per_s"]:
                ours["ratio_to_reference"] = round(ours["delivered_per_s"] / ref["msgs_per_s"], 3)
            ours["store"] = store
            results.append(ours)
        watch.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases")
    parser.add_argument(
        "--stores",
        default="sqlite,postgresql",
        help="comma-separated: sqlite (the default file store) and/or postgresql (a private "
        "cluster from tests/postgres.py, fsync on; needs the postgres extra)",
    )
    parser.add_argument(
        "--rates",
        default="1000,5000,max",
        help="comma-separated phases, frames/s or max (e.g. --rates 1000: CPU per event at an "
        "ordinary rate only)",
    )
    args = parser.parse_args()
    seconds = 5 if args.quick else 10
    phases = [(1000, 1000 * seconds), (5000, 5000 * seconds), (0, 30000)]
    wanted = {0 if r == "max" else int(r) for r in args.rates.split(",")}
    phases = [(rate, count) for rate, count in phases if rate in wanted]
    results: dict[str, list[dict[str, Any]]] = {}
    for store in args.stores.split(","):
        if store == "sqlite":
            results[store] = run_store(store, [], phases)
        elif store == "postgresql":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.postgres import PostgresCluster

            cluster = PostgresCluster(fsync=True).start()
            try:
                url = cluster.fresh_database()
                results[store] = run_store(store, ["--store", url], phases)
            finally:
                cluster.stop()
        else:
            parser.error(f"unknown store {store!r}")
    emit({"benchmark": "service_stage", "machine": machine(), "stores": results})


if __name__ == "__main__":
    main()
