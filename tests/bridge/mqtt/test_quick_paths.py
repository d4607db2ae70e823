"""The quick paths of bridge/mqtt/_private.py (reading common packets, publishing, writing at
the end of the loop turn) change nothing but speed: each is compared with paho's own code on
the same bytes, and whatever they do not handle must reach paho's code."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.mqtt import _private

V5, V311 = aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311


def remaining(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def publish_packet(
    topic: bytes,
    payload: bytes,
    *,
    qos: int,
    mid: int = 0,
    retain: bool = False,
    v5: bool,
    properties: bytes = b"\x00",
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += properties
    body += payload
    return bytes([0x30 | qos << 1 | retain]) + remaining(len(body)) + body


def request_properties() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = "replies/x"
    props.CorrelationData = b"\x01\x02"
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


def stream(v5: bool, mids: list[int]) -> tuple[bytes, int]:
    """Packets a broker could send, and how many of them the quick reader leaves to paho."""
    packets = [
        b"\x40\x02" + mids[0].to_bytes(2, "big"),  # PUBACK, success
        publish_packet(b"a/b", b"1", qos=1, mid=7, v5=v5),
        publish_packet(b"a/c", b"s" * 200, qos=0, retain=True, v5=v5),  # 2-byte length
        publish_packet(b"a/d", b"L" * 20_000, qos=1, mid=8, v5=v5),  # 3-byte length
        publish_packet(b"a/e", b"2", qos=2, mid=9, v5=v5),  # QoS 2: paho
        b"\xd0\x00",  # PINGRESP: paho
    ]
    fallbacks = 2
    if v5:
        packets += [
            b"\x40\x03" + mids[1].to_bytes(2, "big") + b"\x10",  # no matching subscribers
            b"\x40\x03" + mids[2].to_bytes(2, "big") + b"\x87",  # not authorized: paho
            publish_packet(b"req", b"3", qos=1, mid=10, v5=v5, properties=request_properties()),
        ]
        fallbacks += 2
    else:
        packets += [b"\x40\x02" + m.to_bytes(2, "big") for m in mids[1:]]
    packets.append(publish_packet(b"a/f", b"last", qos=1, mid=11, v5=v5))
    return b"".join(packets), fallbacks


async def read_with(
    protocol: aiomqtt.ProtocolVersion, quick: bool, chunk: int
) -> tuple[list[object], list[object], bytes, int]:
    """Feed `stream` (in pieces of `chunk` bytes) to a client: what it delivered, what it
    acknowledged, the bytes it queued for the broker and how many packets paho read."""
    aio = aiomqtt.Client("127.0.0.1", protocol=protocol)
    inner = _private.paho_client(aio)
    acked: list[object] = []
    inner.on_publish = lambda _c, _u, mid, reason, _p: acked.append(
        (mid, str(reason), reason.is_failure)
    )
    for _ in range(3):
        inner.publish("t", b"x", qos=1)  # not connected: kept, unacknowledged
    mids = list(inner._out_messages)
    data, _ = stream(protocol == V5, mids)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    inner._sock = ours  # type: ignore[assignment]
    inner._state = paho._ConnectionState.MQTT_CS_CONNECTED
    inner.on_socket_register_write = lambda *_: None  # written by no one: kept to compare
    paho_reads = [0]
    if quick:
        original = inner._packet_read

        def counted() -> paho.MQTTErrorCode:
            paho_reads[0] += 1
            return original()

        inner._packet_read = counted  # type: ignore[method-assign]
        _private.read_everything_available(inner, _private.quick_delivery(aio))
        _private.quick_puback(inner)
    try:
        for at in range(0, len(data), chunk):
            broker.sendall(data[at : at + chunk])
            for _ in range(100):  # paho's own reader takes one packet per call
                inner.loop_read()
            await asyncio.sleep(0)
        delivered = []
        while not aio._queue.empty():
            m = aio._queue.get_nowait()
            props = m.properties.json() if m.properties is not None else None  # type: ignore[no-untyped-call]
            delivered.append((str(m.topic), m.payload, m.qos, m.retain, m.mid, props))
        sent = b"".join(bytes(p["packet"]) for p in inner._out_packet)
        return delivered, acked, sent, paho_reads[0]
    finally:
        inner._sock = None
        ours.close()
        broker.close()


@pytest.mark.parametrize("protocol", [V5, V311])
@pytest.mark.parametrize("chunk", [1 << 20, 1000, 7])
async def test_the_quick_reader_delivers_and_acknowledges_what_paho_does(
    protocol: aiomqtt.ProtocolVersion, chunk: int
) -> None:
    """Whole, and in pieces that split packets (paho finishes those it began)."""
    reference = await read_with(protocol, False, chunk)
    quick = await read_with(protocol, True, chunk)
    assert quick[:3] == reference[:3]
    delivered, acked, sent, paho_reads = quick
    requests = ["req"] if protocol == V5 else []
    assert [t for t, *_ in delivered] == ["a/b", "a/c", "a/d", *requests, "a/f"]  # a/e: QoS 2
    assert len(acked) == 3
    if protocol == V5:
        assert delivered[3][5]["CorrelationData"] == "0102"  # type: ignore[index]
        assert [failure for *_, failure in acked] == [False, False, True]  # type: ignore[misc]
    assert sent.startswith(b"\x40\x02\x00\x07")  # the PUBACK of mid 7, then 8, PUBREC of 9
    data, fallbacks = stream(protocol == V5, [1, 2, 3])
    if chunk > len(data):
        assert paho_reads == fallbacks  # all the rest was read quickly
    else:
        assert paho_reads >= fallbacks


async def test_a_replaced_on_message_or_a_topic_callback_gets_messages_through_paho() -> None:
    aio = aiomqtt.Client("127.0.0.1", protocol=V5)
    deliver = _private.quick_delivery(aio)
    assert deliver("a/b", b"x", 1, False, 1)
    assert aio._queue.qsize() == 1
    inner = _private.paho_client(aio)
    inner.on_message = lambda *_: None
    assert not deliver("a/b", b"x", 1, False, 2)
    inner.on_message = aio._on_message
    assert deliver("a/b", b"x", 1, False, 3)
    inner.message_callback_add("a/#", lambda *_: None)
    assert not deliver("a/b", b"x", 1, False, 4)
    assert [m.mid for m in (aio._queue.get_nowait(), aio._queue.get_nowait())] == [1, 3]


async def test_a_received_topic_with_a_wildcard_is_left_to_paho() -> None:
    aio = aiomqtt.Client("127.0.0.1", protocol=V311)
    assert not _private.quick_delivery(aio)("a/+", b"x", 0, False, 0)


def connected_client(protocol: int, inflight: int = 20) -> tuple[paho.Client, socket.socket]:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=protocol)
    client.max_inflight_messages_set(inflight)
    ours, peer = socket.socketpair()
    client._sock = ours  # type: ignore[assignment]
    client._state = paho._ConnectionState.MQTT_CS_CONNECTED
    client.on_socket_register_write = lambda *_: None
    return client, peer


def state(client: paho.Client) -> tuple[object, ...]:
    packets = [(p["command"], p["mid"], p["qos"], bytes(p["packet"])) for p in client._out_packet]
    messages = [
        (m.mid, m.topic, m.payload, m.qos, m.retain, m.state) for m in client._out_messages.values()
    ]
    return packets, messages, client._inflight_messages


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311])
def test_quick_publish_queues_the_packets_and_bookkeeping_paho_does(protocol: int) -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = b"\x09"
    cases = [
        ("a/b", b"x", False, None),
        ("chargebridge/v1/gw/ports/04AB373B/1", b"s" * 300, True, None),
        ("big", b"L" * 70_000, False, None),
        ("replies/\u00e9", b"{}", False, props),
    ]
    clients = []
    for quick in (False, True):
        client, peer = connected_client(protocol)
        publish = _private.quick_publish(client)
        for topic, payload, retain, properties in cases:
            if quick:
                assert publish(topic, payload, retain, properties) > 0
            else:
                assert client.publish(topic, payload, 1, retain, properties).rc == 0
        clients.append((state(client), peer))
    assert clients[0][0] == clients[1][0]


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311])
def test_quick_publish_with_on_ack_sends_the_same_packets_without_paho_s_bookkeeping(
    protocol: int,
) -> None:
    """`MqttClient`'s way: the same bytes on the wire as paho's `publish`, the message ids
    kept in `RawAcks`, nothing in `_out_messages` nor counted in flight by paho; each PUBACK
    reaches `on_ack` once with its reason code, a refusal included (paho would drop a PUBACK
    it has no message for), and a duplicate or a stranger's reaches nothing."""
    cases = [("a/b", b"x", False), ("chargebridge/v1/gw/ports/04AB373B/1", b"s" * 300, True)]
    reference, _ = connected_client(protocol)
    for topic, payload, retain in cases:
        assert reference.publish(topic, payload, 1, retain).rc == 0
    client, _peer = connected_client(protocol)
    _private.quick_puback(client)
    acks: list[tuple[int, str, bool]] = []
    publish = _private.quick_publish(
        client,
        lambda mid, reason: acks.append((mid, str(reason), reason.is_failure)),  # type: ignore[attr-defined]
    )
    mids = [publish(topic, payload, retain, None) for topic, payload, retain in cases]
    assert state(client)[0] == state(reference)[0]  # the packets, byte for byte
    assert not client._out_messages and client._inflight_messages == 0
    assert _private.raw_acks(client).mids == set(mids)
    first, second = mids
    client._in_packet["packet"] = first.to_bytes(2, "big")  # success
    client._handle_pubackcomp("PUBACK")
    client._handle_pubackcomp("PUBACK")  # a duplicate: nothing more
    client._in_packet["packet"] = second.to_bytes(2, "big") + bytes([0x87])  # not authorised
    client._handle_pubackcomp("PUBACK")
    client._in_packet["packet"] = (first + 7).to_bytes(2, "big")  # never sent
    client._handle_pubackcomp("PUBACK")
    assert acks == [(first, "Success", False), (second, "Not authorized", True)]
    assert not _private.raw_acks(client).mids


def test_a_raw_message_s_puback_with_an_undefined_reason_is_a_failure() -> None:
    client, _peer = connected_client(paho.MQTTv5)
    _private.quick_puback(client)
    acks: list[bool] = []
    publish = _private.quick_publish(client, lambda _m, reason: acks.append(reason.is_failure))  # type: ignore[attr-defined]
    mid = publish("t", b"x", False, None)
    client._in_packet["packet"] = mid.to_bytes(2, "big") + bytes([0x05])  # not a PUBACK code
    client._handle_pubackcomp("PUBACK")
    assert acks == [True]


def test_quick_publish_leaves_anything_unusual_to_paho() -> None:
    client, _peer = connected_client(paho.MQTTv311, inflight=2)
    publish = _private.quick_publish(client)
    for topic in ("a/+", "a/#", ""):
        with pytest.raises(ValueError, match="topic"):  # paho's own verdict
            publish(topic, b"x", False, None)
    first, second, queued = (publish("t", b"%d" % i, False, None) for i in range(3))
    assert first > 0 and second > 0 and queued > 0
    assert client._out_messages[queued].state == paho.mqtt_ms_queued  # paho's in-flight limit
    assert len(client._out_packet) == 2
    offline = paho.Client(paho.CallbackAPIVersion.VERSION2)
    assert -_private.quick_publish(offline)("t", b"x", False, None) == paho.MQTT_ERR_NO_CONN
    assert len(offline._out_messages) == 1  # kept for the next connection, as paho does


async def test_writes_go_out_at_the_end_of_the_loop_turn_and_the_rest_when_writable() -> None:
    aio = aiomqtt.Client("127.0.0.1", protocol=V311)
    inner = _private.paho_client(aio)
    mine, peer = socket.socketpair()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for s in (mine, peer):
        s.setblocking(False)
    inner.max_inflight_messages_set(100)
    inner._sock = mine  # type: ignore[assignment]
    inner._state = paho._ConnectionState.MQTT_CS_CONNECTED
    _private.write_in_bulk(inner)
    _private.write_soon(aio)
    publish = _private.quick_publish(inner)
    try:
        publish("t", b"small", False, None)
        await asyncio.sleep(0)  # one loop turn
        first = peer.recv(1 << 20)
        assert first == b"\x32\x0a\x00\x01t\x00\x01small"
        payloads = [b"%05d" % i * 1000 for i in range(20)]  # far more than the socket takes
        for payload in payloads:
            publish("t", payload, False, None)
        expected = sum(len(p) + 8 for p in payloads)  # 3 header, 2 + 1 topic, 2 message id
        received = bytearray()
        async with asyncio.timeout(30):
            while len(received) < expected:
                await asyncio.sleep(0)
                with contextlib.suppress(BlockingIOError):
                    received += peer.recv(1 << 20)
        assert len(received) == expected
        assert bytes(received[8:5008]) == payloads[0] and received.endswith(payloads[-1])
        assert not inner.want_write()
    finally:
        inner._sock = None
        mine.close()
        peer.close()


async def test_a_queued_writer_writes_within_the_call_and_leaves_paho_ready_for_more() -> None:
    """`queued_writer` (MqttClient's publishing round): the packets are on the socket when
    it returns, no loop turn needed, and paho asks again for the next packet."""
    aio = aiomqtt.Client("127.0.0.1", protocol=V311)
    inner = _private.paho_client(aio)
    mine, peer = socket.socketpair()
    for s in (mine, peer):
        s.setblocking(False)
    inner.max_inflight_messages_set(100)
    inner._sock = mine  # type: ignore[assignment]
    inner._state = paho._ConnectionState.MQTT_CS_CONNECTED
    _private.write_in_bulk(inner)
    _private.write_soon(aio)
    publish = _private.quick_publish(inner)
    write = _private.queued_writer(inner)
    try:
        write(lambda: [publish("t", b"one", False, None), publish("t", b"two", False, None)])
        assert peer.recv(1 << 20) == b"\x32\x08\x00\x01t\x00\x01one\x32\x08\x00\x01t\x00\x02two"
        assert not inner.want_write() and not inner._registered_write
        publish("t", b"later", False, None)  # outside a round: written at the turn's end
        assert inner._registered_write
        await asyncio.sleep(0)
        assert peer.recv(1 << 20) == b"\x32\x0a\x00\x01t\x00\x03later"
    finally:
        inner._sock = None
        mine.close()
        peer.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_a_manual_ack_queues_the_packet_paho_does(qos: int) -> None:
    queued = []
    for ours in (False, True):
        client, _peer = connected_client(paho.MQTTv5)
        client.manual_ack_set(True)
        if ours:
            _private.ack(client, 300, qos)
        else:
            client.ack(300, qos)
        queued.append(state(client))
    assert queued[0] == queued[1]
    assert queued[0][0] == [
        (0x40 if qos == 1 else 0x70, 300, 1, bytes([0x40 if qos == 1 else 0x70, 2, 1, 44]))
    ]


async def test_the_disconnect_of_a_closing_client_is_written_aiomqtt_s_way() -> None:
    """Written at once, it reached the embedded amqtt broker while it still had messages
    queued for the client (then logged as failed tasks): it waits for the selector as before."""
    aio = aiomqtt.Client("127.0.0.1", protocol=V311)
    inner = _private.paho_client(aio)
    mine, peer = socket.socketpair()
    for s in (mine, peer):
        s.setblocking(False)
    inner._sock = mine  # type: ignore[assignment]
    inner._state = paho._ConnectionState.MQTT_CS_CONNECTED
    _private.write_soon(aio)
    loop = asyncio.get_running_loop()
    try:
        inner.disconnect()
        await asyncio.sleep(0)
        with pytest.raises(BlockingIOError):
            peer.recv(100)  # not written yet
        async with asyncio.timeout(5):  # written by the event loop's writer
            assert await loop.sock_recv(peer, 100) == b"\xe0\x00"
    finally:
        if mine.fileno() != -1:  # paho closes it once the DISCONNECT is out
            loop.remove_writer(mine.fileno())
        inner._sock = None
        mine.close()
        peer.close()


async def test_a_disconnect_whose_socket_closes_first_logs_no_error() -> None:
    """The demo's shutdown once logged `add_writer` failing with EBADF: the DISCONNECT's
    writer was registered one loop turn late, after the socket had been closed."""
    aio = aiomqtt.Client("127.0.0.1", protocol=V311)
    inner = _private.paho_client(aio)
    mine, peer = socket.socketpair()
    mine.setblocking(False)
    inner._sock = mine  # type: ignore[assignment]
    inner._state = paho._ConnectionState.MQTT_CS_CONNECTED
    _private.write_soon(aio)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        inner.disconnect()
        await asyncio.sleep(0)  # the write turn: the writer is due next turn
        inner._sock = None  # paho closes the socket meanwhile
        mine.close()
        for _ in range(5):
            await asyncio.sleep(0)
        assert errors == []
    finally:
        loop.set_exception_handler(None)
        peer.close()
