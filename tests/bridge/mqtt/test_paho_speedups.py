"""The paho-mqtt speed-ups change nothing but speed: compared against paho's own code."""

from __future__ import annotations

import socket
import struct

import paho.mqtt.client as paho
import pytest
from paho.mqtt import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.mqtt.paho_speedups import read_everything_available, share_property_tables

PACKET_TYPES = list(range(PacketTypes.CONNECT, PacketTypes.WILLMESSAGE + 1))
share_property_tables()  # as bridge.mqtt.client does on import; idempotent


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
