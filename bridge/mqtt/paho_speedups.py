"""Two costs of paho-mqtt that dominated a busy subscriber, removed without changing its
behaviour (tests/bridge/mqtt/test_paho_speedups.py compares against paho's own code).

Measured on the charging service alone (20,000-30,000 QoS 1 events, 1,000 sessions): about
1,600 events/s before, 5,200 with `read_everything_available` (and batches), 8,700 with
`share_property_tables` as well (docs/performance.md).
"""

from __future__ import annotations

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def share_property_tables() -> None:
    """Build paho's MQTT v5 property tables once instead of in every `Properties()`.

    paho's `Properties.__init__` rebuilds the same name and type tables (two dicts of 27
    and 28 entries) for every object, and it makes one for every v5 PUBLISH received: a
    quarter of the charging service's CPU went there. The tables are constant (paho only
    reads them), so every instance can share the ones built once by the original __init__.
    """
    original = Properties.__init__
    if getattr(original, "shared_tables", False):
        return
    template = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    tables = {k: v for k, v in vars(template).items() if k != "packetType"}

    def __init__(self: Properties, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        for name, value in tables.items():
            object.__setattr__(self, name, value)

    __init__.shared_tables = True  # type: ignore[attr-defined]
    __init__.original = original  # type: ignore[attr-defined]
    Properties.__init__ = __init__  # type: ignore[method-assign]


READ_LIMIT = 1000  # packets per readable event, so one busy socket cannot starve the loop


def read_everything_available(client: paho.Client) -> None:
    """Make paho read every packet already received when its socket is readable.

    paho's `loop_read` ignores its `max_packets` and reads as many packets as it has
    messages in flight, ONE when it has none, so a subscriber that publishes little got one
    message per event-loop turn, the rest waiting in the socket: consumers never saw a
    batch. This reads until the socket has no more (or READ_LIMIT packets).
    """

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        for _ in range(READ_LIMIT):
            if client._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = client._packet_read()
            if rc > 0:
                return client._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client.loop_read = loop_read  # type: ignore[method-assign]
