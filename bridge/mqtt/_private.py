"""Every use of aiomqtt's and paho-mqtt's private API, in one place.

`MqttClient` reaches below both libraries' public API for two reasons: speed (each trick
below removed a cost that dominated a busy process; docs/performance.md has the figures) and
two things aiomqtt does not expose (a hook for a lost connection, manual acknowledgements).
Each trick is one function here, saying why; nothing else in chargebridge touches an
attribute with a leading underscore of either library.

Private API can change in any release, so this module states what it was written for:
`SUPPORTED` (the ranges of versions, also the bounds in pyproject.toml) and the private
attributes it touches. `problems()` lists every mismatch with the installed versions;
`install()` (called by `MqttClient`, idempotent) refuses to run with a missing attribute and
warns about a version outside the ranges; tests/bridge/mqtt/test_private.py fails on either.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import math
import re
import threading
from collections.abc import Callable
from time import monotonic as time_func  # paho's clock for its keepalive
from typing import TYPE_CHECKING, Any, Literal

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from paho.mqtt.client import _OutPacket

log = logging.getLogger("chargebridge.mqtt")

# Distribution -> (lowest version, first version not supported). The private functions used
# are the same in paho-mqtt 2.1.0 and 2.2.0 (compared); aiomqtt 2.x requires paho 2.x.
SUPPORTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "aiomqtt": ((2, 5), (3, 0)),
    "paho-mqtt": ((2, 1), (3, 0)),
}

# What each trick touches; `problems()` checks every one.
# on an aiomqtt.Client
AIOMQTT_CLIENT_ATTRIBUTES = ("_client", "_disconnected", "_queue", "_on_message")
PAHO_CLIENT_METHODS = (
    "_packet_read",
    "_sock_recv",
    "_loop_rc_handle",
    "_packet_write",
    "_sock_send",
    "_update_inflight",
    "_handle_pubackcomp",
    "_do_on_publish",
    "_packet_queue",
    "_mid_generate",
)
# on a paho.Client instance
PAHO_CLIENT_ATTRIBUTES = (
    "_sock",
    "_out_packet",
    "_out_messages",
    "_inflight_messages",
    "_max_inflight_messages",
    "_max_queued_messages",
    "_in_packet",
    "_out_message_mutex",
    "_manual_ack",
    "_protocol",
    "_last_bytes_received",
    "_state",
    "_registered_write",
)
# in paho.mqtt.client
PAHO_MODULE_ATTRIBUTES = ("MQTTMessage", "mqtt_ms_wait_for_puback", "_ConnectionState")
PROPERTIES_TABLES = ("names", "properties", "types")  # besides packetType, all a Properties has
MESSAGE_INFO_SLOTS = ("_condition", "_iterpos", "_published", "mid", "rc")  # all it has


class UnsupportedMqttLibrary(RuntimeError):
    """aiomqtt or paho-mqtt lacks a private attribute chargebridge relies on."""


# --------------------------------------------------------------------------- the guard


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _in_range(version: str, low: tuple[int, int], high: tuple[int, int]) -> bool:
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and low <= (int(match[1]), int(match[2])) < high


def versions() -> str:
    """The installed versions against the supported ranges, for error messages."""
    return ", ".join(
        f"{name} {installed_version(name)} (written for >={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]})"
        for name, (lo, hi) in SUPPORTED.items()
    )


def version_problems() -> list[str]:
    return [
        f"{name} {installed_version(name)} is outside the versions chargebridge's private "
        f"use of it was written for (>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]})"
        for name, (lo, hi) in SUPPORTED.items()
        if not _in_range(installed_version(name), lo, hi)
    ]


def attribute_problems(client: aiomqtt.Client | None = None) -> list[str]:
    """Private attributes that are missing; with `client` (an aiomqtt.Client, which can only
    be made in a running event loop) also those that exist only on instances."""
    missing = [
        f"paho.mqtt.client.Client.{a}" for a in PAHO_CLIENT_METHODS if not hasattr(paho.Client, a)
    ]
    missing += [f"paho.mqtt.client.{a}" for a in PAHO_MODULE_ATTRIBUTES if not hasattr(paho, a)]
    original = getattr(Properties.__init__, "original", Properties.__init__)
    template = object.__new__(Properties)
    original(template, PacketTypes.PUBLISH)
    found = set(vars(template)) - {"packetType"}
    if found != set(PROPERTIES_TABLES):
        missing.append(
            "paho.mqtt.properties.Properties instance attributes: expected packetType and "
            f"the tables {sorted(PROPERTIES_TABLES)}, found {sorted(found)}"
        )
    info = getattr(paho, "MQTTMessageInfo", None)
    info = getattr(info, "original", info)
    if getattr(info, "__slots__", None) != MESSAGE_INFO_SLOTS:
        missing.append(
            f"paho.mqtt.client.MQTTMessageInfo slots: expected {list(MESSAGE_INFO_SLOTS)}, "
            f"found {list(getattr(info, '__slots__', []))}"
        )
    if client is not None:
        missing += [
            f"aiomqtt.Client.{a}" for a in AIOMQTT_CLIENT_ATTRIBUTES if not hasattr(client, a)
        ]
        inner = getattr(client, "_client", None)
        if inner is not None:
            missing += [
                f"paho.mqtt.client.Client.{a}"
                for a in PAHO_CLIENT_ATTRIBUTES
                if not hasattr(inner, a)
            ]
            if "command" not in getattr(inner, "_in_packet", {"command": 0}):
                missing.append("paho.mqtt.client.Client._in_packet['command']")
    return missing


def problems(client: aiomqtt.Client | None = None) -> list[str]:
    """Everything that does not match what this module was written for (empty: all fine)."""
    found = version_problems()
    for attribute in attribute_problems(client):
        found.append(f"{attribute} is missing")
    return found


_versions_checked = False


def require(client: aiomqtt.Client | None = None) -> None:
    """Raise `UnsupportedMqttLibrary` naming each missing attribute and the versions; log a
    warning (once) for versions outside the supported ranges that still have them all."""
    global _versions_checked
    missing = attribute_problems(client)
    if missing:
        raise UnsupportedMqttLibrary(
            "chargebridge's MQTT client relies on private attributes missing from the "
            f"installed libraries: {'; '.join(missing)} ({versions()}); install versions "
            "within these ranges"
        )
    if not _versions_checked:
        _versions_checked = True
        for problem in version_problems():
            log.warning("%s; it may misbehave", problem)


def install() -> None:
    """What `MqttClient` needs before its first client: the guard, then the process-wide
    patches (`share_property_tables`, `lazy_message_conditions`). Idempotent."""
    if getattr(Properties.__init__, "shared_tables", False):
        return
    require()
    share_property_tables()
    lazy_message_conditions()


# --------------------------------------------------------------------------- aiomqtt


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """aiomqtt's paho client. Publishing straight through it (`MqttClient._sender`) avoids a
    task, an Event, a `wait_for` and a scan of every pending call per message in aiomqtt's
    `publish`: a fifth of the gateway's CPU at 5,000 events/s. Manual acknowledgements
    (`manual_ack_set`, `ack`) exist only there. Whoever replaces one of its callbacks must
    call aiomqtt's own (kept in the attribute) for messages that are not theirs."""
    return client._client


def connection_lost(client: aiomqtt.Client) -> asyncio.Future[None]:
    """The future aiomqtt completes when the connection ends: aiomqtt has no public hook for
    it, and `on_connect` (publishes that cannot finish offline) must be raced against it."""
    return client._disconnected


def received(client: aiomqtt.Client) -> asyncio.Queue[aiomqtt.Message]:
    """aiomqtt's queue of received messages (its `queue_type`, `MqttClient`'s `Received`):
    the connection task moves what is queued there itself instead of through aiomqtt's
    iterator, which costs a task and an `asyncio.wait` per wakeup."""
    return client._queue


# --------------------------------------------------------------------------- paho


def share_property_tables() -> None:
    """Build paho's MQTT v5 property tables once instead of in every `Properties()`.

    paho's `Properties.__init__` rebuilds the same name and type tables (two dicts of 27
    and 28 entries) for every object, and it makes one for every v5 PUBLISH received: a
    quarter of the charging service's CPU went there. The tables are constant (paho only
    reads them), so every instance can share the ones built once by the original __init__.
    Process-wide and idempotent; `install()` applies it when the first MqttClient is made.
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


_condition_made = threading.Lock()


class LazyMessageInfo(paho.MQTTMessageInfo):
    """paho's `MQTTMessageInfo` whose `threading.Condition` is made only when someone waits.

    paho makes one for every message published AND received (with an `RLock` inside): 3% of
    the gateway's CPU at 1,000 events/s, for `wait_for_publish`, which nothing in an asyncio
    process calls. The flag is set before the condition is looked at, and a waiter makes the
    condition before it reads the flag, so a wait that starts at any moment still wakes."""

    __slots__ = ("_lazy",)

    def __init__(self, mid: int) -> None:  # paho's, without the Condition
        self.mid = mid
        self._published = False
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0
        self._lazy: threading.Condition | None = None

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        with _condition_made:
            if self._lazy is None:
                self._lazy = threading.Condition()
            return self._lazy

    def _set_as_published(self) -> None:
        self._published = True
        condition = self._lazy
        if condition is not None:
            with condition:
                condition.notify()


def lazy_message_conditions() -> None:
    """Make paho create `LazyMessageInfo` where it creates its `MQTTMessageInfo` (published
    and received messages alike). Process-wide and idempotent."""
    if paho.MQTTMessageInfo is not LazyMessageInfo:
        LazyMessageInfo.original = paho.MQTTMessageInfo  # type: ignore[attr-defined]
        paho.MQTTMessageInfo = LazyMessageInfo  # type: ignore[misc]


READ_LIMIT = 1000  # packets per readable event, so one busy socket cannot starve the loop
RECV_SIZE = 64 * 1024  # bytes asked of one recv() by the buffered reader
PUBACK = PacketTypes.PUBACK << 4
QUICK = (0x00, 0x10)  # PUBACK reason codes decoded by `quick_puback`: success, no subscribers

# Delivers one incoming PUBLISH decoded by the quick reader: (topic, payload, qos, retain, mid).
# Returns False if it cannot (the packet then goes through paho's code).
Deliver = Callable[[str, bytes, int, bool, int], bool]


def read_everything_available(
    client: paho.Client, deliver: Deliver | None = None, *, quick_packets: bool = True
) -> None:
    """Make paho read every packet already received when its socket is readable, through one
    `recv` per 64 KiB, decoding the common packets without paho's generic reader.

    paho's `loop_read` ignores its `max_packets` and reads as many packets as it has
    messages in flight, ONE when it has none, so a subscriber that publishes little got one
    message per event-loop turn, the rest waiting in the socket: consumers never saw a
    batch. This reads until the socket has no more (or READ_LIMIT packets).

    paho also asks the socket for each packet in three `recv` calls (the command byte, the
    length, the rest) and decodes each through dictionaries of its reading state, an
    exception wrapper and named tuples: the largest share of a PUBACK's or an incoming
    message's cost. Here one `recv(RECV_SIZE)` fills a buffer (it belongs to the socket it
    was read from: a new connection starts empty) and, while paho is between packets, every
    complete packet at its head that is a bare PUBACK (as `quick_puback`) or, with `deliver`,
    a QoS 0/1 PUBLISH without MQTT 5 properties, is decoded here; anything else (another
    packet type, a PUBACK with a reason paho must report, a PUBLISH with properties or a
    topic that is not UTF-8, a packet not complete yet) goes through paho's own `_packet_read`,
    which reads from the same buffer. Bytes left in the buffer are invisible to the event
    loop's readiness, so when READ_LIMIT stops the reading with some left, the next read is
    scheduled at once. A read shorter than RECV_SIZE found the socket empty, so once its
    packets are handled no second recv() is made only to be told so (one system call and
    an exception per readable event; the readiness is level-triggered).
    (`quick_packets=False`: every packet through paho's reader, for bench/mqtt_fixed_costs.py.)
    """
    original_recv = client._sock_recv
    buffer = bytearray()
    source: list[object] = [None]  # the socket the buffered bytes came from
    failed: list[BaseException | None] = [None]  # a recv error for paho to see
    # The last fill read less than it asked: the socket had no more at that moment.
    drained: list[bool] = [False]
    on_puback = _puback_handler(client)
    v5 = client._protocol == paho.MQTTv5

    def sock_recv(bufsize: int) -> bytes:
        if source[0] is not client._sock:
            buffer.clear()
            source[0] = client._sock
        if not buffer:
            error = failed[0]
            if error is not None:
                failed[0] = None
                raise error
            data = original_recv(RECV_SIZE)  # BlockingIOError, ConnectionError as paho's
            if len(data) <= bufsize:
                return data  # b"" is the end of the connection, for paho to see
            buffer.extend(data)
        chunk = bytes(buffer[:bufsize])
        del buffer[:bufsize]
        return chunk

    def fill() -> bool:
        """Read what the socket has into the empty buffer; False if nothing is there (an
        error or the end of the connection is left for paho's read to find and report)."""
        if source[0] is not client._sock:
            buffer.clear()
            source[0] = client._sock
        try:
            data = original_recv(RECV_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            failed[0] = exc
            return True
        if not data:
            return True  # paho's read gets b"" from the socket again: the end
        buffer.extend(data)
        drained[0] = len(data) < RECV_SIZE
        return True

    def quick(limit: int) -> tuple[int, MQTTErrorCode]:
        """Handle up to `limit` complete common packets at the buffer's head: (how many,
        paho's error code for the first failure or success)."""
        buf = buffer
        size = len(buf)
        at = 0
        done = 0
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while done < limit and at + 2 <= size:
            command = buf[at]
            length = buf[at + 1]
            head = at + 2
            if length & 0x80:  # a longer remaining length (up to 4 bytes)
                length &= 0x7F
                shift = 7
                while True:
                    if head >= size or shift > 21:
                        length = -1
                        break
                    byte = buf[head]
                    head += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                if length < 0:
                    break
            end = head + length
            if end > size:
                break  # not complete yet: paho reads it as it arrives
            kind = command & 0xF0
            if kind == PUBACK:
                if length == 2:
                    reason = 0
                elif length == 3 and buf[head + 2] in QUICK:
                    reason = buf[head + 2]
                else:
                    break
                rc = on_puback(buf[head] << 8 | buf[head + 1], reason)
            elif kind == PUBLISH and deliver is not None and command & 0x06 in (0, 2):
                qos = (command & 0x06) >> 1
                if length < 2:
                    break
                topic_end = head + 2 + (buf[head] << 8 | buf[head + 1])
                pos = topic_end + 2 * qos + v5
                if topic_end == head + 2 or pos > end:
                    break  # no topic (an MQTT 5 alias) or malformed: paho's verdict
                if v5 and buf[pos - 1]:
                    break  # MQTT 5 properties: paho decodes them
                mid = buf[topic_end] << 8 | buf[topic_end + 1] if qos else 0
                try:
                    topic = buf[head + 2 : topic_end].decode()
                except UnicodeDecodeError:
                    break
                if not deliver(topic, bytes(buf[pos:end]), qos, bool(command & 1), mid):
                    break
                if qos and not client._manual_ack:
                    rc = send_puback(client, mid)
            else:
                break
            at = end
            done += 1
            if rc:
                break
        if at:
            del buf[:at]
            client._last_bytes_received = time_func()
        return done, rc

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        count = 0
        while count < READ_LIMIT:
            if client._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if quick_packets and client._in_packet["command"] == 0:  # between packets
                if (not buffer or source[0] is not client._sock) and not fill():
                    break
                done, rc = quick(READ_LIMIT - count)
                if rc > 0:
                    return client._loop_rc_handle(rc)
                count += done
                if done and not buffer and drained[0]:
                    # A short read took all the socket had: what arrives later makes it
                    # readable again (the event loop's readiness is level-triggered), so
                    # no second recv() only to learn that it is empty.
                    drained[0] = False
                    break
                if done and (not buffer or count >= READ_LIMIT):
                    continue
            rc = client._packet_read()
            if rc > 0:
                return client._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
            count += 1
        else:
            if buffer and source[0] is client._sock:
                asyncio.get_running_loop().call_soon(loop_read)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._sock_recv = sock_recv  # type: ignore[method-assign]
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


def no_idle_inflight_scan(client: paho.Client) -> None:
    """Skip paho's scan of every unacknowledged message after each PUBACK when it cannot find
    anything.

    `_update_inflight` looks through all of `_out_messages` for one queued behind paho's
    in-flight limit. `MqttClient` never hands paho more than that limit, so the scan finds
    nothing, and with tens of messages in flight (a broker a few ms away at 1,000 events/s)
    it was the largest single cost of a PUBACK. A message is queued only when paho holds more
    messages than it counts in flight; otherwise the scan is skipped.
    """
    original = client._update_inflight

    def update_inflight() -> MQTTErrorCode:
        if len(client._out_messages) <= client._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return original()

    client._update_inflight = update_inflight  # type: ignore[method-assign]


def send_puback(client: paho.Client, mid: int) -> MQTTErrorCode:
    """paho's `_send_puback` without its debug log line (a `logging` call per message)."""
    return client._packet_queue(PUBACK, bytes((PUBACK, 2, mid >> 8, mid & 0xFF)), mid, 1)


def ack(client: paho.Client, mid: int, qos: int) -> MQTTErrorCode:
    """paho's `ack` (manual acknowledgements) of a QoS 1 message through `send_puback`; other
    QoS levels through paho's own."""
    if qos == 1 and client._manual_ack:
        return send_puback(client, mid)
    return client.ack(mid, qos)


class RawAcks:
    """The messages `quick_publish(client, on_ack)` sent without paho's bookkeeping (their
    ids, in flight) and who hears of their PUBACK. One per paho client (`raw_acks`), shared
    by the PUBACK readers (`quick_puback`, `read_everything_available`)."""

    __slots__ = ("mids", "on_ack")

    def __init__(self) -> None:
        self.mids: set[int] = set()
        self.on_ack: Callable[[int, ReasonCode], None] | None = None

    def ack(self, mid: int, reason: ReasonCode) -> bool:
        """The PUBACK of `mid` to `on_ack`, once; False if `mid` is not one of ours."""
        if mid not in self.mids:
            return False
        self.mids.discard(mid)
        if self.on_ack is not None:
            self.on_ack(mid, reason)
        return True


RAW_ACKS = "_chargebridge_raw_acks"  # the client's RawAcks, set on first use


def raw_acks(client: paho.Client) -> RawAcks:
    raw: RawAcks | None = client.__dict__.get(RAW_ACKS)
    if raw is None:
        raw = RawAcks()
        setattr(client, RAW_ACKS, raw)
    return raw


def _puback_handler(client: paho.Client) -> Callable[[int, int], MQTTErrorCode]:
    """What paho does with a PUBACK of message id `mid` and a success reason (0x00, 0x10)
    and no properties, without decoding it again: `on_publish` with one shared reason code
    per value and empty properties (its callbacks only read them). A message sent without
    paho's bookkeeping (`quick_publish` with `on_ack`) goes to `on_ack` instead."""
    reasons = {code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in QUICK}
    no_properties = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    mutex = client._out_message_mutex
    out_messages = client._out_messages
    do_on_publish = client._do_on_publish
    raw = raw_acks(client)

    def on_puback(mid: int, reason: int) -> MQTTErrorCode:
        if raw.ack(mid, reasons[reason]):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        with mutex:
            if mid in out_messages:
                return do_on_publish(mid, reasons[reason], no_properties)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    return on_puback


def _raw_puback(raw: RawAcks, packet: bytes | bytearray) -> bool:
    """A PUBACK paho would decode (another reason code, properties) of a message sent without
    paho's bookkeeping: its reason code to `on_ack` (paho would drop it: the id is not in its
    `_out_messages`). False if the message is not one of those."""
    mid = packet[0] << 8 | packet[1]
    if mid not in raw.mids:
        return False
    code = packet[2] if len(packet) > 2 else 0
    try:
        reason = ReasonCode(PacketTypes.PUBACK, identifier=code)
    except (KeyError, ValueError):  # a code MQTT does not define for a PUBACK: a failure
        reason = ReasonCode(PacketTypes.PUBACK, "Unspecified error")
    return raw.ack(mid, reason)


def quick_puback(client: paho.Client) -> None:
    """Decode the common PUBACK (a bare message id: success, no properties) without paho's
    generic decoder.

    paho decodes every PUBACK into a new `ReasonCode` and `Properties` (after the exception
    wrapper and a named tuple): about 8% of the gateway's and of the service's CPU at 1,000
    events/s, where every event is acknowledged. A PUBACK of a message id alone (success) or
    with the reason "no matching subscribers" (0x10, which Mosquitto sends for a topic nobody
    subscribes to, e.g. most retained port states) and no properties is handed to paho's own
    `_do_on_publish` with one shared reason code and empty properties, which its callbacks
    only read; any other PUBACK (another reason code, properties) and PUBCOMP go through
    paho's code as before. (`read_everything_available` does the same for the PUBACKs it
    finds complete in its buffer; this serves those paho reads itself.)
    """
    original = client._handle_pubackcomp
    on_puback = _puback_handler(client)
    raw = raw_acks(client)

    def handle_pubackcomp(cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = client._in_packet["packet"]
        if cmd != "PUBACK":
            return original(cmd)
        if len(packet) == 2:
            reason = 0
        elif len(packet) == 3 and packet[2] in QUICK:
            reason = packet[2]
        else:
            if len(packet) >= 2 and _raw_puback(raw, packet):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            return original(cmd)
        return on_puback(packet[0] << 8 | packet[1], reason)

    client._handle_pubackcomp = handle_pubackcomp  # type: ignore[method-assign]


TOPICS_KEPT = 4096  # incoming topic names whose aiomqtt `Topic` is reused


def quick_delivery(client: aiomqtt.Client) -> Deliver:
    """What aiomqtt's `on_message` does with an incoming message, for the quick reader
    (`read_everything_available`): an `aiomqtt.Message` into its queue, without paho's
    `MQTTMessage`, its topic matcher and the callback locks, and with the validated `Topic`
    of a topic seen before (frozen, so shared). It declines (paho's code then delivers)
    while paho's `on_message` is not aiomqtt's or a per-topic callback was added."""
    inner = client._client
    aiomqtt_on_message = client._on_message
    queue = client._queue
    topics: dict[str, aiomqtt.Topic] = {}
    filtered: list[bool] = [False]
    add_filtered = inner.message_callback_add

    def message_callback_add(sub: str, callback: Callable[..., None]) -> None:
        filtered[0] = True
        add_filtered(sub, callback)

    inner.message_callback_add = message_callback_add  # type: ignore[method-assign]
    properties = (
        (lambda: Properties(PacketTypes.PUBLISH))  # type: ignore[no-untyped-call]
        if inner._protocol == paho.MQTTv5
        else (lambda: None)
    )

    def deliver(topic: str, payload: bytes, qos: int, retain: bool, mid: int) -> bool:
        if filtered[0] or inner.on_message != aiomqtt_on_message:
            return False
        found = topics.get(topic)
        if found is None:
            try:
                found = aiomqtt.Topic(topic)
            except ValueError:
                return False  # a wildcard in a received topic: paho's path reports it
            if len(topics) >= TOPICS_KEPT:
                topics.clear()
            topics[topic] = found
        try:
            queue.put_nowait(aiomqtt.Message(found, payload, qos, retain, mid, properties()))
        except asyncio.QueueFull:
            log.warning("Message queue is full. Discarding message.")  # as aiomqtt's
        return True

    return deliver


def write_soon(client: aiomqtt.Client) -> None:
    """Write what paho queued at the end of this event-loop turn, not after a round through
    the loop's selector.

    aiomqtt's `on_socket_register_write` (called by paho for the first packet queued) hands
    `add_writer` to the loop through `call_soon_threadsafe` (a write to the loop's wake-up
    pipe), so the packets go out two loop turns and four system calls later (the wake-up,
    `epoll_ctl` twice, the poll that finds the socket writable). A connected socket is
    nearly always writable: here the write is a `call_soon` on the loop's thread, and only
    what the socket did not take waits for writability through aiomqtt's way. Calls from
    another thread (paho's connect runs in an executor) go aiomqtt's way as before, and so
    does the DISCONNECT of a client closing: written at once, it reached the embedded amqtt
    broker while it still had messages queued for that client, which it then logged as
    failed tasks with tracebacks (tests/bridge/roles/test_run_and_demo.py)."""
    inner = client._client
    register = inner.on_socket_register_write
    if register is None:
        return
    inner.on_socket_register_write = SoonWriter(client, register)


class SoonWriter:
    """paho's `on_socket_register_write` for `write_soon`; `now()` writes at once what a
    `call_soon` would write at the end of this loop turn (`queued_writer`)."""

    def __init__(self, client: aiomqtt.Client, register: Callable[..., None]) -> None:
        self._client = client
        self._inner = client._client
        self._register = register
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._scheduled = False
        # While True (`queued_writer`'s caller is queuing packets and calls `now()` after),
        # no `call_soon` is made for them.
        self.held = False
        self._watching = False  # a writer for the socket is registered with the loop
        self._disconnecting = paho._ConnectionState.MQTT_CS_DISCONNECTING  # type: ignore[attr-defined]

    def __call__(self, c: paho.Client, userdata: object, sock: object) -> None:
        if threading.get_ident() != self._thread:
            self._register(c, userdata, sock)
        elif not self._scheduled:
            self._scheduled = True
            if not self.held:
                self._loop.call_soon(self.now)

    def now(self) -> None:
        """Write what paho queued since the last write, if anything (else nothing: the
        `call_soon` that follows an early `now()` finds nothing to do)."""
        if not self._scheduled:
            return
        self._scheduled = False
        inner = self._inner
        sock = inner._sock
        if sock is None:
            return
        if inner._state == self._disconnecting:  # its DISCONNECT: through the selector
            self._loop.call_soon(self._wait_writable, sock)
            return
        if self._watching:
            self._on_writable()  # paho's `loop_write`, which also stops the watching
        else:
            self._write()
        if inner._out_packet:
            self._wait_writable(inner._sock)  # the rest when the socket is writable

    def _write(self) -> None:
        """paho's `loop_write` without its call to aiomqtt's `remove_writer` (through two
        locks) for a socket the loop is not watching for writability (about 3% of a 0x06's
        instructions): paho is told its write request is served."""
        inner = self._inner
        try:
            rc = inner._packet_write()
            if rc > 0:
                inner._loop_rc_handle(rc)
        except Exception as exc:  # as aiomqtt's writer callback: the connection is broken
            if not self._client._disconnected.done():
                self._client._disconnected.set_exception(exc)
        if not inner._out_packet:
            inner._registered_write = False

    def _on_writable(self) -> None:
        try:
            self._inner.loop_write()
        except Exception as exc:  # as aiomqtt's writer callback: the connection is broken
            if not self._client._disconnected.done():
                self._client._disconnected.set_exception(exc)
        if not self._inner._out_packet:
            self._watching = False  # `loop_write` had aiomqtt remove the writer

    def _wait_writable(self, sock: Any) -> None:
        """aiomqtt's `add_writer`, for a socket still open: its own, one loop turn late,
        could meet a socket closed meanwhile (a DISCONNECT's) and log EBADF's traceback."""
        if self._inner._sock is sock and sock is not None:
            self._watching = True
            self._loop.add_writer(sock.fileno(), self._on_writable)


def queued_writer(client: paho.Client) -> Callable[[Callable[[], None]], None]:
    """Runs `queue` (which queues packets through paho) and writes what it queued at once
    (`SoonWriter.now`), without the `call_soon` paho's first packet would ask for: for
    `MqttClient._sender`, whose packets then leave one loop turn sooner, and that turn and
    its handle are saved. For a client without `write_soon`: just `queue()`."""
    writer = client.on_socket_register_write
    if not isinstance(writer, SoonWriter):
        return lambda queue: queue()
    sooner = writer

    def queue_and_write(queue: Callable[[], None]) -> None:
        sooner.held = True
        try:
            queue()
        finally:
            sooner.held = False
            sooner.now()

    return queue_and_write


PUBLISH_QOS1 = PUBLISH | 2


def _fixed_header(command: int, length: int) -> bytes:
    """An MQTT fixed header: the command byte and the remaining length (1-4 bytes)."""
    if length < 0x80:
        return bytes((command, length))
    out = bytearray((command,))
    while length:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | 0x80 if length else byte)
    return bytes(out)


def quick_publish(
    client: paho.Client, on_ack: Callable[[int, ReasonCode], None] | None = None
) -> Callable[[str, bytes, bool, Properties | None], int]:
    """paho's `publish` of a QoS 1 message for `MqttClient`, without the checks and copies it
    does not need; returns the message id, or a negative `MQTTErrorCode` if paho refused it.

    paho's `publish` validates the topic byte by byte, encodes the packet through several
    helpers, formats a debug log line and builds a `MQTTMessageInfo` per message: about 8% of
    the gateway's CPU at 1,000 events/s. This encodes the PUBLISH packet in one `join` and
    queues it through paho's `_packet_queue`, keeping paho's bookkeeping (the message in
    `_out_messages`, counted in flight) so that its PUBACK handling, reason codes included,
    works unchanged. Anything unusual goes through paho's `publish` (its verdict, its errors):
    a topic with a wildcard or empty, a payload over 16 MiB, not connected, paho's in-flight
    limit reached, a message id still in use.

    With `on_ack` (`MqttClient`, which keeps its own record of what is in flight and requeues
    it after a lost connection, paho's client being new on each), paho's bookkeeping is
    skipped too: no `MQTTMessage` and no entry in `_out_messages` per message, and the PUBACK
    goes to `on_ack(mid, reason)` (`RawAcks`) instead of through paho's `_do_on_publish`
    (its two locks, the message's info, the in-flight count): ~5 µs less per message
    (docs/performance.md). paho never resends such a message; nothing of ours needs it to."""
    raw = raw_acks(client)
    if on_ack is not None:
        raw.on_ack = on_ack
    raw_mids = raw.mids
    v5 = client._protocol == paho.MQTTv5
    mutex = client._out_message_mutex
    out_messages = client._out_messages
    packet_queue = client._packet_queue
    mid_generate = client._mid_generate
    message_class = paho.MQTTMessage
    empty_properties = b"\x00" if v5 else b""
    wait_for_puback = paho.mqtt_ms_wait_for_puback
    most_inflight = client._max_inflight_messages or math.inf  # fixed once connected

    def slow(topic: str, payload: bytes, retain: bool, properties: Properties | None) -> int:
        info = client.publish(topic, payload, 1, retain, properties)  # may raise ValueError
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return info.mid
        return -info.rc

    def publish(topic: str, payload: bytes, retain: bool, properties: Properties | None) -> int:
        name = topic.encode()
        size = len(name)
        if (
            not 0 < size <= 0xFFFF
            or b"+" in name
            or b"#" in name
            or len(payload) > 0xFFFFFF
            or client._sock is None
            or client._inflight_messages >= most_inflight
            or client._max_queued_messages
        ):
            return slow(topic, payload, retain, properties)
        props = empty_properties
        if v5 and properties is not None:
            props = properties.pack()  # type: ignore[no-untyped-call]
        mid = mid_generate()
        length = 4 + size + len(props) + len(payload)
        if on_ack is not None:
            if mid in raw_mids or mid in out_messages:
                return slow(topic, payload, retain, properties)
            raw_mids.add(mid)
            packet_queue(
                PUBLISH,
                _publish_packet(retain, length, size, name, mid, props, payload),
                mid,
                1,
                None,
            )
            return mid
        with mutex:
            if mid in out_messages:
                return slow(topic, payload, retain, properties)
            message = message_class(mid, name)
            message.timestamp = time_func()
            message.payload = payload
            message.qos = 1
            message.retain = retain
            message.properties = properties
            message.state = wait_for_puback
            out_messages[mid] = message
            client._inflight_messages += 1
            packet = _publish_packet(retain, length, size, name, mid, props, payload)
            packet_queue(PUBLISH, packet, mid, 1, message.info)
        return mid

    return publish


def _publish_packet(
    retain: bool, length: int, size: int, name: bytes, mid: int, props: bytes, payload: bytes
) -> bytes:
    """A QoS 1 PUBLISH packet; `length` is its remaining length, `size` the topic's."""
    command = PUBLISH_QOS1 | retain
    return b"".join(
        (
            bytes((command, length))
            if length < 0x80
            else bytes((command, length & 0x7F | 0x80, length >> 7))
            if length < 0x4000
            else _fixed_header(command, length),
            size.to_bytes(2, "big"),
            name,
            mid.to_bytes(2, "big"),
            props,
            payload,
        )
    )


def speed_up(client: aiomqtt.Client) -> paho.Client:
    """Check a new aiomqtt client against what this module relies on, then make its paho
    client read everything available (common packets decoded quickly) and write in bulk at
    the end of the loop turn. Returns that paho client (publish with `quick_publish`)."""
    require(client)
    inner = paho_client(client)
    read_everything_available(inner, quick_delivery(client))
    write_in_bulk(inner)
    no_idle_inflight_scan(inner)
    quick_puback(inner)
    write_soon(client)
    return inner
