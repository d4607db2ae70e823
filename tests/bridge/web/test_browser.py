"""The dashboard in a real browser: Debian's chromium driven by Playwright's Python API, with
the real gateway, charging service and simulated chargers on a real Mosquitto carrying the
shipped users and ACL.

No browser is downloaded (`executable_path`); `./run.sh test` installs chromium with apt. Set
CHARGEBRIDGE_SCREENSHOTS=DIR to save the screenshots used in docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.mqtt.topics import Topics
from bridge.simulator import device as simulated
from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from bridge.web import DashboardServer
from bridge.web.server import BrokerAddress
from protocol import Frame
from protocol.ids import device_id
from tests.bridge.charging.harness import running_service, settings_for
from tests.bridge.helpers import gateway_settings, running_gateway, tcp_port
from tests.broker import USERS, Mosquitto

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright (dev extra)")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="Debian's chromium is not installed (./run.sh test installs it with apt)",
)
T = Topics("chargebridge")
WAIT_MS = 20_000
SCREENSHOTS = os.environ.get("CHARGEBRIDGE_SCREENSHOTS")


@dataclass
class Stack:
    broker: Mosquitto
    fleet: Fleet
    dashboard: DashboardServer
    starts: list[tuple[str, int, int]]  # (device_id, wire port, 0x82 command) received
    changed: asyncio.Event  # set whenever `starts` grows

    def ids(self) -> list[str]:
        return [device_id(d.physical_id) for d in self.fleet.devices]

    async def received(self, predicate: Callable[[list[tuple[str, int, int]]], bool]) -> None:
        """Wait until the chargers' record of 0x82 frames satisfies `predicate`."""
        async with asyncio.timeout(WAIT_MS / 1000):
            while not predicate(self.starts):
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def stack(broker: Mosquitto, tmp_path: Path, devices: int = 2) -> AsyncIterator[Stack]:
    """Gateway + charging service + chargers + dashboard; every 0x82 a charger receives is
    recorded (the simulator's own handler still runs)."""
    starts: list[tuple[str, int, int]] = []
    changed = asyncio.Event()
    original = simulated._HANDLERS[0x82]

    def record(dev: simulated.SimulatedDevice, frame: Frame, payload: Any, now: float) -> None:
        starts.append((device_id(dev.physical_id), payload.port, payload.command))
        changed.set()
        original(dev, frame, payload, now)

    simulated._HANDLERS[0x82] = record
    try:
        async with (
            running_gateway(gateway_settings(broker, tmp_path / "gw")) as gateway,
            running_service(settings_for(broker, tmp_path / "svc", request_timeout_s=20.0)),
        ):
            server = DashboardServer("127.0.0.1", 0, BrokerAddress("127.0.0.1", broker.port))
            await server.start()
            target = TcpTarget("127.0.0.1", tcp_port(gateway))
            config = FleetConfig(devices=devices, kind="mixed", speed=60, seed=3)
            try:
                async with Fleet(config, target) as fleet:
                    async with asyncio.timeout(20):
                        await fleet.wait_until(lambda s: s.registered == devices)
                    for index in range(devices):
                        for port in range(2):
                            fleet.plug(index, port)
                    yield Stack(broker, fleet, server, starts, changed)
            finally:
                await server.close()
    finally:
        simulated._HANDLERS[0x82] = original


async def start_as_operator(broker: Mosquitto, dev_id: str, port: int) -> None:
    """A start published straight to the broker by an operator (not through the page)."""
    async with broker.client("operator") as client:
        body = {"request_id": f"py-{dev_id}-{port}", "device_id": dev_id, "port": port}
        await client.publish(T.charging_request("start"), json.dumps(body), qos=1)


@asynccontextmanager
async def browser_page(width: int = 1280, height: int = 900) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert not errors, errors  # no script error while the test ran
        finally:
            await browser.close()


async def log_in(page: Any, url: str, user: str) -> None:
    await page.goto(url)
    login = page.locator("#login")
    await login.wait_for(state="visible", timeout=WAIT_MS)  # Mosquitto refuses anonymous
    await page.fill("#user", user)
    await page.fill("#password", USERS[user])
    await page.click("#login button[type=submit]")
    await page.locator("#conn").filter(has_text=f"as {user}").wait_for(timeout=WAIT_MS)


async def test_monitor_sees_chargers_and_a_live_session_but_cannot_start(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with stack(broker, tmp_path) as s, browser_page() as page:
        first, second = s.ids()
        await page.goto(s.dashboard.url)
        await page.locator("#login").wait_for(state="visible", timeout=WAIT_MS)
        await page.fill("#user", "monitor")
        await page.fill("#password", "wrong")
        await page.click("#login button[type=submit]")
        await (
            page.locator("#login-error").filter(has_text="Login refused").wait_for(timeout=WAIT_MS)
        )
        await log_in(page, s.dashboard.url, "monitor")

        # The gateway and the charging service, from their presence topics.
        header = page.locator("#gateways")
        await header.filter(has_text="gateway test-gw: online").wait_for(timeout=WAIT_MS)
        await header.filter(has_text="charging service: online").wait_for(timeout=WAIT_MS)
        # Every simulated charger is listed, online, with its ports.
        for dev_id in (first, second):
            card = page.locator(f'[data-device="{dev_id}"]')
            await card.locator(".badge.online").wait_for(timeout=WAIT_MS)
            assert await card.locator("tr[data-port]").count() >= 2
        # A session started by someone allowed to shows up live, without a reload.
        await start_as_operator(s.broker, first, 1)
        live = page.locator("#live tr[data-session]").filter(has_text=first)
        await live.filter(has_text="charging").first.wait_for(timeout=WAIT_MS)
        await s.received(lambda r: (first, 0, 1) in r)

        # The monitor's buttons are disabled: the broker refused its probe publish.
        notice = page.locator("#readonly")
        await notice.filter(has_text="may watch but not command").wait_for(timeout=WAIT_MS)
        button = f'[data-device="{second}"] tr[data-port="1"] [data-action="start"]'
        start = page.locator(button)
        assert await start.is_disabled()
        # Pressed anyway (the button re-enabled by hand): the broker refuses the request, the
        # page says so, and the charger receives nothing. Found and pressed in one page task:
        # `start.evaluate` finds the element first, and a re-render in between (the page
        # redraws a card on every state message) left it detached, the click going nowhere.
        await page.evaluate(
            "sel => { const b = document.querySelector(sel); b.disabled = false; b.click(); }",
            button,
        )
        result = page.locator(f'[data-device="{second}"] [data-role="result"]')
        await result.filter(has_text="refused by the broker").wait_for(timeout=WAIT_MS)
        assert "not authorized" in await result.inner_text()
        # A later start by the operator arrives; the monitor's never did, before or after it.
        await start_as_operator(s.broker, first, 2)
        await s.received(lambda r: (first, 1, 1) in r)
        assert [r for r in s.starts if r[0] == second] == []
        if SCREENSHOTS:
            await asyncio.to_thread(Path(SCREENSHOTS).mkdir, parents=True, exist_ok=True)
            await page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-monitor.png"))


async def test_operator_starts_a_port_and_the_charger_receives_0x82(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with stack(broker, tmp_path, devices=3) as s, browser_page() as page:
        first, second, _third = s.ids()
        await log_in(page, s.dashboard.url, "operator")
        card = page.locator(f'[data-device="{second}"]')
        await card.locator(".badge.online").wait_for(timeout=WAIT_MS)
        assert await page.locator("#readonly").is_hidden()

        await card.locator('tr[data-port="1"] [data-action="start"]').click()
        result = card.locator('[data-role="result"]')
        await result.filter(has_text="start port 1: ok").wait_for(timeout=WAIT_MS)
        assert (second, 0, 1) in s.starts  # wire port 0 = port 1, command 1 = start
        await (
            page.locator("#live tr[data-session]")
            .filter(has_text=second)
            .first.wait_for(timeout=WAIT_MS)
        )
        # Live power reaches the port row once the charger reports (0x06).
        await (
            card.locator('tr[data-port="1"] td.power')
            .filter(has_text="W")
            .wait_for(timeout=WAIT_MS)
        )
        # Locate answers through the gateway; the response is shown on the card.
        await card.locator('[data-action="locate"]').click()
        await result.filter(has_text="locate: ok").wait_for(timeout=WAIT_MS)

        if SCREENSHOTS:
            await screenshots(page, s, first, Path(SCREENSHOTS))


async def screenshots(page: Any, s: Stack, first: str, out: Path) -> None:
    """Desktop and phone-width views for the docs, with a little more going on."""
    await start_as_operator(s.broker, first, 1)
    await start_as_operator(s.broker, first, 2)
    await s.received(lambda r: (first, 1, 1) in r)
    await page.locator("#live tr[data-session]").nth(2).wait_for(timeout=WAIT_MS)
    stop = page.locator(f'[data-device="{first}"] tr[data-port="2"] [data-action="stop"]')
    await stop.click()
    await page.locator("#recent tr[data-session]").first.wait_for(timeout=WAIT_MS)
    await page.wait_for_timeout(6000)  # a power report or two, for the figures
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(out / "dashboard-desktop.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.wait_for_timeout(500)
    await page.screenshot(path=str(out / "dashboard-phone.png"))
