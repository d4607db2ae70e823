"""A settlement resent after its session was cleared, through the service's MQTT contract only.

A charger keeps an unacknowledged 0x03 and resends it, possibly hours later; the gateway
remembers published settlements for a day, so after that a resend becomes a second `settled`
event with a new message id (a new fingerprint). The service must still count the order once
and must not bring the cleared session back (API.md 6: "0x03 completes it, exactly once however
often the device resends it"). Events are written here from API.md section 4, not with the
project's models. Mutation: the service's "already settled" check always says no
(scripts/mutation.py, docs/testing.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.bridge.charging.harness import running_service, settings_for
from tests.bridge.helpers import mqtt_collector
from tests.broker import Mosquitto

B = "chargebridge"
DEV = "04AB373B"
ORDER = "0123456789ABCDEF0123456789ABCDEF"
FENCE = "FEDCBA9876543210FEDCBA9876543210"


def _settled(order_no: str, energy_kwh: float, message_id: int) -> dict[str, Any]:
    """A `settled` order event as the gateway publishes it (API.md section 4)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "type": "settled",
        "ts": now,
        "device_id": DEV,
        "gateway_id": "gw-test",
        "command": 3,
        "message_id": message_id,
        "port": 2,
        "order_no": order_no,
        "duration_s": 3600,
        "max_power_w": 234.5,
        "energy_kwh": energy_kwh,
        "start_mode": "online",
        "start_mode_code": 1,
        "card_id": "00000000",
        "stop_reason": "user_unplugged",
        "stop_reason_code": 5,
        "second_max_power_w": None,
        "device_time": None,
        "occupied_minutes": None,
    }


async def test_a_settlement_resent_after_its_session_was_cleared_counts_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = settings_for(broker, tmp_path, session_retention_s=0.2, cleanup_interval_s=0.05)
    session_topic = f"{B}/sessions/{ORDER}"
    stats_topic = f"{B}/charging/stats"
    event_topic = f"{B}/devices/{DEV}/event/order"
    async with (
        mqtt_collector(broker, f"{B}/sessions/+", stats_topic) as seen,
        running_service(settings),
        broker.client() as gateway,
    ):
        await gateway.publish(event_topic, json.dumps(_settled(ORDER, 1.35, 7)), qos=1)
        await seen.wait(session_topic, lambda s: s["status"] == "completed")
        # retention elapsed: the session is cleared with an empty retained message
        while (await seen.wait_message(session_topic)).payload:
            pass
        cleared_at = len(seen.messages)
        await seen.latest(stats_topic, lambda s: s["sessions_completed"] == 1)

        # the device resends (new message id: the gateway forgot it had published it), then
        # another order settles: events are handled in order, so once the second is seen
        # the resend was handled too
        await gateway.publish(event_topic, json.dumps(_settled(ORDER, 1.35, 8)), qos=1)
        await gateway.publish(event_topic, json.dumps(_settled(FENCE, 0.5, 9)), qos=1)
        await seen.wait(f"{B}/sessions/{FENCE}", lambda s: s["status"] == "completed")
        stats = await seen.latest(stats_topic, lambda s: s["sessions_completed"] >= 2)
        assert stats["sessions_completed"] == 2
        assert stats["total_energy_delivered_kwh"] == pytest.approx(1.85)
        revived = [
            m.json() for m in seen.messages[cleared_at:] if m.topic == session_topic and m.payload
        ]
        assert revived == [], "the cleared session was published again"
