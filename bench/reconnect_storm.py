"""Reconnect storm: N chargers (default 10,000; `--quick` 2,000) connected to a gateway
process, the gateway stopped (SIGTERM, then a second round with SIGKILL) and started again;
every charger reconnects at once (the simulator's back-off: 0.5 s doubling, jittered). Prints
one JSON object with, per round:
- `down_s`: from the signal until the new gateway listens;
- `all_registered_s`: from the new gateway listening until every charger is registered again
  and has a heartbeat answered;
- `refused`: connection attempts STARTED after the new gateway was listening that failed
  (refused, reset, timed out), with `refused_why` (errno names); `failed_while_down` counts
  the attempts started before, which fail by design.
The reference: raw paho-mqtt carrying as many QoS 1 messages as the gateway published for the
storm (11 per charger), unpaced, through the same broker; `ratio_to_reference` compares the
time the gateway took to republish the fleet's state with the time raw paho needs for it.

    .venv/bin/python bench/reconnect_storm.py [--quick] [--devices N]
"""

from __future__ import annotations

import argparse
import signal
import time
from collections import Counter as Counter_
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
)

MESSAGES_PER_CHARGER = 11  # online, register, heartbeat events, 2 port events, states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 chargers")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    n = args.devices or (2000 if args.quick else 10000)
    rounds: list[dict[str, Any]] = []
    with raised_nofile(n + 200), Procs() as procs:
        mqtt_port = procs.mosquitto()
        tcp_port = free_port()
        gateway = procs.gateway(mqtt_port, tcp_port)
        synced = Counter(lambda topic, payload: b'"type":"heartbeat"' in payload)
        watch = Watch(mqtt_port, "chargebridge/devices/+/event/device", synced, qos=0)
        fleet = FleetProcs(procs, tcp_port, n, "--cycles", "2")
        fleet.wait("all_registered", args.timeout)
        synced.wait(n, args.timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            before = synced.count
            t_signal = time.monotonic()
            gateway.send_signal(sig)
            gateway.wait(30)
            fleet.wait("dropped", args.timeout)
            gateway = procs.gateway(mqtt_port, tcp_port)  # returns once it listens
            t_up = time.monotonic()
            back = fleet.wait("all_registered", args.timeout)
            t_published = synced.wait(before + n, args.timeout)
            lat = back["latencies_s"]
            rounds.append(
                {
                    "signal": signal.Signals(sig).name,
                    "devices": n,
                    "down_s": round(t_up - t_signal, 2),
                    "all_registered_s": round(back["t"] - t_up, 2),
                    "all_published_s": round(t_published - t_up, 2),
                    "refused": sum(1 for t, _ in back["failures"] if t > t_up),
                    "refused_why": dict(Counter_(why for t, why in back["failures"] if t > t_up)),
                    "failed_while_down": sum(1 for t, _ in back["failures"] if t <= t_up),
                    "connected": back["stats"].get("connected"),
                    "ack_latency_ms_p99_whole_run": round((percentile(lat, 99) or 0) * 1000, 1),
                }
            )
        watch.close()
        ref = paho_reference(mqtt_port, n * MESSAGES_PER_CHARGER)
        ref_s = n * MESSAGES_PER_CHARGER / ref["msgs_per_s"]
        for r in rounds:
            r["ratio_to_reference"] = round(ref_s / r["all_published_s"], 3)
    emit(
        {
            "benchmark": "reconnect_storm",
            "machine": machine(),
            "rounds": rounds,
            "reference_paho": ref,
            "reference_s": round(ref_s, 2),
        }
    )


if __name__ == "__main__":
    main()
