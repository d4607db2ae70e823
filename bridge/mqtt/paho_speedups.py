"""Costs of paho-mqtt that dominated a busy client, removed without changing its
behaviour (tests/bridge/mqtt/test_paho_speedups.py compares against paho's own code).

docs/performance.md has the figures of each (before / after).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from paho.mqtt.client import _OutPacket


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


WRITE_CHUNK = 64 * 1024  # bytes handed to one send()
PUBLISH = PacketTypes.PUBLISH << 4
DISCONNECT = PacketTypes.DISCONNECT << 4


def write_in_bulk(client: paho.Client) -> None:
    """Make paho send its queued packets with one `send` per 64 KiB, not one per packet.

    paho's `_packet_write` makes a system call for every packet (a PUBLISH, a PUBACK):
    12% of the gateway's CPU at full load went to `send`. This joins the packets that need
    nothing after their write (all but QoS 0 PUBLISHes and DISCONNECT, which paho's own code
    still writes) and sends them at once, keeping paho's bookkeeping of partial writes.
    """
    original = client._packet_write

    def plain(packet: _OutPacket) -> bool:
        kind = packet["command"] & 0xF0
        return not (kind == DISCONNECT or (kind == PUBLISH and packet["qos"] == 0))

    def packet_write() -> MQTTErrorCode:
        while True:
            queue = client._out_packet
            batch: list[_OutPacket] = []
            size = 0
            for packet in queue:
                if size >= WRITE_CHUNK or not plain(packet):
                    break
                batch.append(packet)
                size += packet["to_process"]
            if len(batch) < 2:
                return original()
            data = b"".join(memoryview(p["packet"])[p["pos"] :] for p in batch)
            try:
                written = client._sock_send(data)
            except (AttributeError, ValueError):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if written <= 0:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            for packet in batch:
                done = min(written, packet["to_process"])
                packet["to_process"] -= done
                packet["pos"] += done
                written -= done
                if packet["to_process"]:
                    break  # partly written: the rest goes with the next send
                queue.popleft()

    client._packet_write = packet_write  # type: ignore[method-assign]
