"""`--workers N`: real worker processes sharing one real TCP port, against a real Mosquitto.

The supervisor runs in the test's event loop where a test needs its handles (which worker
holds which pid); the command line (`python -m bridge gateway|run --workers N`) where the
exit status is the point.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.config import GatewaySettings, load_settings
from bridge.errors import StartupError
from bridge.gateway.trust import SqlitePinStore
from bridge.workers import Supervisor, worker_settings
from tests.bridge.helpers import FakeDevice, MqttCollector, mqtt_collector, started
from tests.broker import Mosquitto, free_port

B = "chargebridge"
START = 90.0  # a worker process starts in 1-8 s on the shared, loaded test machine
CHARGERS = 20
FIRST_PID = 0x04AB3700


def iccid(i: int) -> str:
    return f"8986{i:016d}"


def settings(broker: Mosquitto, state: Path, port: int, **extra: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "mqtt": broker.url,
        "base_topic": B,
        "gateway_id": "wk",
        "tcp": [f"127.0.0.1:{port}"],
        "state_dir": str(state),
        "workers": 2,
        "stats_interval": 0.2,
    }
    values.update(extra)
    return load_settings(GatewaySettings, values)


@asynccontextmanager
async def supervised(cfg: GatewaySettings) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(cfg)
    async with started(lambda ready: supervisor.run(ready=ready), START):
        yield supervisor


async def online(
    mqtt: MqttCollector, port: int, index: int, timeout: float = START
) -> tuple[FakeDevice, str]:
    """Connect charger `index` (with its ICCID), let it sync its time; the gateway_id its
    device state names."""
    device = FakeDevice(FIRST_PID + index)
    await device.connect(port, iccid=iccid(index))
    await device.send(0x22)
    await device.recv(timeout=timeout)
    state = await mqtt.wait(
        f"{B}/devices/{FIRST_PID + index:08X}", lambda m: m["online"], timeout=timeout
    )
    return device, str(state["gateway_id"])


async def test_two_workers_share_the_port_and_a_killed_one_comes_back(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.workers")
    port = free_port()
    async with (
        mqtt_collector(broker, f"{B}/devices/+", f"{B}/gateways/+/state") as mqtt,
        supervised(settings(broker, tmp_path / "state", port)) as supervisor,
    ):
        presence = f"{B}/gateways/wk-1/state"
        await mqtt.wait(presence, lambda m: m["state"] == "online", timeout=START)
        # 20 chargers from 20 source ports: the kernel's hash spreads them over both.
        held = dict([await online(mqtt, port, i) for i in range(CHARGERS)])
        by_worker = {gw: [d for d, g in held.items() if g == gw] for gw in set(held.values())}
        assert set(by_worker) == {"wk-1", "wk-2"}, by_worker
        assert (tmp_path / "state" / "worker-1" / "gateway-outbox.sqlite3").exists()
        assert (tmp_path / "state" / "worker-2" / "gateway-outbox.sqlite3").exists()

        first = supervisor.workers[0]
        assert first.proc is not None and first.name == "wk-1"
        os.kill(first.proc.pid, signal.SIGKILL)
        for device in by_worker["wk-1"]:
            await device.closed_by_peer(timeout=START)
        # Its chargers reconnect (to whichever worker the kernel picks, pins shared). A
        # connection made while the dead worker's listener is being torn down is reset by
        # the kernel; a charger tries again, as real ones do.
        for device in by_worker["wk-1"]:
            for attempt in range(5):
                try:
                    await device.connect(port, iccid=iccid(device.physical_id - FIRST_PID))
                    await device.send(0x22)
                    await device.recv(timeout=START)
                    break
                except ConnectionError:
                    if attempt == 4:
                        raise
        ended = [r.getMessage() for r in caplog.records if "ended" in r.getMessage()]
        assert ended == ["gateway worker wk-1 ended (signal SIGKILL); restarting it in 1 s"]
        async with asyncio.timeout(START), first.changed:
            await first.changed.wait_for(lambda: first.starts == 2 and first.up)
        # Its will said offline; the new wk-1 says online again.
        await mqtt.wait(presence, lambda m: m["state"] == "offline", timeout=START)
        await mqtt.wait(presence, lambda m: m["state"] == "online", timeout=START)
        # wk-1 serves chargers again: new ones land on it sooner or later.
        landed = None
        for index in range(CHARGERS, 4 * CHARGERS):
            _, landed = await online(mqtt, port, index)
            if landed == "wk-1":
                break
        assert landed == "wk-1"
        for device in held:
            await device.close()


class Cli:
    """`python -m bridge ARGS` with its stderr read all along (a full pipe would stall it)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", *args, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._new:
                self.lines.append(line.decode())
                self._new.notify_all()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def line(self, text: str) -> str:
        """The first line containing `text`, waiting for it."""
        async with asyncio.timeout(START), self._new:
            while not (found := [line for line in self.lines if text in line]):
                if self._reader.done():
                    raise AssertionError(f"exited without {text!r}:\n{self.text}")
                await self._new.wait()
            return found[0]

    async def status(self) -> int:
        async with asyncio.timeout(START):
            status = await self.proc.wait()
            await self._reader
        return status

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("role", ["gateway", "run"])
async def test_sigterm_stops_every_worker_and_exits_0(
    broker: Mosquitto, tmp_path: Path, role: str
) -> None:
    port = free_port()
    proc = await Cli.start(
        role,
        *("--mqtt", broker.url, "--base-topic", B, "--gateway-id", "term"),
        *("--tcp", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "s"), "--workers", "2"),
    )
    try:
        async with mqtt_collector(broker, f"{B}/devices/+") as mqtt:
            await proc.line("gateway workers running")
            pids = [int(line.split("pid=")[1].split()[0]) for line in proc.lines if "pid=" in line]
            assert len(pids) == 2
            device, gateway_id = await online(mqtt, port, 0)
            assert gateway_id in {"term-1", "term-2"}
            proc.proc.send_signal(signal.SIGTERM)
            assert await proc.status() == 0, proc.text
            assert proc.text.count("gateway stopped") == 2, proc.text
            assert not any(alive(pid) for pid in pids)
            # The worker holding it said goodbye for it, as one gateway does on SIGTERM.
            await mqtt.wait(f"{B}/devices/{FIRST_PID:08X}", lambda m: not m["online"])
            await device.closed_by_peer()
    finally:
        await proc.close()


@pytest.mark.parametrize("bad", ["0", "-1", "65", "two"])
def test_a_bad_number_of_workers_is_one_line(bad: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "gateway", "--workers", bad],
        capture_output=True,
        timeout=60,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "option workers" in err, err


async def test_a_worker_that_cannot_start_ends_the_supervisor(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """A port taken by a process that did not set SO_REUSEPORT: no worker can listen, and
    the supervisor says so and exits 1 instead of restarting them forever."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        proc = await Cli.start(
            "gateway",
            *("--mqtt", broker.url, "--base-topic", B, "--gateway-id", "bad"),
            *("--tcp", f"127.0.0.1:{port}", "--state-dir", str(tmp_path), "--workers", "2"),
        )
        try:
            status = await proc.status()
        finally:
            await proc.close()
        err = proc.text
        assert status == 1, err
        assert "could not start" in err and "restarting" not in err, err
        assert "Traceback" not in err, err
    finally:
        taken.close()


async def test_workers_without_a_tcp_listener_are_refused(tmp_path: Path) -> None:
    base = load_settings(GatewaySettings, {"state_dir": str(tmp_path), "workers": 2, "tcp": "none"})
    with pytest.raises(StartupError, match="option workers"):
        await Supervisor(base).run()


def test_worker_settings_name_the_worker_and_keep_serial_on_worker_1(tmp_path: Path) -> None:
    base = load_settings(
        GatewaySettings,
        {
            "gateway_id": "box",
            "state_dir": str(tmp_path),
            "workers": 3,
            "serial": ["loop://"],
            "metrics": "127.0.0.1:9100",
            "homeassistant": "true",
            "web": "127.0.0.1:8080",
        },
    )
    one, two = (worker_settings(base, k, ["127.0.0.1:7054"]) for k in (1, 2))
    assert (one.gateway_id, two.gateway_id) == ("box-1", "box-2")
    assert (one.state_dir, two.state_dir) == (tmp_path / "worker-1", tmp_path / "worker-2")
    assert (one.serial, two.serial) == (["loop://"], [])
    assert (one.homeassistant, two.homeassistant) == (True, False)
    assert (one.metrics, two.metrics) == ("127.0.0.1:9100", "127.0.0.1:9101")
    assert one.web == two.web == "" and one.workers == two.workers == 1


def test_pins_shared_by_two_processes_hold_in_both(tmp_path: Path) -> None:
    """Two stores on one file stand for two workers: a pin or unpin made by one is what
    the other acts on, and a pin made first is never replaced by the other's."""
    path = tmp_path / "pins.sqlite3"
    a = SqlitePinStore(path, shared=True)
    b = SqlitePinStore(path, shared=True)
    try:
        assert a.pin(1, "89860000000000000001")
        assert b.fresh(1) == "89860000000000000001"
        assert b.pin(2, "89860000000000000002") and a.fresh(2) == "89860000000000000002"
        # A race: b did not know of a's pin when it pinned; a's stands, in both.
        a.pin(3, "89860000000000000003")
        b.pins.pop(3, None)
        b.pin(3, "89869999999999999999")
        assert b.pins[3] == a.pins[3] == "89860000000000000003"
        assert b.unpin(1) == "89860000000000000001"
        assert a.fresh(1) is None and 1 not in a.pins
    finally:
        a.close()
        b.close()


class _Crashing:
    """A worker process that says it is up, then dies of SIGKILL at once (a fast unit test of
    the back-off; the real processes are above)."""

    pid = 0
    returncode: int | None = None
    stdin = None

    async def wait(self) -> int:
        self.returncode = -signal.SIGKILL
        return self.returncode


async def test_a_worker_that_keeps_dying_is_given_up_after_backing_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import bridge.workers as workers

    delays: list[float] = []

    async def no_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(workers.asyncio, "sleep", no_sleep)

    class Flaky(Supervisor):
        async def _start(self, worker: workers.Worker) -> Any:
            worker.starts += 1
            worker.proc = _Crashing()  # type: ignore[assignment]
            return worker.proc

        @staticmethod
        async def _came_up(proc: Any) -> bool:
            return True

        @staticmethod
        async def _pump_stdout(proc: Any) -> None:
            return None

    base = load_settings(
        GatewaySettings,
        {"gateway_id": "vm", "state_dir": str(tmp_path), "workers": 2, "tcp": "127.0.0.1:0"},
    )
    with pytest.raises(ExceptionGroup) as raised:
        await Flaky(base).run()
    failures = raised.value.exceptions  # both workers, crashing alike
    assert failures and all(isinstance(f, workers.WorkersFailed) for f in failures)
    assert "vm-1 failed 6 times in a row (last: signal SIGKILL)" in str(failures[0])
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    lines = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert "ended (signal SIGKILL); restarting it in 16 s" in lines[4]
