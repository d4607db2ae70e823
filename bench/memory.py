"""Gateway memory per idle charger; prints one JSON object.

N raw-TCP chargers (`bench/_idle_load.py`, from source addresses 127.0.0.2..) each send their
ICCID, a 0x20 registration and a 2-port 0x21 heartbeat, each once the previous frame was
answered, and then stay connected and silent. Measured: the gateway's VmRSS once it is idle
(every heartbeat event published, no CPU used for a second) minus its VmRSS before the load,
divided by N. The reference, in the same run: the same load against the smallest asyncio
server on the same event loop (`bench/_floor_server.py`), the floor of sockets and transports
that no gateway change can go below.

`--trace` runs the gateway under tracemalloc (`bench/_traced_gateway.py`) and adds the top
allocations that grew, grouped by traceback, to the JSON; its RSS figures include tracemalloc's
own overhead and are for locating, not for the table.

    .venv/bin/python bench/memory.py [--devices 10000] [--trace [--top 25]]
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _harness import (
    FLEET_PER_PROCESS,
    PYTHON,
    Counter,
    LineReader,
    Procs,
    Watch,
    cpu_seconds,
    emit,
    free_port,
    machine,
    raised_nofile,
    rss_kib,
    wait_port,
)


def settle(pid: int, quiet_s: float = 1.0, timeout: float = 60.0) -> None:
    """Wait until `pid` used (almost) no CPU for `quiet_s`: its heap is what it holds."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu_seconds(pid)
        if now - last < 0.02 * quiet_s:
            return
        last = now


def load(procs: Procs, port: int, n: int, name: str, timeout: float) -> float:
    """Start the chargers (<= FLEET_PER_PROCESS per process); the time all were answered."""
    readers = []
    workers = max(1, -(-n // FLEET_PER_PROCESS))
    for w in range(workers):
        count = n // workers + (1 if w < n % workers else 0)
        proc = procs.spawn(
            [
                PYTHON, "bench/_idle_load.py", "--port", str(port), "--devices", str(count),
                "--first-index", str(w * FLEET_PER_PROCESS), "--first-source", str(2 + 8 * w),
            ],
            f"{name}-load{w}",
            stdout=__import__("subprocess").PIPE,
        )  # fmt: skip
        readers.append(LineReader(proc))
    lines = [r.wait("ready", timeout)[1] for r in readers]
    if any(line.get("event") != "ready" for line in lines):
        raise RuntimeError(f"a load process ended early: {procs.log_tail(f'{name}-load0')}")
    return max(line["t"] for line in lines)


def reference(n: int, timeout: float) -> dict[str, Any]:
    with Procs() as procs:
        port = free_port()
        server = procs.spawn([PYTHON, "bench/_floor_server.py", "--port", str(port)], "floor")
        wait_port(port, 60.0)
        settle(server.pid)
        before = rss_kib(server.pid)
        load(procs, port, n, "floor", timeout)
        settle(server.pid)
        after = rss_kib(server.pid)
        return {
            "what": "minimal asyncio server, same loop, same load",
            "rss_kib": {"before": before, "after": after},
            "rss_per_charger_kib": round((after - before) / n, 2),
        }


def top_growth(trace_dir: Path, n: int, top: int) -> dict[str, Any]:
    first = tracemalloc.Snapshot.load(str(trace_dir / "snapshot-0.pickle"))
    last = tracemalloc.Snapshot.load(str(trace_dir / "snapshot-1.pickle"))
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    first, last = first.filter_traces(keep), last.filter_traces(keep)
    total = sum(s.size_diff for s in last.compare_to(first, "filename"))
    groups = []
    for stat in last.compare_to(first, "traceback")[:top]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback]
        groups.append(
            {
                "bytes_per_charger": round(stat.size_diff / n, 1),
                "blocks_per_charger": round(stat.count_diff / n, 2),
                "where": [f.replace(str(Path.cwd()) + "/", "") for f in frames[-6:]],
            }
        )
    by_file = [
        {"file": str(s.traceback[0].filename).split("site-packages/")[-1].replace(
            str(Path.cwd()) + "/", ""), "bytes_per_charger": round(s.size_diff / n, 1)}
        for s in last.compare_to(first, "filename")[:15]
    ]  # fmt: skip
    return {
        "traced_bytes_per_charger": round(total / n, 1),
        "by_file": by_file,
        "by_traceback": groups,
    }


def gateway_run(n: int, timeout: float, trace: bool, top: int) -> dict[str, Any]:
    with Procs() as procs:
        mqtt_port = procs.mosquitto()
        tcp_port = free_port()
        trace_dir = procs.tmp / "trace"
        trace_dir.mkdir()
        args = [
            "--tcp", f"127.0.0.1:{tcp_port}",
            "--mqtt", f"mqtt://127.0.0.1:{mqtt_port}",
            "--state-dir", str(procs.tmp / "gateway"),
            "--max-connections-per-ip", "100000",
            "--log-level", "warning",
            "--gateway-id", "bench",
        ]  # fmt: skip
        if trace:
            env = {**os.environ, "TRACE_DIR": str(trace_dir)}
            gw = procs.spawn([PYTHON, "bench/_traced_gateway.py", *args], "gateway", env=env)
        else:
            gw = procs.spawn([PYTHON, "-m", "bridge", "gateway", *args], "gateway")
        wait_port(tcp_port, 60.0)
        heartbeats = Counter(lambda topic, payload: b'"type":"heartbeat"' in payload)
        watch = Watch(mqtt_port, "chargebridge/devices/+/event/device", heartbeats, qos=0)
        settle(gw.pid)
        before = rss_kib(gw.pid)
        if trace:
            gw.send_signal(signal.SIGUSR1)
        start = time.monotonic()
        try:
            ready = load(procs, tcp_port, n, "gateway", timeout)
            heartbeats.wait(n, timeout)
        except (TimeoutError, RuntimeError) as exc:
            return {"error": str(exc), "gateway_log": procs.log_tail("gateway")}
        settle(gw.pid)
        after = rss_kib(gw.pid)
        result: dict[str, Any] = {
            "traced": trace,
            "all_answered_s": round(ready - start, 2),
            "rss_kib": {"before": before, "after": after},
            "rss_per_charger_kib": round((after - before) / n, 2),
        }
        if trace:
            gw.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + timeout
            while not (trace_dir / "snapshot-1.pickle").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("no tracemalloc snapshot")
                time.sleep(0.2)
            result["tracemalloc"] = top_growth(trace_dir, n, top)
        watch.close()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--trace", action="store_true", help="gateway under tracemalloc")
    parser.add_argument("--top", type=int, default=25, help="tracebacks listed with --trace")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    n = args.devices
    with raised_nofile(min(n, FLEET_PER_PROCESS) + 200):
        ours = gateway_run(n, args.timeout, args.trace, args.top)
        ref = None if args.no_reference else reference(n, args.timeout)
    out: dict[str, Any] = {
        "benchmark": "memory",
        "machine": machine(),
        "load_average": os.getloadavg(),
        "devices": n,
        "gateway": ours,
        "reference_floor": ref,
    }
    if ref is not None and "rss_per_charger_kib" in ours:
        out["above_floor_kib"] = round(ours["rss_per_charger_kib"] - ref["rss_per_charger_kib"], 2)
    emit(out)


if __name__ == "__main__":
    main()
