"""The whole system as operators run it, for fault injection: real processes, real broker.

`System` starts `python -m bridge gateway` and `python -m bridge service` as separate
processes against the test's Mosquitto, with short keepalives and intervals so that faults are
detected in seconds. `Charger` is a scripted charger on a real TCP connection: it answers
0x82 start commands, sends 0x06 power reports and resends each 0x03 settlement with the same
message id until the gateway acknowledges it, as a real device does. `Ledger` records what a
scenario made the devices send, so a test can compare it with what the charging service
counted: the exact set, once each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import protocol as p
from protocol.ids import device_id, order_no_hex
from tests.bridge.helpers import TIMEOUT, FakeDevice, MqttCollector, lasting_collector
from tests.broker import Mosquitto, free_port

B = "chargebridge"
KEEPALIVE_S = 2  # a silent broker is noticed after about two keepalives
SETTLEMENT_RESEND_S = 1.0  # real devices wait 30 min; the gateway must not care


class Role:
    """One `python -m bridge ROLE` process; its output goes to a log file (never a pipe that
    could fill up and block it)."""

    def __init__(self, role: str, args: list[str], log_path: Path) -> None:
        self.role = role
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", self.role, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(asyncio.to_thread(self.proc.wait), TIMEOUT)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class System:
    """Gateway and charging service processes plus a collector of everything under `{b}/#`."""

    def __init__(self, broker: Mosquitto, workdir: Path, mqtt: MqttCollector) -> None:
        self.broker = broker
        self.mqtt = mqtt
        self.tcp_port = free_port()
        common = ["--mqtt", broker.url, "--mqtt-keepalive-s", str(KEEPALIVE_S)]
        common += ["--stats-interval", "0.2", "--gateway-id", "faults-gw"]
        self.gateway = Role(
            "gateway",
            [
                *common,
                "--tcp",
                f"127.0.0.1:{self.tcp_port}",
                "--state-dir",
                str(workdir / "gateway"),
                "--command-timeout-s",
                "2",
            ],
            workdir / "gateway.log",
        )
        self.service = Role(
            "service",
            [
                *common,
                "--state-dir",
                str(workdir / "service"),
                "--service-client-id",
                "faults-service",
                "--request-timeout-s",
                "20",
                "--cleanup-interval-s",
                "0.5",
            ],
            workdir / "service.log",
        )

    async def stats(self, **expected: Any) -> dict[str, Any]:
        """The first `charging/stats` carrying all `expected` values (waits for it)."""
        try:
            stats: dict[str, Any] = await self.mqtt.latest(
                f"{B}/charging/stats",
                lambda m: all(m.get(k) == v for k, v in expected.items()),
                timeout=30,
            )
        except TimeoutError:
            seen = self.mqtt.all(f"{B}/charging/stats")
            raise AssertionError(
                f"stats never reached {expected}; last: {seen[-1:] if seen else None}\n"
                f"service log:\n{self.service.log()}\ngateway log:\n{self.gateway.log()}"
            ) from None
        return stats

    def sessions(self) -> dict[str, dict[str, Any]]:
        """The latest state of every session seen on `{b}/sessions/+`."""
        latest: dict[str, dict[str, Any]] = {}
        for m in self.mqtt.messages:
            if m.topic.startswith(f"{B}/sessions/") and m.payload:
                latest[m.topic.rsplit("/", 1)[1]] = m.json()
        return latest

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Every `event/{kind}` message received, duplicates included, in arrival order."""
        return [
            m.json()
            for m in self.mqtt.messages
            if m.topic.startswith(f"{B}/devices/") and m.topic.endswith(f"/event/{kind}")
        ]

    async def start_session(self, charger: Charger, port: int, request_id: str) -> str:
        """A start request through the charging service; the charger accepts it."""
        await self.request(
            "start", {"request_id": request_id, "device_id": charger.id, "port": port}
        )
        order_no = await charger.accept_start()
        response = await self.mqtt.wait(
            f"{B}/charging/response/start", lambda m: m["request_id"] == request_id
        )
        assert response["ok"], response
        assert response["session"]["session_id"] == order_no_hex(order_no)
        return order_no_hex(order_no)

    async def request(self, action: str, body: dict[str, Any]) -> None:
        async with self.broker.client("operator") as op:
            await op.publish(f"{B}/charging/request/{action}", json.dumps(body), qos=1)


@asynccontextmanager
async def running_system(broker: Mosquitto, workdir: Path) -> AsyncIterator[System]:
    """Both roles started, the gateway online and the service current."""
    async with lasting_collector(broker, f"{B}/#", client_id="faults-watch") as mqtt:
        system = System(broker, workdir, mqtt)
        system.gateway.start()
        system.service.start()
        try:
            await mqtt.wait(
                f"{B}/gateways/faults-gw/state", lambda m: m["state"] == "online", timeout=30
            )
            await system.stats()  # the service republishes its statistics once current
            yield system
        finally:
            system.gateway.close()
            system.service.close()


@dataclass
class Ledger:
    """What the chargers sent: per order, the 0x06 reports and the settlement (energy in
    0.01 kWh, as on the wire)."""

    reports: dict[str, list[int]] = field(default_factory=dict)
    settled: dict[str, int] = field(default_factory=dict)

    @property
    def energy_kwh(self) -> float:
        return round(sum(self.settled.values()) / 100, 2)

    @property
    def report_count(self) -> int:
        return sum(len(r) for r in self.reports.values())


class Charger(FakeDevice):
    """A scripted charger: every frame it sends is recorded in the ledger."""

    def __init__(self, ledger: Ledger, physical_id: int = 0x04AB373B) -> None:
        super().__init__(physical_id)
        self.ledger = ledger
        self.acked: set[int] = set()  # settlements already acknowledged

    async def recv(self, timeout: float = TIMEOUT) -> p.Frame:
        """The next frame, without late acknowledgements of a settlement that was resent
        (each copy is answered; the device ignores all but the first)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await super().recv()
                if not (frame.command == 0x03 and frame.message_id in self.acked):
                    return frame

    @property
    def id(self) -> str:
        return device_id(self.physical_id)

    async def online(self) -> None:
        """A 0x22 time request, answered: the gateway knows us on this connection."""
        mid = await self.send(0x22)
        reply = await self.recv()
        assert (reply.command, reply.message_id) == (0x22, mid)

    async def accept_start(self) -> bytes:
        frame = await self.recv()
        assert frame.command == 0x82, frame
        control = p.decode_payload(0x82, frame.data, p.Sender.SERVER)
        assert isinstance(control, p.ChargeControl) and control.command == 1
        reply = p.ChargeControlReply(
            result=0, order_no=control.order_no, port=control.port, waiting_ports=0
        )
        await self.send(0x82, p.encode_payload(reply), message_id=frame.message_id)
        return control.order_no

    async def report(self, order_no: str, port: int, energy: int, minutes: int) -> None:
        """One 0x06 (no reply in the protocol); `energy` in 0.01 kWh, order total so far."""
        payload = p.PortPowerReport(
            port=port - 1,
            status=1,
            duration=minutes * 60,
            energy=energy,
            start_mode=1,
            power=1800,
            max_power=1850,
            min_power=1750,
            average_power=1800,
            order_no=bytes.fromhex(order_no),
            period_energy=5,
            peak_power=1900,
            voltage=2300,
            current=780,
            ambient_temperature=90,
            port_temperature=0,
        )
        await self.send(0x06, p.encode_payload(payload))
        self.ledger.reports.setdefault(order_no, []).append(energy)

    def settlement(self, order_no: str, port: int, energy: int) -> bytes:
        return p.encode_payload(
            p.Settlement(
                duration=3600,
                max_power=1850,
                energy=energy,
                port=port - 1,
                start_mode=1,
                card_id=bytes(4),
                stop_reason=1,
                order_no=bytes.fromhex(order_no),
            )
        )

    async def settle(self, order_no: str, port: int, energy: int, timeout: float = 60) -> int:
        """Send the 0x03 and resend it (same message id) until acknowledged; returns the
        number of sends."""
        data = self.settlement(order_no, port, energy)
        self.ledger.settled[order_no] = energy
        mid = await self.send(0x03, data)
        sends = 1
        async with asyncio.timeout(timeout):
            while True:
                with suppress(TimeoutError):
                    reply = await self.recv(timeout=SETTLEMENT_RESEND_S)
                    if reply.command == 0x03 and reply.message_id == mid:
                        self.acked.add(mid)
                        return sends
                    continue
                await self.send(0x03, data, message_id=mid)
                sends += 1


def assert_exactly_once(system: System, ledger: Ledger, stats: dict[str, Any]) -> None:
    """Nothing lost, nothing counted twice: events, sessions and statistics agree with the
    ledger."""
    powers = system.events("port")
    got_reports = {(e["order_no"], round(e["energy_kwh"] * 100)) for e in powers}
    sent_reports = {(o, e) for o, energies in ledger.reports.items() for e in energies}
    assert got_reports == sent_reports, "0x06 reports lost or invented"
    settled = [e for e in system.events("order") if e["type"] == "settled"]
    assert {e["order_no"]: round(e["energy_kwh"] * 100) for e in settled} == ledger.settled
    sessions = system.sessions()
    for order_no, energy in ledger.settled.items():
        session = sessions[order_no]
        assert session["status"] == "completed", session
        assert round(session["energy_kwh"] * 100) == energy
    assert stats["sessions_completed"] == len(ledger.settled)
    assert stats["power_update_events"] == ledger.report_count
    assert stats["total_energy_delivered_kwh"] == ledger.energy_kwh
    assert stats["processing_errors"] == 0
    assert stats["active_sessions"] == 0
