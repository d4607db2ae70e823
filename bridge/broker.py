"""The embedded MQTT broker (amqtt) used by `run` and `demo` when no broker is configured.

It exists so that a newcomer sees chargebridge work with nothing installed. Production uses
Mosquitto (see mosquitto.conf): amqtt 0.12 speaks MQTT 3.1.1 only and does not deliver
messages queued for an offline persistent session, so durability is Mosquitto's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883


class _SnapshotDict(dict[str, Any]):
    """amqtt 0.12 iterates its subscription table across `await`s (retained messages for a
    new client, broadcasts) while other clients subscribe; a plain dict then raises
    "dictionary changed size during iteration" and drops the connecting client. Iterating a
    snapshot is what the code means."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(dict.keys(self)))

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return list(dict.items(self))


BROADCAST_BATCH = 1000  # queued messages fanned out per broadcast turn


class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt 0.12 costs event-loop turns per message, and the embedded broker shares its loop
    with the gateway, the service and the simulator, so a turn is slow: the demo published
    more than amqtt could take (settlements unacknowledged, the view frozen). Two fixes:

    * the reader of each connection awaited every packet through `asyncio.wait_for(...,
      keepalive)`, which on Python 3.11 wraps it in a task: two loop turns per PUBLISH, so
      PUBACKs trickled back. With keep_alive 0 it awaits the stream directly and reads all
      that has arrived in one turn. The broker then never times out a silent client; the
      clients still ping and detect a dead broker, and a closed socket is seen at once.
    * each client's loop takes one received message per `asyncio.wait` round, and the
      broadcast loop fans out one per task (two or three turns each); both now handle what
      is queued, up to BROADCAST_BATCH, in one go.
    """

    async def _initialize_client_session(
        self, *args: Any, **kwargs: Any
    ) -> tuple[BrokerProtocolHandler, Session]:
        handler, session = await super()._initialize_client_session(*args, **kwargs)
        session.keep_alive = 0
        return handler, session

    async def _handle_message_delivery(
        self, client_session: Session, handler: BrokerProtocolHandler, wait_deliver: Any
    ) -> bool:
        if not await super()._handle_message_delivery(client_session, handler, wait_deliver):
            return False
        queue = client_session.delivered_message_queue
        for _ in range(min(queue.qsize(), BROADCAST_BATCH)):
            taken: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            taken.set_result(queue.get_nowait())
            if not await super()._handle_message_delivery(client_session, handler, taken):
                return False
        return True

    async def _run_broadcast(self, running_tasks: Any) -> None:
        await super()._run_broadcast(running_tasks)
        for _ in range(min(self._broadcast_queue.qsize(), BROADCAST_BATCH)):
            await super()._run_broadcast(running_tasks)  # queued: its get() does not wait


def _quiet_amqtt_cancellations(loop: asyncio.AbstractEventLoop) -> None:
    """amqtt 0.12 answers each PINGREQ in a task of its own and never retrieves its result: a
    client that disconnects (or the broker shutting down) while one is being written leaves
    "Task exception was never retrieved ... Packet handling was cancelled" at ERROR level. That
    is amqtt's bookkeeping, not a fault of ours or of the client; log it at debug level. Every
    other unhandled exception goes to the handler that was there before."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is not None and type(exc).__module__.startswith("amqtt") and "cancelled" in str(exc):
            log.debug("amqtt: %s", exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class BrokerPortInUse(RuntimeError):
    """The embedded broker's port is taken (often by a Mosquitto already running)."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedBroker:
    """`async with EmbeddedBroker(port=1883) as broker:` -> `broker.url` for MqttSettings."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> EmbeddedBroker:
        if not port_is_free(self.host, self.port):
            raise BrokerPortInUse(
                f"port {self.host}:{self.port} is already in use; choose another with "
                f"--broker-port, or use the broker that listens there with "
                f"--mqtt mqtt://{self.host}:{self.port}"
            )
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}"},
            },
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        _quiet_amqtt_cancellations(asyncio.get_running_loop())
        self._broker = _Broker(config)
        self._broker._subscriptions = _SnapshotDict(self._broker._subscriptions)
        await self._broker.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self._broker.shutdown()
            self._broker = None
