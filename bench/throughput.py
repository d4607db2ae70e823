"""End-to-end throughput and latency; prints one JSON object.

Chargers (a separate load process, `bench/_load.py`, 1,000 raw TCP connections, each sending
its ICCID first as real ones do; a phase's frames are encoded before its clock starts) send
0x06 power reports to a gateway process; the gateway publishes `event/port` to Mosquitto; a
charging service process updates the session and publishes it retained on
`{b}/sessions/{id}`, where a subscriber (QoS 1) sees it. Latency is from the frame's send to
the first session state that includes it (the session's `duration_s` names the frame; the
service publishes each session's newest state once per batch, so a later state stands for
the frames it superseded). The first phase starts once gateway, service and Mosquitto are
quiet after the registrations (`settled_s`). Phases: 1,000 and 5,000 frames/s, paced, then
`max`: frames sent as fast as the gateway reads them; `delivered_per_s` is frames whose
state was seen, per second from the first send to the last arrival. `gateway_stage` gives
the same figures for the gateway's `event/port` messages (device -> gateway -> broker ->
subscriber, one hop less).

The reference, in the same run and through the same broker: raw paho-mqtt publishing as many
QoS 1 messages at the same rate to a QoS 1 subscriber (one hop, no processing);
`ratio_to_reference` = our delivered/s / raw msgs/s.

`--workers 2` runs the gateway as `chargebridge gateway --workers 2` (the load's connections
spread over both by SO_REUSEPORT; CPU figures add up the supervisor and its workers);
`--workers 1,2` runs everything once per value, one after the other with fresh processes and
each with its own reference, and `summary` sets them side by side (ratio at `max`, latency at
1,000 frames/s).

`--gateway-floor` runs `bench/_gateway_floor.py` in the gateway's place: the least a
hand-written Python gateway does with the same parts (uvloop, one connection per charger, the
two QoS 1 messages of a 0x06 in 2 ms publishing rounds), so its CPU per frame is the floor
of the gateway's, in the same run (bench/cpu_per_event.py `--floors`).

    .venv/bin/python bench/throughput.py [--quick] [--workers 1,2] [--gateway-floor]
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

from _harness import (
    PYTHON,
    LineReader,
    Procs,
    SessionStates,
    Watch,
    emit,
    free_port,
    machine,
    paho_reference,
    percentile,
    wait_port,
)


def session_id(index: int) -> str:
    return (0xB0 << 120 | index).to_bytes(16, "big").hex().upper()


MEASURED = ("gateway", "service", "mosquitto")
GATEWAY_FLOOR = Path(__file__).resolve().with_name("_gateway_floor.py")


def run_phase(
    procs: Procs,
    load: subprocess.Popen[bytes],
    lines: LineReader,
    sessions: SessionStates,
    events: SessionStates,
    rate: int,
    count: int,
) -> dict[str, Any]:
    assert load.stdin is not None
    before = procs.cpu(*MEASURED)
    load.stdin.write(f"go {rate} {count}\n".encode())
    load.stdin.flush()
    _, sent = lines.wait("sent", 600)
    frames = sent["frames"]
    keys = [(session_id(int(i)), int(d)) for i, d, _ in frames]
    sessions.wait_for(keys, 120)
    used = procs.cpu(*MEASURED)
    send_s = frames[-1][2] - frames[0][2]
    return {
        "rate": rate or "max",
        "frames": count,
        "sent_per_s": round(count / send_s, 1) if send_s > 0 else None,
        **arrivals(frames, keys, sessions),
        "gateway_stage": arrivals(frames, keys, events),
        "cpu_us_per_frame": {
            name: round((used[name] - before[name]) / count * 1e6, 1) for name in MEASURED
        },
    }


def arrivals(
    frames: list[list[float]], keys: list[tuple[str, int]], seen: SessionStates
) -> dict[str, Any]:
    """Delivered count and rate (first send to last arrival) and send->arrival latency."""
    latencies = []
    last = frames[0][2]
    for (_i, _d, t), key in zip(frames, keys, strict=True):
        arrived = seen.arrival(key)
        if arrived is not None:
            latencies.append(arrived - t)
            last = max(last, arrived)
    elapsed = last - frames[0][2]
    return {
        "delivered": len(latencies),
        "delivered_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": {
            "p50": round((percentile(latencies, 50) or 0) * 1000, 2),
            "p99": round((percentile(latencies, 99) or 0) * 1000, 2),
            "max": round(max(latencies, default=0) * 1000, 2),
        },
    }


def workers_list(text: str) -> list[int]:
    """`1` or `1,2`: gateway worker counts to run one after the other."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 or v > 64 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts from 1 to 64, e.g. 1,2")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s phases instead of 10 s")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--max-frames", type=int, default=30000)
    parser.add_argument(
        "--rates",
        default="1000,5000,max",
        help="comma-separated phases, frames/s or max (e.g. --rates 1000: CPU per event at an "
        "ordinary rate only)",
    )
    parser.add_argument(
        "--workers",
        type=workers_list,
        default=[1],
        help="gateway --workers, or several to compare side by side (1,2)",
    )
    parser.add_argument(
        "--gateway-floor",
        action="store_true",
        help="bench/_gateway_floor.py in the gateway's place (its CPU floor)",
    )
    args = parser.parse_args()
    runs = [{"workers": n, **one_run(args, n)} for n in args.workers]
    out: dict[str, Any] = {
        "benchmark": "throughput",
        "machine": machine(),
        "devices": args.devices,
    }
    if len(runs) == 1:
        out.update(runs[0])
    else:
        out["runs"] = runs
    out["summary"] = [summary(run) for run in runs]
    emit(out)


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """One line per worker count: the ratio to raw paho at `max`, latency at 1,000/s."""
    by_rate = {phase["rate"]: phase for phase in run["phases"]}
    top, paced = by_rate.get("max", {}), by_rate.get(1000, {})
    return {
        "workers": run["workers"],
        "max_delivered_per_s": top.get("delivered_per_s"),
        "max_ratio_to_reference": top.get("ratio_to_reference"),
        "at_1000_per_s_latency_ms": paced.get("latency_ms"),
        "at_1000_per_s_cpu_us_per_frame": paced.get("cpu_us_per_frame"),
    }


def one_run(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """One setup's phases, and how long its registrations took to settle (`settled_s`)."""
    seconds = 5 if args.quick else 10
    phases = [(1000, 1000 * seconds), (5000, 5000 * seconds), (0, args.max_frames)]
    wanted = {0 if r == "max" else int(r) for r in args.rates.split(",")}
    phases = [(rate, count) for rate, count in phases if rate in wanted]
    with Procs() as procs:
        mqtt_port = procs.mosquitto()
        tcp_port = free_port()
        if args.gateway_floor:
            floor = [PYTHON, str(GATEWAY_FLOOR), "--tcp-port", str(tcp_port)]
            procs.spawn([*floor, "--mqtt-port", str(mqtt_port)], "gateway")
            wait_port(tcp_port)
        else:
            procs.gateway(mqtt_port, tcp_port, workers=workers)
        procs.service(mqtt_port)
        sessions = SessionStates()
        events = SessionStates("order_no")
        watches = [
            Watch(mqtt_port, "chargebridge/sessions/+", sessions, qos=1),
            Watch(mqtt_port, "chargebridge/devices/+/event/port", events, qos=1),
        ]
        load = procs.spawn(
            [PYTHON, "bench/_load.py", "--port", str(tcp_port), "--devices", str(args.devices)],
            "load",
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        lines = LineReader(load)
        lines.wait("ready", 60)
        settled_s = procs.wait_quiet(*MEASURED)  # registrations worked off: the clock starts
        results = []
        for rate, count in phases:
            ours = run_phase(procs, load, lines, sessions, events, rate, count)
            ref = paho_reference(mqtt_port, count, rate=rate or None)
            ours["reference_paho"] = ref
            for stage in (ours, ours["gateway_stage"]):
                if stage["delivered_per_s"]:
                    stage["ratio_to_reference"] = round(
                        stage["delivered_per_s"] / ref["msgs_per_s"], 3
                    )
            results.append(ours)
        for w in watches:
            w.close()
    return {"settled_s": settled_s, "phases": results}


if __name__ == "__main__":
    main()
