"""The per-message fixed costs `bridge/mqtt/_private.py` cuts in paho, each timed against
paho's own code in the same process and run; prints one JSON object.

In-process, no broker, so the figures are the CPU of the code itself (what a busy process
pays per message), little disturbed by other load; best of 5 repetitions each:
- `puback`: a two-byte PUBACK handled by a client holding the message (`_handle_pubackcomp`,
  paho's decoder against `quick_puback`);
- `message_info`: the `MQTTMessageInfo` paho makes per published and received message, made
  and marked published (paho's, with its `threading.Condition`, against `LazyMessageInfo`);
- `recv_calls_per_packet`: `recv` system calls paho makes to read 1,000 PUBACKs waiting in a
  socket (its own reads against `read_everything_available`'s buffer);
- `iso_utc`: the `ts` of every event (`datetime` formatting, the former code, against the
  formatting of each second once);
- `publish_us`: one QoS 1 PUBLISH of an event-sized (474-byte) payload handed to a connected
  paho client, MQTT 5 (paho's `publish` against `quick_publish`; the write is not included);
- `ack_us`: one manual acknowledgement queued (paho's `ack` against `_private.ack`);
- `puback_read_us`: one PUBACK read from a socket holding 1,000 of them and acknowledged
  (paho's own reader; `read_everything_available` with every packet through paho's reader,
  the code before the quick reader; with the quick reader);
- `receive_us`: one incoming QoS 1 PUBLISH (474 bytes, MQTT 5, no properties) read from a
  socket holding 1,000 of them, up to the `aiomqtt.Message` in aiomqtt's queue and the PUBACK
  queued (the same three readers; the quick one with `quick_delivery`);
- `write_one_per_loop_turn`: one publish per event-loop turn until its bytes reached the peer
  (as the gateway at 1,000 frames/s, one frame per turn): loop turns and microseconds per
  message (publish, event loop, send), aiomqtt's `on_socket_register_write` (through the
  selector) against `write_soon`.

    .venv/bin/python bench/mqtt_fixed_costs.py
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from _harness import emit, machine

from bridge.mqtt import _private
from bridge.mqtt.payloads import iso_utc

N = 20_000


def best_us(fn: Callable[[], None], n: int, repeat: int = 5) -> float:
    """Best of `repeat` runs of `fn` (which does n operations), microseconds per operation."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times) / n * 1e6, 3)


def puback_us(quick: bool) -> float:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_publish = lambda *_: None
    if quick:
        _private.quick_puback(client)
    msg = paho.MQTTMessage(1, b"t")
    msg.qos = 1

    def run() -> None:
        out = client._out_messages
        packet = client._in_packet
        handle = client._handle_pubackcomp
        for i in range(N):
            mid = i % 60000 + 1
            out[mid] = msg
            client._inflight_messages += 1
            packet["packet"] = mid.to_bytes(2, "big")
            handle("PUBACK")

    return best_us(run, N)


def message_info_us(cls: Any) -> float:
    def run() -> None:
        for i in range(N):
            cls(i)._set_as_published()

    return best_us(run, N)


def recv_calls(buffered: bool, packets: int = 1000) -> float:
    """recv calls per packet to read `packets` PUBACKs waiting in a socket."""

    class Counting:
        def __init__(self, sock: socket.socket) -> None:
            self.sock, self.recvs = sock, 0

        def recv(self, n: int) -> bytes:
            self.recvs += 1
            return self.sock.recv(n)

        def close(self) -> None:
            self.sock.close()

    async def run() -> float:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        ours, broker = socket.socketpair()
        ours.setblocking(False)
        counting = Counting(ours)
        client._sock = counting  # type: ignore[assignment]
        if buffered:
            _private.read_everything_available(client)
        broker.sendall(b"\x40\x02\x00\x01" * packets)
        while True:
            rc = client._packet_read()
            if rc != paho.MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        client._sock = None
        broker.close()
        ours.close()
        return round(counting.recvs / packets, 3)

    return asyncio.run(run())


def old_iso_utc() -> str:
    dt = datetime.now(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def loop_us(fn: Callable[[], object]) -> float:
    def run() -> None:
        for _ in range(N):
            fn()

    return best_us(run, N)


PAYLOAD = b"x" * 474
V5 = paho.MQTTv5


def connected(client: paho.Client, sock: Any) -> paho.Client:
    """`client` connected on `sock`, logging to "mqtt" as aiomqtt's paho client does."""
    client.enable_logger(logging.getLogger("mqtt"))
    client._sock = sock
    client._state = paho._ConnectionState.MQTT_CS_CONNECTED
    return client


def interleaved_us(
    fns: dict[str, Callable[[], None]], n: int, rounds: int = 30
) -> dict[str, float]:
    """Each of `fns` (n operations each) run `rounds` times, taking turns, so that a change of
    load hits all of them alike; the best round of each, microseconds per operation."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(t / n * 1e6, 3) for name, t in best.items()}


def publishing(quick: bool, n: int) -> Callable[[], None]:
    """n QoS 1 publishes on a connected MQTT 5 client whose writes wait for the event loop."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=V5)
    client.max_inflight_messages_set(100)  # never reached: every message is sent
    ours, _peer = socket.socketpair()  # nothing is written: the peer may go
    connected(client, ours)
    client.on_socket_register_write = lambda *_: None  # an event loop writes later
    publish = _private.quick_publish(client)
    topic = "chargebridge/v1/gw/events/86001234/power"

    def run() -> None:
        out = client._out_messages
        packets = client._out_packet
        for _ in range(n):
            if quick:
                publish(topic, PAYLOAD, False, None)
            else:
                client.publish(topic, PAYLOAD, 1)
            if len(out) >= 50:  # as if acknowledged
                out.clear()
                packets.clear()
                client._inflight_messages = 0

    return run


def acking(quick: bool, n: int) -> Callable[[], None]:
    """n manual acknowledgements (the service's, one per event) queued for writing."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=V5)
    client.manual_ack_set(True)
    ours, _peer = socket.socketpair()  # nothing is written: the peer may go
    connected(client, ours)
    client.on_socket_register_write = lambda *_: None

    def run() -> None:
        for i in range(n):
            if quick:
                _private.ack(client, i % 60000 + 1, 1)
            else:
                client.ack(i % 60000 + 1, 1)
        client._out_packet.clear()

    return run


def puback_packets(client: paho.Client, count: int) -> bytes:
    """`count` unacknowledged messages in `client` and the PUBACKs for them."""
    acks = []
    for _ in range(count):
        mid = client._mid_generate()
        message = paho.MQTTMessage(mid, b"t")
        message.qos = 1
        client._out_messages[mid] = message
        client._inflight_messages += 1
        acks.append(b"\x40\x02" + mid.to_bytes(2, "big"))
    return b"".join(acks)


def publish_packets(count: int) -> bytes:
    topic = b"chargebridge/v1/gw/events/86001234/power"
    out = []
    for mid in range(1, count + 1):
        body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + b"\x00" + PAYLOAD
        out.append(b"\x32" + bytes((len(body) & 0x7F | 0x80, len(body) >> 7)) + body)
    return b"".join(out)


def read_us(reader: str, kind: str, packets: int = 1000, rounds: int = 20) -> float:
    """Microseconds per packet to read and handle `packets` waiting in a socket; reader is
    "paho" (its own `loop_read`), "buffered" (the previous `read_everything_available`) or
    "quick"."""

    async def run() -> float:
        aio = aiomqtt.Client("127.0.0.1", protocol=aiomqtt.ProtocolVersion.V5)
        client = _private.paho_client(aio)
        client.on_publish = lambda *_: None
        client.on_socket_register_write = lambda *_: None
        ours, broker = socket.socketpair()
        ours.setblocking(False)
        broker.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        connected(client, ours)
        if reader != "paho":
            deliver = _private.quick_delivery(aio) if reader == "quick" else None
            _private.read_everything_available(client, deliver, quick_packets=reader == "quick")
            _private.quick_puback(client)
            _private.no_idle_inflight_scan(client)
        best = float("inf")
        for _ in range(rounds):
            data = puback_packets(client, packets) if kind == "puback" else publish_packets(packets)
            broker.sendall(data)
            await asyncio.sleep(0)
            start = time.perf_counter()
            handled = 0
            while handled < packets:
                client.loop_read(packets)
                handled = (
                    packets - len(client._out_messages) if kind == "puback" else aio._queue.qsize()
                )
            best = min(best, time.perf_counter() - start)
            while not aio._queue.empty():
                aio._queue.get_nowait()
            client._out_packet.clear()
        client._sock = None
        broker.close()
        ours.close()
        return round(best / packets * 1e6, 3)

    return asyncio.run(run())


def writing(soon: bool, messages: int = 500, rounds: int = 5) -> tuple[float, float]:
    """One publish per event-loop turn until its bytes are in the peer socket: loop turns and
    best-round microseconds per message, with aiomqtt's writer registration or `write_soon`."""

    async def run() -> tuple[float, float]:
        aio = aiomqtt.Client("127.0.0.1", protocol=aiomqtt.ProtocolVersion.V5)
        client = _private.paho_client(aio)
        ours, broker = socket.socketpair()
        ours.setblocking(False)
        broker.setblocking(False)
        aio._on_socket_open(client, None, ours)  # type: ignore[arg-type]
        connected(client, ours)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        _private.write_in_bulk(client)
        if soon:
            _private.write_soon(aio)
        publish = _private.quick_publish(client)
        turns = 0
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(messages):
                publish("chargebridge/v1/gw/events/86001234/power", PAYLOAD, False, None)
                while True:
                    await asyncio.sleep(0)
                    turns += 1
                    try:
                        if broker.recv(65536):
                            break
                    except BlockingIOError:
                        pass
                client._out_messages.clear()  # as if acknowledged
                client._inflight_messages = 0
            best = min(best, time.perf_counter() - start)
        loop = asyncio.get_running_loop()
        loop.remove_reader(ours.fileno())
        loop.remove_writer(ours.fileno())
        client._sock = None
        broker.close()
        ours.close()
        return round(turns / messages / rounds, 2), round(best / messages * 1e6, 3)

    return asyncio.run(run())


def write_path() -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {"aiomqtt": {}, "write_soon": {}}
    for _ in range(2):  # taking turns, the best of each
        for name in found:
            turns, us = writing(name == "write_soon")
            found[name]["loop_turns"] = turns
            found[name]["us_per_message"] = min(us, found[name].get("us_per_message", us))
    return found


def main() -> None:
    try:
        import uvloop  # the event loop the roles run on when installed
    except ImportError:
        pass
    else:
        uvloop.install()
    _private.install()
    original_info = getattr(_private.LazyMessageInfo, "original", paho.MQTTMessageInfo)
    emit(
        {
            "benchmark": "mqtt_fixed_costs",
            "machine": machine(),
            "puback_us": {"paho": puback_us(False), "quick_puback": puback_us(True)},
            "message_info_us": {
                "paho": message_info_us(original_info),
                "lazy": message_info_us(_private.LazyMessageInfo),
            },
            "recv_calls_per_packet": {"paho": recv_calls(False), "buffered": recv_calls(True)},
            "iso_utc_us": {"datetime": loop_us(old_iso_utc), "per_second": loop_us(iso_utc)},
            "publish_us": interleaved_us(
                {"paho": publishing(False, 2000), "quick_publish": publishing(True, 2000)}, 2000
            ),
            "ack_us": interleaved_us(
                {"paho": acking(False, 2000), "quick_ack": acking(True, 2000)}, 2000
            ),
            "puback_read_us": {r: read_us(r, "puback") for r in ("paho", "buffered", "quick")},
            "receive_us": {r: read_us(r, "publish") for r in ("paho", "buffered", "quick")},
            "write_one_per_loop_turn": write_path(),
        }
    )


if __name__ == "__main__":
    main()
