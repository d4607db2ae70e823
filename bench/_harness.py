"""Shared plumbing of the system benchmarks (not a benchmark itself).

Each benchmark starts its own Mosquitto with a minimal config in a temp dir (anonymous, a
random port, no persistence, unbounded queues so a burst is never dropped by the broker), the
gateway and charging service as real `python -m bridge ...` processes, and the load in a
separate process, so the figures include every process boundary a deployment has. The raw
paho-mqtt reference runs through the same broker in the same run.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The tree whose `python -m bridge` is measured (its directory is the children's cwd, so its
# `bridge` package is imported first): this one, or another checkout for a before/after run.
ROOT = Path(os.environ.get("CHARGEBRIDGE_BENCH_TREE") or Path(__file__).resolve().parent.parent)
PYTHON = sys.executable
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Block until something listens on `port` (process start-up, not a sync point)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.02)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    return sum(cpu_times(pid))


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a `--workers N` gateway's workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its living descendants."""
    total = 0.0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and its living descendants, KiB."""
    total = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            total += rss_kib(p)
    return total


def listeners(port: int) -> int:
    """Sockets listening on TCP `port` (IPv4 and IPv6): one per `--workers` worker."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def wait_listeners(port: int, n: int, timeout: float = 60.0) -> None:
    """Block until `n` sockets listen on `port`: connections made before every worker
    listens would all go to the first one."""
    deadline = time.monotonic() + timeout
    while listeners(port) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{listeners(port)} of {n} workers listen on {port}")
        time.sleep(0.05)


def written_bytes(pid: int) -> int:
    """Bytes a process has caused to be written to storage so far (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def percentile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mosq = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "mosquitto": mosq.splitlines()[0] if mosq else "?",
        "event_loop": loop,
    }


class Procs:
    """Child processes started by a benchmark, all stopped on exit (even on error)."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="chargebridge-bench-"))
        self.children: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}  # the latest child of each name

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, args: list[str], name: str, **kw: Any) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        kw.setdefault("stdout", log)
        proc = subprocess.Popen(args, stderr=log, cwd=ROOT, **kw)
        self.children.append(proc)
        self.named[name] = proc
        return proc

    def cpu(self, *names: str) -> dict[str, float]:
        """CPU seconds used so far by the named children, with their own children."""
        return {name: tree_cpu_seconds(self.named[name].pid) for name in names}

    def wait_quiet(
        self,
        *names: str,
        below: float = 0.1,
        window: float = 0.5,
        least: float = 1.0,
        timeout: float = 30.0,
    ) -> float:
        """Block until the named children (with their own children) together use less than
        `below` of a core over `window` seconds, at least `least` and at most `timeout`
        seconds; returns the seconds waited. A fixed sleep after the chargers registered
        started the first phase while the slower setups (more processes on the same cores,
        a loaded machine) were still working off the registrations, which then counted in
        that phase's latency."""
        start = time.monotonic()
        time.sleep(least)
        last = sum(self.cpu(*names).values())
        while time.monotonic() - start < timeout:
            time.sleep(window)
            now = sum(self.cpu(*names).values())
            if now - last < below * window:
                break
            last = now
        return round(time.monotonic() - start, 2)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.tmp / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def mosquitto(self) -> int:
        port = free_port()
        conf = self.tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "log_dest none\n"
        )
        self.spawn([MOSQUITTO, "-c", str(conf)], "mosquitto")
        wait_port(port)
        return port

    def gateway(
        self, mqtt_port: int, tcp_port: int, *extra: str, workers: int = 1
    ) -> subprocess.Popen[bytes]:
        """`chargebridge gateway`; with `workers` > 1 its `--workers`, returned once every
        worker listens."""
        if workers > 1:
            extra = (*extra, "--workers", str(workers))
        proc = self.spawn(
            [
                PYTHON, "-m", "bridge", "gateway",
                "--tcp", f"127.0.0.1:{tcp_port}",
                "--mqtt", f"mqtt://127.0.0.1:{mqtt_port}",
                "--state-dir", str(self.tmp / "gateway"),
                "--max-connections-per-ip", "100000",
                "--log-level", "warning",
                "--gateway-id", "bench",
                *extra,
            ],
            "gateway",
        )  # fmt: skip
        if workers > 1:
            wait_listeners(tcp_port, workers)
        else:
            wait_port(tcp_port)
        return proc

    def service(self, mqtt_port: int, *extra: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            [
                PYTHON, "-m", "bridge", "service",
                "--mqtt", f"mqtt://127.0.0.1:{mqtt_port}",
                "--state-dir", str(self.tmp / "service"),
                "--log-level", "warning",
                "--event-logging", "false",
                *extra,
            ],
            "service",
        )  # fmt: skip


class LineReader:
    """JSON lines from a child's stdout, read on a thread, each stamped on arrival."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._lines: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for raw in self._stdout:
            with contextlib.suppress(ValueError):
                item = (time.monotonic(), json.loads(raw))
                with self._cond:
                    self._lines.append(item)
                    self._cond.notify_all()
        with self._cond:
            self._lines.append((time.monotonic(), {"event": "eof"}))
            self._cond.notify_all()

    def wait(self, event: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """The first line whose `event` is `event` (or `eof`), waiting at most `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, line in self._lines:
                    if line.get("event") in (event, "eof"):
                        self._lines.remove((t, line))
                        return t, line
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise TimeoutError(f"no {event!r} line within {timeout} s")


@contextlib.contextmanager
def raised_nofile(wanted: int) -> Iterator[None]:
    """Children inherit the limit; root may lift the hard limit too."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def paho_reference(mqtt_port: int, count: int, rate: float | None = None) -> dict[str, Any]:
    """Raw paho-mqtt: one client publishes `count` QoS 1 messages (paced at `rate`/s, or as
    fast as the broker takes them), another subscribed at QoS 1 receives them; the send time
    travels in the payload. Messages/s counts from the first publish to the last receipt."""
    import paho.mqtt.client as paho

    topic = f"bench/ref/{os.getpid()}"
    got: list[float] = []
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got.append(time.perf_counter() - float(msg.payload[:24]))
        if len(got) >= count:
            done.set()

    ready = threading.Event()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"ref-sub-{os.getpid()}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.set()
    sub.connect("127.0.0.1", mqtt_port)
    sub.subscribe(topic, 1)
    sub.loop_start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"ref-pub-{os.getpid()}")
    # At most 100 unacknowledged, as our client: paho's own queue scans all queued messages on
    # every PUBACK, so an unbounded burst would measure that quadratic cost instead.
    window = threading.Semaphore(100)
    pub.max_inflight_messages_set(100)
    pub.on_publish = lambda *a: window.release()
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    ready.wait(10)
    body = b"x" * 400  # about the size of a 0x06 power event
    cpu_before = time.process_time()
    start = time.perf_counter()
    for i in range(count):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        window.acquire()
        pub.publish(topic, f"{time.perf_counter():<24.6f}".encode() + body, qos=1)
    done.wait(max(30.0, count / 500))
    elapsed = time.perf_counter() - start
    cpu_used = time.process_time() - cpu_before
    pub.loop_stop()
    sub.loop_stop()
    pub.disconnect()
    sub.disconnect()
    return {
        "messages": count,
        "received": len(got),
        "msgs_per_s": round(len(got) / elapsed, 1),
        # This process's CPU (publisher + subscriber threads, idle watchers): what a raw
        # client pair costs per message, the CPU reference of the system benchmarks.
        "cpu_us_per_msg": round(cpu_used / count * 1e6, 1),
        "latency_ms": {
            "p50": _ms(percentile(got, 50)),
            "p99": _ms(percentile(got, 99)),
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))


class Watch:
    """A paho subscriber on its own thread; `on_message(topic, payload, now)` runs there."""

    def __init__(self, mqtt_port: int, topic: str, on_message: Any, qos: int = 1) -> None:
        import paho.mqtt.client as paho

        ready = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda _c, _u, m: on_message(m.topic, m.payload, time.monotonic())
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", mqtt_port)
        self.client.subscribe(topic, qos)
        self.client.loop_start()
        if not ready.wait(10):
            raise TimeoutError("subscription not acknowledged")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Counter:
    """Counts messages matching a predicate; `wait(n)` returns when n were seen."""

    def __init__(self, match: Any = None) -> None:
        self.match = match
        self.count = 0
        self.last = 0.0
        self._cond = threading.Condition()

    def __call__(self, topic: str, payload: bytes, now: float) -> None:
        if self.match is None or self.match(topic, payload):
            with self._cond:
                self.count += 1
                self.last = now
                self._cond.notify_all()

    def wait(self, n: int, timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= n, timeout):
                raise TimeoutError(f"saw {self.count} of {n} messages")
            return self.last


FLEET_PER_PROCESS = 10_000
"""Chargers per load process: each holds one socket per charger, and the hard open-files limit
of an unprivileged process (20,000 here) caps what one process can hold."""


class FleetProcs:
    """N simulated chargers (`bench/_fleet.py`) split over processes of <= 10k chargers, with
    distinct physical ids and source addresses; their milestone lines merged."""

    def __init__(self, procs: Procs, port: int, n: int, *extra: str) -> None:
        self.readers: list[LineReader] = []
        workers = max(1, -(-n // FLEET_PER_PROCESS))
        for w in range(workers):
            count = n // workers + (1 if w < n % workers else 0)
            proc = procs.spawn(
                [
                    PYTHON, "bench/_fleet.py", "--port", str(port), "--devices", str(count),
                    "--first-index", str(w * FLEET_PER_PROCESS),
                    "--first-source", str(2 + 8 * w),
                    *extra,
                ],
                f"fleet{w}",
                stdout=subprocess.PIPE,
            )  # fmt: skip
            self.readers.append(LineReader(proc))

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        """Every worker's `event` line: first/last time, summed counters, merged latencies."""
        lines = [r.wait(event, timeout)[1] for r in self.readers]
        bad = [line for line in lines if line.get("event") != event]
        if bad:
            raise RuntimeError(f"a fleet process ended before {event!r}")
        stats: dict[str, Any] = {}
        for line in lines:
            for key, value in line.get("stats", {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    stats[key] = stats.get(key, 0) + value
        return {
            "first_t": min(line["t"] for line in lines),
            "t": max(line["t"] for line in lines),
            "stats": stats,
            "latencies_s": [x for line in lines for x in line.get("latencies_s", [])],
            "failures": [x for line in lines for x in line.get("failures", [])],
        }


DURATION = re.compile(rb'"duration_s":(\d+)')


class SessionStates:
    """When the state of each (session_id, duration_s) was first seen on the sessions topics
    (or, with `id_key="order_no"`, on the gateway's port events).

    The service publishes a session's newest state once per batch it handles, so a frame
    whose update was superseded in the same batch has no message of its own: it counts as
    delivered when a state at least as new (same session, duration_s >= its own) arrives,
    which is what a subscriber to the retained state sees. The fields are found with a
    regular expression, not a JSON parse of the 8 KB session (the first `duration_s` is the
    session's own, before its `events`), so that the watcher costs little CPU next to the
    system it measures.
    """

    def __init__(self, id_key: str = "session_id") -> None:
        self.pattern = re.compile(rb'"%s":"([0-9A-F]+)"' % id_key.encode())
        self.durations: dict[str, list[int]] = {}  # per id: running maximum, arrival order
        self.times: dict[str, list[float]] = {}
        self.cond = threading.Condition()

    def __call__(self, topic: str, payload: bytes, now: float) -> None:
        found = self.pattern.search(payload)
        duration = DURATION.search(payload)
        if found is None or duration is None:
            return  # a cleared session or a port status event
        key, d = found.group(1).decode(), int(duration.group(1))
        with self.cond:
            ds = self.durations.setdefault(key, [])
            if not ds or d > ds[-1]:
                ds.append(d)
                self.times.setdefault(key, []).append(now)
                self.cond.notify_all()

    def arrival(self, key: tuple[str, int]) -> float | None:
        """First time a state with this session's duration or a later one was seen."""
        ds = self.durations.get(key[0])
        if not ds:
            return None
        i = bisect.bisect_left(ds, key[1])
        return self.times[key[0]][i] if i < len(ds) else None

    def wait_for(self, keys: list[tuple[str, int]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            for key in keys:
                while self.arrival(key) is None:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self.cond.wait(left):
                        return
