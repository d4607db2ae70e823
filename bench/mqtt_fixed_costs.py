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
  formatting of each second once).

    .venv/bin/python bench/mqtt_fixed_costs.py
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

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


def main() -> None:
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
        }
    )


if __name__ == "__main__":
    main()
