"""`chargebridge run`: gateway and charging service in one process (one event loop).

They still talk only through MQTT topics, exactly as when run apart. Without a configured
broker (`--mqtt`, `CHARGEBRIDGE_MQTT` or `mqtt` in the config file) an embedded broker is
started on 127.0.0.1:`broker_port`. With `--workers N` this process keeps the broker and the
charging service and supervises N gateway worker processes connecting to that broker.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import Field

from bridge import statedir
from bridge.app import run_service
from bridge.broker import BrokerPortInUse, EmbeddedBroker
from bridge.charging.settings import ChargingSettings
from bridge.charging.store import StoreError
from bridge.commands.common import run_role
from bridge.config import GatewaySettings, add_settings_arguments
from bridge.web import dashboard
from bridge.workers import run_gateways

HELP = "run gateway + charging service in one process (embedded broker unless --mqtt is given)"


class RunSettings(GatewaySettings, ChargingSettings):
    """Both roles' options, plus the embedded broker's port."""

    broker_port: int = Field(
        default=1883,
        ge=1,
        le=65535,
        description="port of the embedded broker, started when no broker is configured",
    )

    @property
    def embedded_broker(self) -> bool:
        return "mqtt" not in self.model_fields_set


@asynccontextmanager
async def broker_for(settings: RunSettings) -> AsyncIterator[RunSettings]:
    """Yield settings pointing at the configured broker, or at a freshly started embedded one."""
    if not settings.embedded_broker:
        yield settings
        return
    async with EmbeddedBroker(port=settings.broker_port) as broker:
        print(
            f"embedded MQTT broker on 127.0.0.1:{broker.port}; watch it with:\n"
            f"  mosquitto_sub -h 127.0.0.1 -p {broker.port} -t '{settings.base_topic}/#' -v",
            file=sys.stderr,
            flush=True,
        )
        yield settings.model_copy(update={"mqtt": broker.url, "mqtt_protocol": "3.1.1"})


async def run_both(
    settings: RunSettings,
    *,
    gateway_ready: asyncio.Event | None = None,
    service_ready: asyncio.Event | None = None,
    one_after_the_other: bool = False,
) -> None:
    """Both roles until cancelled. Normally neither waits for the other: the gateway serves
    chargers even while the broker (and so the service) is unreachable. On the embedded broker
    they connect one after the other: amqtt 0.12 can fail a connection that races another
    client's subscriptions ("dictionary changed size during iteration")."""
    service_ready = service_ready or asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_service(settings, ready=service_ready), name="charging-service")
            if one_after_the_other:
                await service_ready.wait()
            tg.create_task(run_gateways(settings, ready=gateway_ready), name="gateway")
    except* StoreError as group:
        raise group.exceptions[0] from None  # one line naming the store and the fix, exit 1


async def serve(settings: RunSettings) -> None:
    """The state dir is locked first, before the embedded broker, the dashboard or any MQTT
    connection: a second `run` on it stops with one line and disturbs nothing."""
    try:
        with statedir.locked(settings.state_dir, "service"):
            async with broker_for(settings) as effective, dashboard(effective, announce=True):
                await run_both(effective, one_after_the_other=settings.embedded_broker)
    except BrokerPortInUse as exc:
        raise OSError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, RunSettings)


def main(args: argparse.Namespace) -> int:
    return run_role("run", RunSettings, args, serve)
