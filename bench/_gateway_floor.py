"""The CPU floor of the gateway's job (bench/throughput.py `--gateway-floor`, and through it
bench/cpu_per_event.py): the least a hand-written Python gateway does with the same parts, so
that the gateway's CPU per frame has a floor measured in the same run. Not a benchmark itself,
and not a product: it knows 0x20 and 0x06 only.

What it keeps of the real gateway, per frame, because the contract asks for it: the same event
loop (uvloop when installed, as `chargebridge gateway`), one TCP connection per charger (its
ICCID first, then DNY frames cut from the stream and checksummed), the 0x06 decoded and
published as two QoS 1 messages, the retained port state and the `event/port` event, both
with their wall-clock timestamp (`{b}/devices/{id}/ports/{port}`, `{b}/devices/{id}/event/port`,
the fields of API.md; the charging service downstream reads the event), publishing rounds at
most one per 2 ms as the gateway's `publish_interval_s` (one `write` to the broker per round).

What it leaves out: the codec's models and checks of every field, the other commands and their
replies (a 0x20 is answered with a bare 0x20 result), trust (the ICCID is skipped, not pinned),
the outbox (in memory or on disk: at this rate the broker acknowledges a message well within
the durable outbox's 10 ms window, so the gateway writes none of them either), device
registry, commands, metrics, logging, limits, reconnection. The MQTT is bytes
(bench/_mqtt_floor.py).

    python bench/_gateway_floor.py --tcp-port PORT --mqtt-port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import time
from typing import Any

import _mqtt_floor as mqtt

BASE = "chargebridge"
GATEWAY_ID = "bench"
HEAD = struct.Struct("<3sHIHB")  # "DNY", length, physical id, message id, command
POWER = struct.Struct("<BBHHBHHHH16sHHHHBBIH")  # the 0x06 data with its optional fields
INTERVAL_S = 0.002


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def celsius(raw: int) -> str:
    return "null" if raw == 0 else str(float(raw - 65))


def reply(physical_id: int, message_id: int, command: int, data: bytes) -> bytes:
    body = HEAD.pack(b"DNY", len(data) + 9, physical_id, message_id, command) + data
    return body + struct.pack("<H", sum(body) & 0xFFFF)


class Broker(asyncio.Protocol):
    """The one MQTT connection: publishes queued and written in rounds, PUBACKs read."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.reader = mqtt.Reader()
        self.ids = mqtt.PacketIds()
        self.out: list[bytes] = []
        self.scheduled: asyncio.Handle | None = None
        self.last_round = 0.0
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(mqtt.connect("gateway-floor", clean=True))

    def data_received(self, data: bytes) -> None:
        for kind, _flags, _body in self.reader.feed(data):
            if kind == mqtt.CONNACK and not self.connected.done():
                self.connected.set_result(None)

    def publish(self, topic: bytes, payload: bytes, retain: bool) -> None:
        self.out.append(mqtt.publish(topic, payload, self.ids.next(), retain))
        if self.scheduled is None:
            loop = asyncio.get_running_loop()
            delay = self.last_round + INTERVAL_S - loop.time()
            self.scheduled = (
                loop.call_later(delay, self.round) if delay > 0 else loop.call_soon(self.round)
            )

    def round(self) -> None:
        self.scheduled = None
        self.last_round = asyncio.get_running_loop().time()
        data, self.out = b"".join(self.out), []
        self.transport.write(data)


class Charger(asyncio.Protocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: Any = None
        self.buffer = b""
        self.iccid = True

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        if self.iccid:
            if len(buf) < 20:
                self.buffer = buf
                return
            self.iccid = False
            buf = buf[20:]
        pos = 0
        while len(buf) - pos >= 14:
            start = buf.find(b"DNY", pos)
            if start < 0:
                pos = len(buf) - 2
                break
            _, length, pid, mid, command = HEAD.unpack_from(buf, start)
            end = start + 5 + length
            if end > len(buf):
                pos = start
                break
            (checksum,) = struct.unpack_from("<H", buf, end - 2)
            if checksum == sum(buf[start : end - 2]) & 0xFFFF:
                self.frame(pid, mid, command, buf[start + 12 : end - 2])
            pos = end
        self.buffer = buf[pos:]

    def frame(self, pid: int, mid: int, command: int, data: bytes) -> None:
        if command == 0x20:
            self.transport.write(reply(pid, mid, 0x20, b"\x00"))
            return
        if command != 0x06 or len(data) < POWER.size:
            return
        (
            port, status, duration, energy, start_mode, power, max_power, min_power,
            avg_power, order, _period, peak, voltage, current, ambient, port_temp, _ts, _occ,
        ) = POWER.unpack_from(data)  # fmt: skip
        device_id = f"{pid:08X}"
        now = iso(time.time())
        order_no = order.hex().upper()
        name = "charging" if status == 1 else "idle"
        measured = (
            f'"power_w":{power / 10},"order_no":"{order_no}","updated_at":"{now}",'
            f'"energy_kwh":{energy / 100},"voltage_v":{voltage / 10},'
            f'"current_a":{current / 1000},"temperature_c":{celsius(ambient)},'
            f'"port_temperature_c":{celsius(port_temp)},"measured_at":"{now}"'
        )
        state = f'{{"port":{port + 1},"status":"{name}","status_code":{status},{measured}}}'
        event = (
            f'{{"ts":"{now}","device_id":"{device_id}","gateway_id":"{GATEWAY_ID}",'
            f'"command":6,"message_id":{mid},"type":"power","port":{port + 1},'
            f'"status":"{name}","status_code":{status},"order_no":"{order_no}",'
            f'"duration_s":{duration},"energy_kwh":{energy / 100},"power_w":{power / 10},'
            f'"max_power_w":{max_power / 10},"min_power_w":{min_power / 10},'
            f'"avg_power_w":{avg_power / 10},"peak_power_w":{peak / 10},'
            f'"voltage_v":{voltage / 10},"current_a":{current / 1000},'
            f'"temperature_c":{celsius(ambient)},"port_temperature_c":{celsius(port_temp)},'
            f'"start_mode":"online","start_mode_code":{start_mode}}}'
        )
        base = f"{BASE}/devices/{device_id}/"
        self.broker.publish(f"{base}ports/{port + 1}".encode(), state.encode(), True)
        self.broker.publish(f"{base}event/port".encode(), event.encode(), False)


async def main(tcp_port: int, mqtt_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _, broker = await loop.create_connection(Broker, "127.0.0.1", mqtt_port)
    await broker.connected
    server = await loop.create_server(
        lambda: Charger(broker), "127.0.0.1", tcp_port, backlog=4096, reuse_address=True
    )

    async def ping() -> None:
        while True:
            await asyncio.sleep(30)
            broker.transport.write(mqtt.PINGREQ_PACKET)

    pinger = asyncio.create_task(ping())
    async with server:
        await stop.wait()
    pinger.cancel()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tcp-port", type=int, required=True)
    parser.add_argument("--mqtt-port", type=int, required=True)
    args = parser.parse_args()
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(main(args.tcp_port, args.mqtt_port))


if __name__ == "__main__":
    run()
