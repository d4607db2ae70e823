"""Prometheus metrics (opt-in `--metrics HOST:PORT`), a self-contained unit of the gateway.

Served at `http://HOST:PORT/metrics` by a small HTTP server on the gateway's own event loop, so
a scrape reads the gateway's counters without locks. What is exported:

- the gateway's counters of `{b}/gateways/{gateway_id}/stats` (`chargebridge_gateway_*`), read
  at scrape time, and `chargebridge_gateway_info{gateway_id}` (1) naming the gateway;
- presence as the broker shows it: `chargebridge_gateways_online` / `chargebridge_gateways_known`
  (every gateway's `{b}/gateways/+/state` on the base topic, so one scrape sees the others too),
  `chargebridge_charging_up` (1 while `{b}/charging/state` is online) and
  `chargebridge_charging_instances` (its live instances);
- `chargebridge_frames_total{direction, command, name}`: frames per DNY command, from a frame tap;
- `chargebridge_command_latency_seconds{command}`: time from sending a command (0x80 and up)
  to the device's reply with the same message id (a resend keeps the first send time);
- `chargebridge_mqtt_outbox_messages`: messages not yet acknowledged by the broker;
- `chargebridge_charging_*`: the charging service's statistics as it publishes them on
  `{b}/charging/stats`, so they are exported even when the service runs on another machine;
- `chargebridge_webhooks_*`: the webhook unit's counters from `{b}/charging/webhooks/stats`
  (`queued` is a gauge; delivered, failures, dead_lettered, dropped are counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.config import GatewaySettings
from bridge.gateway.core import Gateway
from bridge.gateway.registry import Device
from bridge.mqtt.client import MqttClient
from bridge.mqtt.topics import Topics
from protocol import Frame, Sender, command_name

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0)
PENDING_COMMANDS = 10_000  # commands awaiting a reply, for latency; oldest forgotten beyond
MAX_REQUEST_BYTES = 8192
GAUGES = {"connections", "devices_online"}
CHARGING_GAUGES = {
    "active_sessions",
    "average_session_duration_s",
    "average_processing_time_ms",
}


class _GatewayCollector(Collector):
    """Reads the live counters at scrape time (nothing is copied between scrapes)."""

    def __init__(self, unit: MetricsUnit) -> None:
        self.unit = unit

    def collect(self) -> Iterator[Metric]:
        gateway = self.unit.gateway
        counters = gateway.stats.counters(
            len(gateway.registry.conns), gateway.registry.online_count()
        )
        info = GaugeMetricFamily(
            "chargebridge_gateway_info", "the gateway serving these metrics", labels=["gateway_id"]
        )
        info.add_metric([gateway.publishing.gateway_id], 1.0)
        yield info
        for name, value in counters.items():
            doc = f"gateway {name.replace('_', ' ')} (see {{b}}/gateways/{{gateway_id}}/stats)"
            family = GaugeMetricFamily if name in GAUGES else CounterMetricFamily
            yield family(f"chargebridge_gateway_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "chargebridge_gateway_uptime_seconds",
            "seconds since the gateway started",
            value=time.monotonic() - gateway.stats.started,
        )
        yield GaugeMetricFamily(
            "chargebridge_devices_known",
            "devices in the registry",
            value=len(gateway.registry.devices),
        )
        yield GaugeMetricFamily(
            "chargebridge_mqtt_outbox_messages",
            "messages accepted but not yet acknowledged by the broker",
            value=self.unit.mqtt.queued,
        )
        yield GaugeMetricFamily(
            "chargebridge_mqtt_connected",
            "1 while the gateway is connected to the broker",
            value=1.0 if self.unit.mqtt.connected.is_set() else 0.0,
        )
        states = self.unit.gateway_states
        yield GaugeMetricFamily(
            "chargebridge_gateways_online",
            "gateways on the base topic whose retained presence is online",
            value=sum(1 for state in states.values() if state == "online"),
        )
        yield GaugeMetricFamily(
            "chargebridge_gateways_known",
            "gateways on the base topic with a retained presence",
            value=len(states),
        )
        presence = self.unit.charging_state
        yield GaugeMetricFamily(
            "chargebridge_charging_up",
            "1 while the charging service's presence (any instance) is online",
            value=1.0 if presence.get("state") == "online" else 0.0,
        )
        instances = presence.get("instances")
        yield GaugeMetricFamily(
            "chargebridge_charging_instances",
            "live charging-service instances",
            value=len(instances) if isinstance(instances, list) else 0,
        )
        for name, value in self.unit.charging.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            doc = f"charging service {name.replace('_', ' ')} (see {{b}}/charging/stats)"
            family = GaugeMetricFamily if name in CHARGING_GAUGES else CounterMetricFamily
            yield family(f"chargebridge_charging_{name}", doc, value=value)
        for name, value in self.unit.webhooks.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            doc = f"webhooks {name.replace('_', ' ')} (see {{b}}/charging/webhooks/stats)"
            family = GaugeMetricFamily if name == "queued" else CounterMetricFamily
            yield family(f"chargebridge_webhooks_{name}", doc, value=value)


class MetricsUnit:
    """`run()` serves until cancelled; `address` is the bound (host, port) once `ready` is set."""

    def __init__(self, settings: GatewaySettings, gateway: Gateway, mqtt: MqttClient) -> None:
        address = settings.metrics_address
        assert address is not None
        self.bind = address
        self.address: tuple[str, int] | None = None
        self.ready = asyncio.Event()
        self.gateway = gateway
        self.mqtt = mqtt
        self.topics = Topics(settings.base_topic)
        self.charging: dict[str, Any] = {}
        self.webhooks: dict[str, Any] = {}
        self.gateway_states: dict[str, str] = {}  # gateway id -> state, from the broker
        self.charging_state: dict[str, Any] = {}
        self.presence_updated = asyncio.Event()
        self.charging_updated = asyncio.Event()
        self.registry = CollectorRegistry()
        self.frames = Counter(
            "chargebridge_frames",
            "DNY frames exchanged with devices",
            ["direction", "command", "name"],
            registry=self.registry,
        )
        self.latency = PromHistogram(
            "chargebridge_command_latency_seconds",
            "time from sending a device command to its reply",
            ["command"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_GatewayCollector(self))
        self._children: dict[tuple[Sender, int], Any] = {}
        self._sent: OrderedDict[tuple[int, int, int], float] = OrderedDict()
        self._stats_client = MqttClient(
            settings.mqtt_settings(
                client_id=f"chargebridge-metrics-{settings.gateway_id}", clean_start=True
            ),
            subscriptions=[
                (self.topics.charging_stats, 1),
                (self.topics.webhook_stats, 1),
                (self.topics.all_gateway_states, 1),
                (self.topics.charging_state, 1),
            ],
        )
        gateway.taps.append(self.tap)

    def tap(self, sender: Sender, dev: Device, frame: Frame) -> None:
        key = (sender, frame.command)
        child = self._children.get(key)
        if child is None:
            direction = "in" if sender is Sender.DEVICE else "out"
            child = self._children[key] = self.frames.labels(
                direction, f"0x{frame.command:02X}", command_name(frame.command)
            )
        child.inc()
        if frame.command < 0x80:
            return
        reply_key = (frame.physical_id, frame.command, frame.message_id)
        if sender is Sender.SERVER:
            if reply_key not in self._sent:  # a resend keeps the first send time
                self._sent[reply_key] = time.monotonic()
                if len(self._sent) > PENDING_COMMANDS:
                    self._sent.popitem(last=False)
            return
        sent = self._sent.pop(reply_key, None)
        if sent is not None:
            self.latency.labels(f"0x{frame.command:02X}").observe(time.monotonic() - sent)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def run(self) -> None:
        server = await asyncio.start_server(self._serve, self.bind[0], self.bind[1])
        sockname = server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("metrics served", extra={"address": f"http://{self.bind[0]}:{sockname[1]}/"})
        self.ready.set()
        try:
            async with server, self._stats_client:
                async for message in self._stats_client.messages:
                    topic = str(message.topic)
                    if topic == self.topics.webhook_stats:
                        self.webhooks = _json_dict(message.payload) or {}
                    elif topic == self.topics.charging_stats:
                        self._charging_stats(message.payload)
                    else:
                        self._presence(topic, message.payload)
        finally:
            self.gateway.taps.remove(self.tap)

    def _presence(self, topic: str, payload: Any) -> None:
        """A gateway's or the charging service's retained presence; empty clears it."""
        data = _json_dict(payload) or {}
        gateway = self.topics.parse_gateway_topic(topic)
        if topic == self.topics.charging_state:
            self.charging_state = data
        elif gateway is not None and data:
            self.gateway_states[gateway[0]] = str(data.get("state"))
        elif gateway is not None:
            self.gateway_states.pop(gateway[0], None)
        self.presence_updated.set()

    def _charging_stats(self, payload: Any) -> None:
        try:
            data = json.loads(payload) if payload else {}
        except (ValueError, TypeError):
            return
        if isinstance(data, dict):
            self.charging = data
            self.charging_updated.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Minimal HTTP/1.0: `GET /metrics` (or `/`), anything else 404; one request per
        connection, bounded in size and time."""
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method == "GET" and path.split("?")[0] in ("/metrics", "/"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.exposition()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.LimitOverrunError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _json_dict(payload: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(payload) if payload else {}
    except (ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None
