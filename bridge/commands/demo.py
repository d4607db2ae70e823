"""`chargebridge demo`: broker, gateway, charging service and simulated chargers in one process,
with a live view of chargers, ports, sessions and statistics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from pydantic import Field
from rich.console import Console
from rich.live import Live

from bridge.app import GatewayApp, run_service
from bridge.commands.common import run_role
from bridge.commands.run import RunSettings, broker_for
from bridge.config import StrList, add_settings_arguments
from bridge.demo.driver import DemoDriver
from bridge.demo.view import LiveState, render
from bridge.mqtt.client import MqttClient, payload_bytes
from bridge.mqtt.topics import Topics
from bridge.simulator.device import UserBehaviour
from bridge.simulator.fleet import KINDS, Fleet, FleetConfig, TcpTarget
from bridge.web import dashboard

HELP = "everything in one process with simulated chargers and a live view of the sessions"

PLAIN_EVERY_S = 2.0


class DemoSettings(RunSettings):
    devices: int = Field(default=5, ge=1, le=5000, description="simulated chargers")
    kind: str = Field(
        default="mixed-legacy", description="2, 10, 16, legacy, mixed or mixed-legacy"
    )
    speed: float = Field(
        default=600.0, gt=0, le=100_000, description="device time runs this much faster"
    )
    seed: int = Field(default=1, description="seed of the simulation (reproducible runs)")
    duration: float = Field(default=0.0, ge=0, description="stop after so many seconds; 0: never")
    # Demo defaults: an ephemeral local device port, cards accepted, its own state directory.
    tcp: StrList = Field(default=["127.0.0.1:0"], description="device TCP listener HOST:PORT")
    card_policy: str = Field(default="accept", description="answer to card swipes")  # type: ignore[assignment]
    state_dir: Path = Field(
        default=Path("./chargebridge-state/demo"), description="directory for durable state"
    )
    stats_interval: float = Field(default=1.0, gt=0, description="seconds between stats")
    # The simulated chargers' clock runs `speed` times faster, and so do their frames: a
    # real charger's 20 frames/s limit would throttle them (docs/reliability.md).
    frame_rate_limit: float = Field(
        default=1_000_000.0, gt=0, description="frames per second accepted from one device"
    )
    log_level: str = Field(default="warning", description="minimum level logged")  # type: ignore[assignment]
    web: str = Field(
        default="127.0.0.1:8080",
        description="browser dashboard HOST:PORT (empty: off; any free port if 8080 is taken)",
        pattern=r"^$|^.+:\d{1,5}$",
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise OSError(f"option kind: must be one of {', '.join(KINDS)} (got {kind!r})")


async def show(state: LiveState, mqtt: MqttClient, console: Console) -> None:
    """Fold MQTT messages into the view and draw it: rich on a terminal, plain lines otherwise."""

    async def fold() -> None:
        async for message in mqtt.messages:
            before = state.sessions.get(topics_session(state, str(message.topic)), {})
            state.apply(str(message.topic), payload_bytes(message))
            if not console.is_terminal:
                announce_completion(console, before, state, str(message.topic))

    async with asyncio.TaskGroup() as tg:
        tg.create_task(fold())
        if console.is_terminal:
            with Live(render(state), console=console, refresh_per_second=4) as live:
                while True:
                    await asyncio.sleep(0.25)  # the view's refresh cadence
                    live.update(render(state))
        else:
            while True:
                await asyncio.sleep(PLAIN_EVERY_S)
                console.print(state.summary_line(), soft_wrap=True)


def topics_session(state: LiveState, topic: str) -> str:
    return state.topics.parse_session(topic) or ""


def announce_completion(
    console: Console, before: dict[str, object], state: LiveState, topic: str
) -> None:
    session_id = topics_session(state, topic)
    after = state.sessions.get(session_id, {})
    if after.get("status") == "completed" and before.get("status") != "completed":
        console.print(
            f"session {session_id[:12]}… completed: device {after.get('device_id')} "
            f"port {after.get('port')}, {float(after.get('energy_kwh') or 0):.3f} kWh "
            f"in {after.get('duration_s')} s, {after.get('stop_reason')}",
            soft_wrap=True,
        )


async def serve(settings: DemoSettings) -> None:
    _check_kind(settings.kind)
    if settings.workers != 1:
        raise OSError("option workers: the demo runs one gateway process (--workers is for run)")
    console = Console(stderr=False)
    topics = Topics(settings.base_topic)
    fallback = "web" not in settings.model_fields_set  # only the default port may move
    async with (
        broker_for(settings) as effective,
        dashboard(effective, announce=True, fallback_port=fallback),
    ):
        gateway = GatewayApp(effective)
        gateway_ready, service_ready = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as roles:
            # One client after the other: amqtt 0.12 can fail a connection that races
            # another client's subscriptions.
            service = roles.create_task(run_service(effective, ready=service_ready))
            gw: asyncio.Task[None] | None = None
            try:
                async with asyncio.timeout(15):
                    await service_ready.wait()
                    gw = roles.create_task(gateway.serve(ready=gateway_ready))
                    await gateway_ready.wait()
                host, port = gateway.tcp_addresses[0]
                await run_fleet(settings, effective, topics, console, TcpTarget(host, port))
            finally:
                # Chargers first (no new frames), then the gateway flushes, then the service.
                if gw is not None:
                    gw.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await gw
                service.cancel()


async def run_fleet(
    settings: DemoSettings,
    effective: RunSettings,
    topics: Topics,
    console: Console,
    target: TcpTarget,
) -> None:
    config = FleetConfig(
        devices=settings.devices,
        kind=settings.kind,
        speed=settings.speed,
        seed=settings.seed,
        auto_plug=True,
        # Users wait an hour for a start; the driver answers within a heartbeat or two.
        users=UserBehaviour(plug_mean_s=600.0, patience_s=3600.0),
    )
    state = LiveState(topics)
    viewer = MqttClient(
        effective.mqtt_settings(client_id=""), subscriptions=[(t, 1) for t in state.subscriptions]
    )
    driver_mqtt = MqttClient(effective.mqtt_settings(client_id=""))
    driver = DemoDriver(driver_mqtt, topics)
    driver_mqtt.subscriptions = driver.subscriptions
    console.print(
        f"chargebridge demo: {settings.devices} simulated chargers ({settings.kind} ports) on "
        f"{target.host}:{target.port}, time x{settings.speed:g}; Ctrl-C to stop",
        soft_wrap=True,
    )
    async with viewer:
        async with asyncio.timeout(15):
            await viewer.wait_connected()
        async with driver_mqtt:
            async with asyncio.timeout(15):
                await driver_mqtt.wait_connected()
            await _drive(settings, state, viewer, driver, console, config, target)


async def _drive(
    settings: DemoSettings,
    state: LiveState,
    viewer: MqttClient,
    driver: DemoDriver,
    console: Console,
    config: FleetConfig,
    target: TcpTarget,
) -> None:
    async with Fleet(config, target) as fleet:
        tasks = [
            asyncio.create_task(driver.run(), name="demo-driver"),
            asyncio.create_task(show(state, viewer, console), name="demo-view"),
            asyncio.create_task(_run_for(settings.duration), name="demo-clock"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a crashed driver or view ends the demo with its error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            console.print(state.summary_line(), soft_wrap=True)
            snap = fleet.snapshot()
            console.print(
                f"simulator: {snap['registered']}/{snap['devices']} chargers registered, "
                f"{snap['sessions_completed']} sessions completed, "
                f"{snap['settlements_acked']}/{snap['settlements_sent']} settlement frames "
                f"acknowledged, {snap['energy_reported_kwh']:.3f} kWh reported",
                soft_wrap=True,
            )


async def _run_for(seconds: float) -> None:
    if seconds:
        await asyncio.sleep(seconds)
    else:
        await asyncio.Event().wait()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, DemoSettings)


def main(args: argparse.Namespace) -> int:
    code = run_role("demo", DemoSettings, args, serve)
    if code == 0:
        print("demo stopped", file=sys.stderr)
    return code
