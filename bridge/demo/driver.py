"""The demo's "operator": starts a charging session wherever a user plugged in or swiped a card.

It uses only the public MQTT API — port state, order events and the charging service's
`request/start` — so the demo exercises the same path a real platform would.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

from bridge.mqtt.client import Message, MqttClient, payload_bytes
from bridge.mqtt.topics import Topics

log = logging.getLogger(__name__)

WAITING_STATUS_CODE = 2  # A.4: charger connected, not charging (user has not started)
RETRY_AFTER_S = 3.0


class DemoDriver:
    def __init__(self, mqtt: MqttClient, topics: Topics) -> None:
        self.mqtt = mqtt
        self.topics = topics
        self.requested: dict[tuple[str, int], float] = {}  # (device, port) -> monotonic time
        self.requests_sent = 0
        self._ids = itertools.count(1)

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        t = self.topics
        return [(t.all_ports, 1), (t.all_order_events, 1)]

    async def run(self) -> None:
        async for message in self.mqtt.messages:
            self.handle(message)

    def handle(self, message: Message) -> None:
        topic = str(message.topic)
        try:
            data: Any = json.loads(payload_bytes(message)) if message.payload else None
        except ValueError:
            return
        parsed = self.topics.parse_device_topic(topic)
        if parsed is None or not isinstance(data, dict):
            return
        device_id, rest = parsed
        if rest.startswith("ports/"):
            port = data.get("port")
            if data.get("status_code") == WAITING_STATUS_CODE and isinstance(port, int):
                self.start(device_id, port)
        elif rest == "event/order" and data.get("type") == "card_swipe":
            port = data.get("port")
            if isinstance(port, int):  # "balance_query" swipes start nothing
                self.start(device_id, port)

    def start(self, device_id: str, port: int) -> None:
        now = time.monotonic()
        if now - self.requested.get((device_id, port), -RETRY_AFTER_S) < RETRY_AFTER_S:
            return
        self.requested[(device_id, port)] = now
        self.requests_sent += 1
        request = {"request_id": f"demo-{next(self._ids)}", "device_id": device_id, "port": port}
        log.debug("demo: starting %s port %d", device_id, port)
        self.mqtt.submit(self.topics.charging_request("start"), json.dumps(request))
