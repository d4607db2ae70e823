"""The least MQTT 3.1.1 the CPU floors need (bench/_service_floor.py, bench/_gateway_floor.py):
packets written as bytes, incoming bytes cut into packets, no I/O. Not a client library:
no will, no QoS 2, no reconnection, no checks of what the broker sends. Not a benchmark itself.

The floors use it instead of paho so that they are a lower bound: everything a batch writes
goes out in one `send`, and a read takes all the socket has (paho's stock loop reads a packet
in several `recv` calls and writes each packet with its own `send`; chargebridge's client has
both of those done in bulk already, bridge/mqtt/_private.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ = 1, 2, 3, 4, 8, 9, 12
PINGREQ_PACKET = b"\xc0\x00"


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def connect(client_id: str, clean: bool, keepalive: int = 60) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02 if clean else 0]) + struct.pack("!H", keepalive)
    body += _string(client_id)
    return b"\x10" + _length(len(body)) + body


def subscribe(packet_id: int, topic: str, qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + _string(topic) + bytes([qos])
    return b"\x82" + _length(len(body)) + body


def publish(topic: bytes, payload: bytes, packet_id: int, retain: bool = False) -> bytes:
    """A QoS 1 PUBLISH."""
    body_len = 2 + len(topic) + 2 + len(payload)
    head = bytes([0x32 | retain]) + _length(body_len)
    return b"".join(
        (head, struct.pack("!H", len(topic)), topic, struct.pack("!H", packet_id), payload)
    )


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)


class Reader:
    """Bytes in, packets out: (type, flags, body)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        buf = self.buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            first = buf[pos]
            length = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= end:
                    del buf[:pos]
                    return
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if end - i < length:
                break
            yield first >> 4, first & 0x0F, bytes(buf[i : i + length])
            pos = i + length
        del buf[:pos]


def parse_publish(flags: int, body: bytes) -> tuple[str, int, bytes]:
    """(topic, packet id (0 at QoS 0), payload) of a PUBLISH body."""
    (n,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + n].decode()
    pos = 2 + n
    packet_id = 0
    if flags & 0x06:
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    return topic, packet_id, body[pos:]


class PacketIds:
    """QoS 1 packet ids 1..65535, in turn (the floors keep far fewer than 65,535 in flight)."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = self.last % 0xFFFF + 1
        return self.last
