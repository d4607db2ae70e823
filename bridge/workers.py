"""`--workers N`: N gateway processes on one box, so that every core serves chargers.

Python runs one core per process. With `--workers N` (N > 1) the process that was started
becomes a supervisor, and it serves no charger itself:

- it starts N workers, each `python -m bridge.workers` reading its settings as one JSON line
  on stdin (never on the command line, where `ps` would show the broker password). Worker k
  (k = 1..N) is the gateway `{gateway_id}-{k}` with its own MQTT client (client id, will,
  presence) and its own durable outbox under `{state_dir}/worker-{k}/`; the ICCID pins stay
  in `{state_dir}/gateway-pins.sqlite3`, one file shared by all (bridge/gateway/trust.py);
- every worker binds its own socket on each `--tcp` address with SO_REUSEPORT, and the kernel
  spreads new connections over them (a hash of the connection's addresses). A port 0 is
  chosen once here and held, so all workers listen on the same port;
- serial links cannot be shared: they go to worker 1 only, as do Home Assistant discovery
  (one publisher is enough) and the dashboard (`--web`, served here). `--metrics HOST:P`
  serves worker k's metrics on port P + k - 1;
- a worker that dies is started again after a back-off (1 s, doubling up to 30 s, back to
  1 s once a worker has run for `STABLE_S`), with one log line naming it, how it ended and
  the delay. A worker that cannot start the first time (a bad option, a port taken, a state
  dir it cannot write) ends the supervisor with status 1 instead of looping, and so does one
  that fails `MAX_QUICK_FAILURES` times in a row;
- SIGTERM/SIGINT stop every worker with SIGTERM (each shuts down as a gateway does), then the
  supervisor exits 0. Workers run in their own session, so a terminal's Ctrl-C reaches them
  once, through here; they watch their stdin and stop when the supervisor is gone (even
  after a SIGKILL), so no worker outlives it holding the port.

With `--workers 1` (the default) nothing of this runs: `run_gateways` is `run_gateway`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import statedir
from bridge.app import GatewayApp, run_gateway
from bridge.config import GatewaySettings
from bridge.errors import StartupError
from bridge.gateway.trust import PINS_FILENAME, SqlitePinStore

log = logging.getLogger(__name__)

READY = b"ready\n"  # what a worker writes on its stdout once it listens
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STABLE_S = 30.0  # a worker up this long starts the back-off anew
MAX_QUICK_FAILURES = 6  # restarts in a row that did not last STABLE_S; then give up
STOP_TIMEOUT_S = 15.0  # a worker's orderly shutdown, before SIGKILL (systemd unit: 20 s)


class WorkersFailed(StartupError):
    """A worker cannot be kept up: one line, exit status 1."""


async def run_gateways(settings: GatewaySettings, *, ready: asyncio.Event | None = None) -> None:
    """The gateway role: one process (`workers` = 1, exactly `run_gateway`) or a supervisor
    of `workers` gateway processes."""
    if settings.workers == 1:
        await run_gateway(settings, ready=ready)
    else:
        await Supervisor(settings).run(ready=ready)


def worker_name(settings: GatewaySettings, k: int) -> str:
    return f"{settings.gateway_id}-{k}"


def worker_settings(settings: GatewaySettings, k: int, tcp: list[str]) -> GatewaySettings:
    """Worker k's settings: its own name and state dir, the serial links and Home Assistant
    on worker 1 only, metrics on port + k - 1, no dashboard, the listeners' real ports."""
    update: dict[str, Any] = {
        "gateway_id": worker_name(settings, k),
        "state_dir": settings.state_dir / f"worker-{k}",
        "workers": 1,
        "tcp": tcp,
        "web": "",
        "serial": settings.serial if k == 1 else [],
        "homeassistant": settings.homeassistant and k == 1,
    }
    address = settings.metrics_address
    if address is not None and address[1] != 0:
        host, port = address
        update["metrics"] = f"[{host}]:{port + k - 1}" if ":" in host else f"{host}:{port + k - 1}"
    values = {name: getattr(settings, name) for name in GatewaySettings.model_fields}
    values.update(update)
    return GatewaySettings.model_validate(values)


def reserve_ports(listeners: list[tuple[str, int]]) -> tuple[list[str], list[socket.socket]]:
    """`--tcp` with every port 0 replaced by a free port, and the sockets holding those ports
    (bound with SO_REUSEPORT, never listening, so they take no connection) until we stop."""
    tcp: list[str] = []
    held: list[socket.socket] = []
    for host, port in listeners:
        if port == 0:
            family, kind, proto, _, address = socket.getaddrinfo(
                host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                raise
            held.append(sock)
            port = sock.getsockname()[1]
        tcp.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return tcp, held


def ended(returncode: int) -> str:
    """How a process ended, for the log: `exit status 1` or `signal SIGKILL`."""
    if returncode < 0:
        with suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
        return f"signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class Worker:
    k: int
    name: str
    spec: bytes  # the JSON line on its stdin
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    up: bool = False  # listening now
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # up once (first start)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)  # starts, up

    async def _set(self, *, up: bool) -> None:
        async with self.changed:
            self.up = up
            if up:
                self.ready.set()
            self.changed.notify_all()


class Supervisor:
    """Starts, watches and stops the worker processes of one `--workers N` gateway."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.workers: list[Worker] = []

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        settings = self.settings
        if not settings.tcp_listeners:
            raise WorkersFailed(
                "option workers: the workers share the TCP listeners, and --tcp is none"
                " (serial links cannot be shared: use --workers 1)"
            )
        with statedir.locked(settings.state_dir, "gateway"):  # a second supervisor: one line
            await self._run(ready)

    async def _run(self, ready: asyncio.Event | None) -> None:
        settings = self.settings
        pins = settings.state_dir / PINS_FILENAME
        # Created (WAL, schema) once here, so the workers never race to set it up.
        SqlitePinStore(pins, settings.max_devices, shared=True).close()
        tcp, held = reserve_ports(settings.tcp_listeners)
        try:
            for k in range(1, settings.workers + 1):
                spec = {
                    "settings": worker_settings(settings, k, tcp).model_dump(mode="json"),
                    "pins": str(pins),
                }
                self.workers.append(
                    Worker(k, worker_name(settings, k), json.dumps(spec).encode() + b"\n")
                )
            async with asyncio.TaskGroup() as tg:
                for worker in self.workers:
                    tg.create_task(self._keep(worker), name=f"worker {worker.name}")
                for worker in self.workers:
                    await worker.ready.wait()
                log.info(
                    "gateway workers running",
                    extra={"workers": [w.name for w in self.workers], "tcp": tcp},
                )
                if ready is not None:
                    ready.set()
        finally:
            for sock in held:
                sock.close()

    async def _keep(self, worker: Worker) -> None:
        """Keep one worker up: start it, and start it again with back-off when it dies."""
        delay = RESTART_DELAY_S
        quick_failures = 0
        try:
            while True:
                started = time.monotonic()
                proc = await self._start(worker)
                came_up = await self._came_up(proc)
                if came_up:
                    await worker._set(up=True)
                    await self._pump_stdout(proc)
                returncode = await proc.wait()
                await worker._set(up=False)
                if not worker.ready.is_set():
                    raise WorkersFailed(
                        f"gateway worker {worker.name} could not start ({ended(returncode)});"
                        " its error is logged above"
                    )
                if came_up and time.monotonic() - started >= STABLE_S:
                    delay, quick_failures = RESTART_DELAY_S, 0
                quick_failures += 1
                if quick_failures >= MAX_QUICK_FAILURES:
                    raise WorkersFailed(
                        f"gateway worker {worker.name} failed {quick_failures} times in a row"
                        f" (last: {ended(returncode)}); stopping all workers"
                    )
                log.error(
                    "gateway worker %s ended (%s); restarting it in %.0f s",
                    worker.name,
                    ended(returncode),
                    delay,
                    extra={"worker": worker.name, "returncode": returncode, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
        finally:
            await self._stop(worker)

    async def _start(self, worker: Worker) -> asyncio.subprocess.Process:
        proc = worker.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.workers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches it through us, once
        )
        worker.starts += 1
        assert proc.stdin is not None
        proc.stdin.write(worker.spec)  # stdin stays open: its EOF tells the worker we are gone
        await proc.stdin.drain()
        log.info(
            "gateway worker started",
            extra={"worker": worker.name, "pid": proc.pid, "start": worker.starts},
        )
        return proc

    @staticmethod
    async def _came_up(proc: asyncio.subprocess.Process) -> bool:
        """Whether the worker said it listens (False: it ended before)."""
        assert proc.stdout is not None
        with suppress(ConnectionError, ValueError):
            return await proc.stdout.readline() == READY
        return False

    @staticmethod
    async def _pump_stdout(proc: asyncio.subprocess.Process) -> None:
        """Pass on whatever else the worker prints, until it exits."""
        assert proc.stdout is not None
        with suppress(ConnectionError, ValueError):
            while line := await proc.stdout.readline():
                sys.stdout.buffer.write(line)
                sys.stdout.flush()

    async def _stop(self, worker: Worker) -> None:
        """SIGTERM (an orderly gateway shutdown), SIGKILL if it does not end in time."""
        proc = worker.proc
        if proc is None or proc.returncode is not None:
            return
        with suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            log.error("gateway worker %s did not stop in time; killing it", worker.name)
            with suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()


# --------------------------------------------------------------------------- the worker


async def serve_worker(settings: GatewaySettings, pins: Path) -> None:
    """One worker: the gateway with SO_REUSEPORT listeners and the shared pin file; says
    `ready` on stdout once it listens, and stops when the supervisor's end of stdin closes."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    gone = _SupervisorGone(task)
    await loop.connect_read_pipe(lambda: gone, os.fdopen(os.dup(0), "rb", buffering=0))
    ready = asyncio.Event()
    app = GatewayApp(settings, reuse_port=True, shared_pins=pins)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(app.serve(ready=ready), name="gateway")
        await ready.wait()
        sys.stdout.buffer.write(READY)
        sys.stdout.flush()


class _SupervisorGone(asyncio.Protocol):
    """Cancels the worker when its stdin reaches EOF: the supervisor ended, however."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task

    def connection_lost(self, exc: Exception | None) -> None:
        self.task.cancel()


def worker_main() -> int:
    """Entry point of `python -m bridge.workers` (started by the supervisor only)."""
    from bridge.commands.common import report_failure, run_async, serve_until_signalled
    from bridge.logs import setup_logging

    spec = json.loads(sys.stdin.buffer.readline() or b"null")
    if not isinstance(spec, dict):
        print("bridge.workers is started by `chargebridge gateway --workers N`", file=sys.stderr)
        return 2
    settings = GatewaySettings.model_validate(spec["settings"])
    setup_logging(settings.log_format, settings.log_level)
    try:
        run_async(serve_until_signalled(serve_worker(settings, Path(spec["pins"]))))
    except Exception as exc:  # reported as the gateway command reports it
        return report_failure(f"gateway worker {settings.gateway_id}", exc)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
