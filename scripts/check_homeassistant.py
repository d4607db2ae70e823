#!/usr/bin/env python3
"""Check chargebridge's Home Assistant discovery against a real Home Assistant Core.

Too heavy for the test suite (Home Assistant and its dependencies are ~300 MB and start in
tens of seconds), so it is a script run by hand or in a nightly job:

    python3.11 -m venv /tmp/ha
    /tmp/ha/bin/pip install homeassistant==2024.3.3 'josepy<2' paho-mqtt==1.6.1 \\
        aiohttp_cors==0.7.0 aiohttp-fast-url-dispatcher==0.3.0 aiohttp-zlib-ng==0.3.1 \\
        Pillow==10.2.0 PyTurboJPEG==1.7.1
    .venv/bin/python scripts/check_homeassistant.py --ha-python /tmp/ha/bin/python

(2024.3.3 is the last Home Assistant for Python 3.11; josepy 2.x breaks its HTTP server with
`ComparableX509` errors; the other packages are what the http, mqtt and onboarding
integrations would otherwise pip-install at start.)

It starts a real Mosquitto (tests/broker.py, the shipped ACL and users), Home Assistant Core
with its HTTP API, makes the owner through `/api/onboarding/users` and `/auth/token`, adds
MQTT through the REST config flow (`POST /api/config/config_entries/flow`, handler `mqtt`,
as the ACL's `homeassistant` user), then `chargebridge run --homeassistant` and simulated
two-port chargers (two `chargebridge simulate` processes: 2 + 1 chargers), and checks:

1. the entity count (24 per two-port charger) and that they are available;
2. Locate, Start charging and Stop charging pressed in Home Assistant reach the charger (its
   response on MQTT), and the Last command / Last charging request sensors show the results;
3. forgetting a charger (offline, retained state cleared) removes its entities;
4. after a Home Assistant restart, every port device is linked to its charger (`via_device`
   in `.storage/core.device_registry`) and the entities come back;
5. no ERROR line in Home Assistant's log across all of it.

Prints one JSON summary; exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.broker import USERS, Mosquitto, free_port  # noqa: E402

B = "chargebridge"
PER_CHARGER = 24  # 8 charger entities + 8 per port, two ports
ENTITY_RE = re.compile(r"^[a-z_]+\.charger_(\d+)_")


class CheckFailed(Exception):
    pass


class HomeAssistant:
    """One Home Assistant Core process on a config dir, and its REST API."""

    def __init__(self, python: str, config: Path, port: int) -> None:
        self.python = python
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.token = ""
        self.refresh = ""
        self.client_id = f"{self.url}/"

    def write_config(self) -> None:
        self.config.mkdir(parents=True, exist_ok=True)
        (self.config / "configuration.yaml").write_text(
            "homeassistant:\n  name: chargebridge check\n  latitude: 0\n  longitude: 0\n"
            "  elevation: 0\n  unit_system: metric\n  time_zone: UTC\n  country: DE\n"
            "  currency: EUR\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\nlogger:\n  default: warning\n"
        )

    async def start(self, timeout: float = 600.0) -> None:
        log = open(self.config / "stdout.log", "ab")  # noqa: SIM115, ASYNC230 - kept by the process
        self.proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "homeassistant", "--config", str(self.config), "--log-no-color",
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise CheckFailed(f"Home Assistant exited with {self.proc.returncode}")
            with contextlib.suppress(OSError, CheckFailed):
                status, _ = await self.request("GET", "/api/onboarding")
                if status == 200:
                    return
            await asyncio.sleep(1.0)  # polling a process that offers nothing to await
        raise CheckFailed("Home Assistant did not start its HTTP API")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 120)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def request(
        self, method: str, path: str, body: Any = None, form: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        def call() -> tuple[int, Any]:
            headers = {}
            data = None
            if form is not None:
                data = urllib.parse.urlencode(form).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            elif body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            req = urllib.request.Request(self.url + path, data, headers, method=method)
            try:
                # long: the MQTT config flow waits for the integration's set-up
                with urllib.request.urlopen(req, timeout=300) as resp:
                    raw = resp.read()
                    status = resp.status
            except urllib.error.HTTPError as exc:
                raw, status = exc.read(), exc.code
            try:
                return status, json.loads(raw) if raw else None
            except ValueError:
                return status, raw.decode(errors="replace")

        return await asyncio.to_thread(call)

    async def onboard(self) -> None:
        status, body = await self.request(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": self.client_id,
                "name": "Check",
                "username": "check",
                "password": "check-password-1",
                "language": "en",
            },
        )
        if status != 200:
            raise CheckFailed(f"onboarding: {status} {body}")
        await self._token({"grant_type": "authorization_code", "code": body["auth_code"]})

    async def login_again(self) -> None:
        self.token = ""
        await self._token({"grant_type": "refresh_token", "refresh_token": self.refresh})

    async def _token(self, grant: dict[str, str]) -> None:
        status, body = await self.request(
            "POST", "/auth/token", form={**grant, "client_id": self.client_id}
        )
        if status != 200:
            raise CheckFailed(f"/auth/token: {status} {body}")
        self.token = body["access_token"]
        self.refresh = body.get("refresh_token") or self.refresh

    async def add_mqtt(self, port: int) -> None:
        status, flow = await self.request(
            "POST", "/api/config/config_entries/flow", {"handler": "mqtt"}
        )
        if status != 200:
            raise CheckFailed(f"mqtt config flow: {status} {flow}")
        status, done = await self.request(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {
                "broker": "127.0.0.1",
                "port": port,
                "username": "homeassistant",
                "password": USERS["homeassistant"],
            },
        )
        if status != 200 or done.get("type") != "create_entry":
            raise CheckFailed(f"mqtt config flow step: {status} {done}")

    async def ours(self) -> dict[str, str]:
        """entity_id -> state of chargebridge's entities (named after `Charger N`)."""
        status, states = await self.request("GET", "/api/states")
        if status != 200:
            raise CheckFailed(f"/api/states: {status}")
        return {s["entity_id"]: s["state"] for s in states if ENTITY_RE.match(s["entity_id"])}

    async def wait_entities(self, count: int, timeout: float = 300.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = await self.ours()
            if len(states) == count and "unavailable" not in states.values():
                return states
            await asyncio.sleep(1.0)
        raise CheckFailed(f"expected {count} available entities, have {len(states)}: {states}")

    async def press(self, entity_id: str) -> None:
        status, body = await self.request(
            "POST", "/api/services/button/press", {"entity_id": entity_id}
        )
        if status != 200:
            raise CheckFailed(f"press {entity_id}: {status} {body}")

    def error_lines(self) -> list[str]:
        lines = []
        for name in ("home-assistant.log.1", "home-assistant.log"):
            path = self.config / name
            if path.exists():
                lines += [
                    ln for ln in path.read_text(errors="replace").splitlines() if " ERROR " in ln
                ]
        return lines

    def device_links(self) -> dict[str, Any]:
        """From the device registry Home Assistant saved: ports and their via_device."""
        data = json.loads((self.config / ".storage/core.device_registry").read_text())
        devices = data["data"]["devices"]
        by_ident = {
            ident[1]: d for d in devices for ident in d["identifiers"] if ident[0] == "mqtt"
        }
        ports = {k: d for k, d in by_ident.items() if re.search(r"_port\d+$", k)}
        linked = {
            k: by_ident.get(k.rsplit("_port", 1)[0], {}).get("id") == d.get("via_device_id")
            and d.get("via_device_id") is not None
            for k, d in ports.items()
        }
        chargers = len(by_ident) - len(ports)
        return {"chargers": chargers, "ports": len(ports), "ports_linked": sum(linked.values())}


class Watch:
    """Everything under the base topic, as the monitor user sees it."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.messages: list[tuple[str, bytes]] = []
        self.new = asyncio.Condition()

    async def run(self) -> None:
        async with self.broker.client("monitor") as client:
            await client.subscribe(f"{B}/#", qos=1)
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else b""
                async with self.new:
                    self.messages.append((str(m.topic), payload))
                    self.new.notify_all()

    def devices(self) -> dict[str, dict[str, Any]]:
        out = {}
        for topic, payload in self.messages:
            parts = topic.split("/")
            if len(parts) == 3 and parts[1] == "devices":
                out[parts[2]] = json.loads(payload) if payload else {}
        return out

    def ports(self) -> dict[tuple[str, int], dict[str, Any]]:
        out = {}
        for topic, payload in self.messages:
            parts = topic.split("/")
            if len(parts) == 5 and parts[3] == "ports" and payload:
                out[(parts[2], int(parts[4]))] = json.loads(payload)
        return out

    async def wait(
        self, topic: str, where: Any, timeout: float = 120.0, after: int = 0
    ) -> dict[str, Any]:
        """The first message on `topic` from index `after` on whose JSON matches `where`."""

        def find() -> dict[str, Any] | None:
            for t, payload in self.messages[after:]:
                if t == topic and payload:
                    body = json.loads(payload)
                    if where(body):
                        return body  # type: ignore[no-any-return]
            return None

        async with asyncio.timeout(timeout), self.new:
            while (found := find()) is None:
                await self.new.wait()
            return found

    async def until(self, check: Any, timeout: float = 120.0) -> None:
        async with asyncio.timeout(timeout), self.new:
            await self.new.wait_for(check)


def unknown(states: dict[str, str]) -> list[str]:
    """Sensors without a value yet (buttons are `unknown` until pressed: left out)."""
    return sorted(e for e, s in states.items() if s == "unknown" and e.startswith("sensor."))


def plugged(watch: Watch, devices: set[str]) -> list[tuple[str, int]]:
    """Ports where a simulated user plugged in and waits for a start."""
    return [
        (d, p)
        for (d, p), s in watch.ports().items()
        if s.get("status") == "plugged_not_started" and d in devices
    ]


async def spawn(log: Path, *args: str) -> asyncio.subprocess.Process:
    out = open(log, "ab")  # noqa: SIM115, ASYNC230 - kept by the process
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, stdout=out, stderr=asyncio.subprocess.STDOUT
    )


async def terminate(proc: asyncio.subprocess.Process | None) -> None:
    if proc is not None and proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def check(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"work_dir": str(work)}
    broker = Mosquitto(work / "broker")
    broker.start()
    ha = HomeAssistant(args.ha_python, work / "ha", free_port())
    ha.write_config()
    watch = Watch(broker)
    watcher = asyncio.create_task(watch.run())
    tcp = free_port()
    procs: list[asyncio.subprocess.Process | None] = []
    try:
        t0 = time.monotonic()
        await ha.start()
        report["ha_start_s"] = round(time.monotonic() - t0, 1)
        await ha.onboard()
        await ha.add_mqtt(broker.port)
        bridge = await spawn(
            work / "bridge.log", "run", "--mqtt", broker.url, "--homeassistant",
            "--tcp", f"127.0.0.1:{tcp}", "--state-dir", str(work / "state"),
            "--gateway-id", "check", "--log-level", "warning",
        )  # fmt: skip
        procs.append(bridge)
        # time x30: simulated users plug in within seconds
        sim = ["--kind", "2", "--connect", f"127.0.0.1:{tcp}", "--auto-plug", "--speed", "30",
               "--quiet"]  # fmt: skip
        sim_a = await spawn(work / "sim-a.log", "simulate", "--devices", "2", *sim, "--seed", "1")
        procs.append(sim_a)
        await watch.until(
            lambda: sum(d.get("online", False) for d in watch.devices().values()) == 2
        )
        first_two = set(watch.devices())
        sim_b = await spawn(
            work / "sim-b.log", "simulate", "--devices", "1", "--first-index", "2", *sim
        )
        procs.append(sim_b)
        await watch.until(
            lambda: sum(d.get("online", False) for d in watch.devices().values()) == 3
        )
        [forgotten] = set(watch.devices()) - first_two
        states = await ha.wait_entities(3 * PER_CHARGER)
        report["entities"] = len(states)
        report["unknown_after_start"] = unknown(states)

        # --- buttons ---------------------------------------------------------------
        device_id = sorted(first_two)[0]
        number = watch.devices()[device_id]["device_number"]
        await ha.press(f"button.charger_{number}_locate")
        located = await watch.wait(
            f"{B}/devices/{device_id}/response/locate",
            lambda r: r.get("request_id") == f"homeassistant:{device_id}:locate",
        )
        report["locate"] = located["result"]
        if not located["ok"]:
            raise CheckFailed(f"locate: {located}")
        # Start on a port where a (simulated) user plugged in and waits (users come and go:
        # a few tries); else port 1, where the charger's refusal still proves that the 0x82
        # reached it.
        start: dict[str, Any] = {}
        device_start: dict[str, Any] = {}
        for _ in range(5):
            with contextlib.suppress(TimeoutError):
                await watch.until(lambda: bool(plugged(watch, first_two)), timeout=60)
            waiting = plugged(watch, first_two)
            device_id, port = waiting[0] if waiting else (sorted(first_two)[0], 1)
            number = watch.devices()[device_id]["device_number"]
            mark = len(watch.messages)
            await ha.press(f"button.charger_{number}_port_{port}_start_charging")
            wanted = f"homeassistant:{device_id}:{port}:start"
            start = await watch.wait(
                f"{B}/charging/response/start",
                lambda r, wanted=wanted: r.get("request_id") == wanted,
                after=mark,
            )
            device_start = await watch.wait(
                f"{B}/devices/{device_id}/response/start_charging", lambda r: True, after=mark
            )
            report.setdefault("start_attempts", []).append(start["message"])
            if start["ok"] or not waiting:
                break
        report["start"] = {"ok": start["ok"], "message": start["message"],
                           "device_result": device_start.get("result")}  # fmt: skip
        if device_start.get("result") in ("offline", "timeout", "invalid", None):
            raise CheckFailed(f"start did not reach the charger: {device_start}")
        mark = len(watch.messages)
        await ha.press(f"button.charger_{number}_port_{port}_stop_charging")
        stop = await watch.wait(
            f"{B}/charging/response/stop",
            lambda r: r.get("request_id") == f"homeassistant:{device_id}:{port}:stop",
            after=mark,
        )
        report["stop"] = {"ok": stop["ok"], "message": stop["message"]}
        if start["ok"]:
            device_stop = await watch.wait(
                f"{B}/devices/{device_id}/response/stop_charging", lambda r: True, after=mark
            )
            report["stop"]["device_result"] = device_stop.get("result")
            if not stop["ok"]:
                raise CheckFailed(f"stop: {stop}")
        await asyncio.sleep(2.0)  # Home Assistant's state machine, no event to await over REST
        states = await ha.ours()
        report["last_command"] = states.get(f"sensor.charger_{number}_last_command")
        report["last_charging_request"] = states.get(
            f"sensor.charger_{number}_last_charging_request"
        )

        # --- forget a charger ----------------------------------------------------------
        await terminate(sim_b)
        await watch.wait(f"{B}/devices/{forgotten}", lambda d: d.get("online") is False)
        async with broker.client() as client:
            for topic in (f"{B}/devices/{forgotten}/ports/1", f"{B}/devices/{forgotten}/ports/2",
                          f"{B}/devices/{forgotten}"):  # fmt: skip
                await client.publish(topic, b"", qos=1, retain=True)
        states = await ha.wait_entities(2 * PER_CHARGER)
        report["entities_after_forget"] = len(states)

        # --- restart Home Assistant -------------------------------------------------------
        await ha.stop()
        report["registry_before_restart"] = ha.device_links()
        await ha.start()
        await ha.login_again()
        states = await ha.wait_entities(2 * PER_CHARGER)
        report["entities_after_restart"] = len(states)
        report["unknown_after_restart"] = unknown(states)
        await ha.stop()
        links = report["registry_after_restart"] = ha.device_links()
        if links["ports"] != links["ports_linked"] or links["chargers"] != 2:
            raise CheckFailed(f"device registry: {links}")
        errors = report["error_lines"] = ha.error_lines()
        if errors:
            raise CheckFailed(f"{len(errors)} ERROR lines in Home Assistant's log")
        report["ok"] = True
    except (CheckFailed, TimeoutError) as exc:
        report["ok"] = False
        report["failure"] = f"{type(exc).__name__}: {exc}"
        report.setdefault("error_lines", ha.error_lines())
    finally:
        await ha.stop()
        for proc in procs:
            await terminate(proc)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        broker.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ha-python",
        default=os.environ.get("HA_PYTHON", "/tmp/ha/bin/python"),
        help="python of a venv with homeassistant==2024.3.3 (see the docstring)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if not Path(args.ha_python).exists():
        print(f"no Home Assistant interpreter at {args.ha_python}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="chargebridge-ha-check-"))
    try:
        report = asyncio.run(check(args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
