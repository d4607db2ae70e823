"""Connection capacity of one gateway process (or of `--workers N`); prints one JSON object.

For each fleet size N (default 1k, 5k, 10k, 20k; `--quick`: 1k, 5k) a fresh gateway process
(`python -m bridge gateway`) and Mosquitto are started, then a separate process runs N
`bridge.simulator.fleet` chargers that connect (from 127.0.0.2.. so no address runs out of
ports), send ICCID, registration 0x20, heartbeat 0x21 and time request 0x22, and wait for the
replies. Reported per N:
- `accept_per_s`: N / time until every TCP connection was established;
- `all_acked_s`: time until every charger is registered and has its heartbeat answered;
- `ack_latency_ms` p50/p99: heartbeat sent -> reply received, as the chargers see it;
- `rss_per_charger_kib`: gateway VmRSS growth (before the fleet vs all registered) / N.
- `gateway_msgs_per_s`: MQTT messages the gateway published for the connects (online,
  register, heartbeat, time_sync events, device and port states: 12 per 2-port charger) over
  the time until a subscriber had the last one.
The reference is raw paho-mqtt publishing as many QoS 1 messages, unpaced, to a QoS 1
subscriber through the same broker; `ratio_to_reference` = ours / raw msgs/s.

`--workers 2` starts `chargebridge gateway --workers 2` (RSS and CPU add up the supervisor
and its workers); `--workers 1,2` runs every size once per value, each with its own reference,
and `summary` sets them side by side.

    .venv/bin/python bench/connections.py [--quick] [--sizes 1000,20000] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

from _harness import (
    Counter,
    FleetProcs,
    Procs,
    Watch,
    emit,
    free_port,
    machine,
    paho_reference,
    percentile,
    raised_nofile,
    tree_rss_kib,
)
from throughput import workers_list


def one_size(n: int, timeout: float, workers: int = 1) -> dict[str, Any]:
    with Procs() as procs:
        mqtt_port = procs.mosquitto()
        tcp_port = free_port()
        gateway = procs.gateway(mqtt_port, tcp_port, workers=workers)
        time.sleep(1.0)  # let the gateway finish connecting to the broker and settle its heap
        rss_before = tree_rss_kib(gateway.pid)
        every = Counter()
        synced = Counter(lambda topic, payload: b'"type":"time_sync"' in payload)
        watches = [
            Watch(mqtt_port, "chargebridge/#", every, qos=0),
            Watch(mqtt_port, "chargebridge/devices/+/event/device", synced, qos=0),
        ]
        fleet = FleetProcs(procs, tcp_port, n)
        try:
            start = fleet.wait("starting", 30)["first_t"]  # the same CLOCK_MONOTONIC as ours
            t_conn = fleet.wait("all_connected", timeout)["t"]
            done = fleet.wait("all_registered", timeout)
            # The last message of a charger's connect is its time_sync event: once the broker
            # has them all, the gateway's outbox is empty and its memory is what N chargers
            # hold.
            t_published = synced.wait(n, timeout)
        except (TimeoutError, RuntimeError) as exc:
            return {"devices": n, "error": str(exc), "gateway_log": procs.log_tail("gateway")}
        rss_after = tree_rss_kib(gateway.pid)
        published = every.count
        for w in watches:
            w.close()
        t_done = done["t"]
        stats = done["stats"]
        lat = done["latencies_s"]
        ref = paho_reference(mqtt_port, published)
        all_acked = t_done - start
        ours = published / (t_published - start)
        connected_s = t_conn - start
        return {
            "devices": n,
            "workers": workers,
            "connected": stats["connected"],
            "connect_failures": stats["connect_failures"],
            "accept_per_s": round(n / connected_s, 1),
            "all_acked_s": round(all_acked, 2),
            "ack_latency_ms": {
                "p50": round((percentile(lat, 50) or 0) * 1000, 2),
                "p99": round((percentile(lat, 99) or 0) * 1000, 2),
                "max": round(max(lat, default=0) * 1000, 2),
            },
            "gateway_rss_kib": {"before": rss_before, "after": rss_after},
            "rss_per_charger_kib": round((rss_after - rss_before) / n, 2),
            "all_published_s": round(t_published - start, 2),
            "mqtt_messages": published,
            "gateway_msgs_per_s": round(ours, 1),
            "reference_paho": ref,
            "ratio_to_reference": round(ours / ref["msgs_per_s"], 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 5k chargers only")
    parser.add_argument("--sizes", help="comma-separated fleet sizes")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument(
        "--workers",
        type=workers_list,
        default=[1],
        help="gateway --workers, or several to compare side by side (1,2)",
    )
    args = parser.parse_args()
    # One socket per charger: a process cannot hold more than its hard open-files limit
    # (20,000 in an unprivileged container), minus the gateway's own ~20 descriptors.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    top = 20000 if hard == resource.RLIM_INFINITY else min(20000, hard - 100)
    sizes = [1000, 5000] if args.quick else [1000, 5000, 10000, top]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    with raised_nofile(max(sizes) + 200):
        runs = [one_size(n, args.timeout, w) for n in sizes for w in args.workers]
    emit(
        {
            "benchmark": "connections",
            "machine": machine(),
            "open_files_hard_limit": hard,
            "runs": runs,
            "summary": [
                {
                    key: run.get(key)
                    for key in (
                        "devices",
                        "workers",
                        "accept_per_s",
                        "all_acked_s",
                        "ack_latency_ms",
                        "rss_per_charger_kib",
                        "gateway_msgs_per_s",
                        "ratio_to_reference",
                        "error",
                    )
                }
                for run in runs
            ],
        }
    )


if __name__ == "__main__":
    main()
