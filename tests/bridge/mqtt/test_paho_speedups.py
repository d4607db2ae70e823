"""The paho-mqtt speed-ups change nothing but speed: compared against paho's own code."""

from __future__ import annotations

import select
import socket
import struct
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.mqtt._private import (
    read_everything_available,
    share_property_tables,
    write_in_bulk,
)

PACKET_TYPES = list(range(PacketTypes.CONNECT, PacketTypes.WILLMESSAGE + 1))
share_property_tables()  # as MqttClient does when made (bridge.mqtt._private.install); idempotent


def original_properties(packet_type: int) -> Properties:
    props = object.__new__(Properties)
    Properties.__init__.original(props, packet_type)  # type: ignore[attr-defined]
    return props


def test_shared_tables_equal_the_ones_paho_builds() -> None:
    assert Properties.__init__.shared_tables  # type: ignore[attr-defined]
    for packet_type in PACKET_TYPES:
        assert vars(Properties(packet_type)) == vars(original_properties(packet_type))


def test_properties_still_validate_pack_and_unpack() -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "chargebridge/replies/x"
    props.CorrelationData = b"\x01\x02"
    props.UserProperty = ("k", "v")
    other = Properties(PacketTypes.PUBLISH)
    assert not hasattr(other, "ResponseTopic"), "values must stay per instance"
    with pytest.raises(MQTTException):
        props.SessionExpiryInterval = 10  # a CONNECT property, not a PUBLISH one
    decoded = Properties(PacketTypes.PUBLISH)
    decoded.unpack(props.pack())
    reference = original_properties(PacketTypes.PUBLISH)
    reference.unpack(props.pack())
    assert decoded.json() == reference.json() == props.json()


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode() + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body  # PUBLISH, QoS 0, MQTT 3.1.1


def client_on(sock: socket.socket, received: list[bytes]) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.on_message = lambda _c, _u, message: received.append(message.payload)
    client.max_inflight_messages_set(0)  # every publish queued for writing at once
    client._sock = sock  # a connected client, as after CONNACK
    client._state = paho._ConnectionState.MQTT_CS_CONNECTED
    return client


def test_one_read_event_takes_every_packet_already_received() -> None:
    mine, peer = socket.socketpair()
    theirs, their_peer = socket.socketpair()
    with mine, peer, theirs, their_peer:
        for s in (mine, theirs):
            s.setblocking(False)
        burst = b"".join(publish_packet("t", b"%d" % i) for i in range(50))
        peer.sendall(burst)
        their_peer.sendall(burst)

        ours: list[bytes] = []
        client = client_on(mine, ours)
        read_everything_available(client)
        client.loop_read()
        assert ours == [b"%d" % i for i in range(50)]

        pahos: list[bytes] = []
        client_on(theirs, pahos).loop_read()
        assert pahos == [b"0"], "paho alone reads one packet per call when idle"


def drain(client: paho.Client, peer: socket.socket, expected: int) -> bytes:
    """Let `client` write until `expected` bytes reached `peer`, reading as they come."""
    received = bytearray()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        writer = [client._sock] if client.want_write() else []
        readable, writable, _ = select.select([peer], writer, [], 1.0)
        if writable:
            client.loop_write()
        if readable:
            received += peer.recv(1 << 20)
        if len(received) >= expected and not client.want_write():
            return bytes(received)
    raise AssertionError(f"only {len(received)} of {expected} bytes arrived")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A loopback TCP connection with small buffers, so that sends are often partial."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        mine = socket.socket()
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        mine.connect(server.getsockname())
        peer, _ = server.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for s in (mine, peer):
        s.setblocking(False)
    return mine, peer


def counting_sends(client: paho.Client) -> list[tuple[int, int]]:
    """Record (bytes offered, bytes taken) of every send() the client makes that succeeds."""
    sends: list[tuple[int, int]] = []
    real_send = client._sock_send

    def send(buf: bytes | bytearray) -> int:
        taken = real_send(buf)
        sends.append((len(buf), taken))
        return taken

    client._sock_send = send  # type: ignore[method-assign]
    return sends


def queue_publishes(client: paho.Client) -> None:
    client.on_socket_register_write = lambda *_: None  # an event loop would write later
    for i in range(300):
        client.publish(f"t/{i % 7}", b"x" * (i * 37 % 900), qos=1 + i % 2)
    client.publish("t/qos0", b"qos 0 goes through paho's own writer", qos=0)
    for i in range(50):
        client.publish("t/after", b"%d" % i, qos=1)


def test_bulk_writes_send_the_same_bytes_as_paho_even_when_the_socket_is_full() -> None:
    streams = []
    for bulk in (False, True):
        mine, peer = tcp_pair()
        with mine, peer:
            client = client_on(mine, [])
            if bulk:
                write_in_bulk(client)
            sends = counting_sends(client)
            queue_publishes(client)
            expected = sum(len(p["packet"]) for p in client._out_packet)
            streams.append(drain(client, peer, expected))
            assert not client._out_packet
            if bulk:
                assert len(sends) < 351 / 4, "one send per packet: nothing was joined"
                assert any(taken < offered for offered, taken in sends), "no partial send"
    assert streams[0] == streams[1]
