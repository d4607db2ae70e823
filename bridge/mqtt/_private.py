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
import re
import threading
from typing import TYPE_CHECKING, Literal

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
AIOMQTT_CLIENT_ATTRIBUTES = ("_client", "_disconnected", "_queue")  # on an aiomqtt.Client
PAHO_CLIENT_METHODS = (
    "_packet_read",
    "_sock_recv",
    "_loop_rc_handle",
    "_packet_write",
    "_sock_send",
    "_update_inflight",
    "_handle_pubackcomp",
    "_do_on_publish",
)
# on a paho.Client instance
PAHO_CLIENT_ATTRIBUTES = (
    "_sock",
    "_out_packet",
    "_out_messages",
    "_inflight_messages",
    "_in_packet",
    "_out_message_mutex",
)
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


def take_received(client: aiomqtt.Client) -> aiomqtt.Message:
    """The next message aiomqtt has already received (call only while `len(client.messages)`
    says there is one). Its iterator costs a task and a loop turn per message; taking what has
    arrived directly lets a consumer see it as one batch."""
    return client._queue.get_nowait()


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


def read_everything_available(client: paho.Client) -> None:
    """Make paho read every packet already received when its socket is readable, through one
    `recv` per 64 KiB.

    paho's `loop_read` ignores its `max_packets` and reads as many packets as it has
    messages in flight, ONE when it has none, so a subscriber that publishes little got one
    message per event-loop turn, the rest waiting in the socket: consumers never saw a
    batch. This reads until the socket has no more (or READ_LIMIT packets).

    paho also asks the socket for each packet in three `recv` calls (the command byte, the
    length, the rest): 6 system calls per event in a gateway that gets two PUBACKs per
    frame. Its `_sock_recv` is served from a buffer filled by one `recv(RECV_SIZE)` instead;
    the buffer belongs to the socket it was read from (a new connection starts empty). Bytes
    left in the buffer are invisible to the event loop's readiness, so when READ_LIMIT stops
    the reading with some left, the next read is scheduled at once.
    """
    original_recv = client._sock_recv
    buffer = bytearray()
    source: list[object] = [None]  # the socket the buffered bytes came from

    def sock_recv(bufsize: int) -> bytes:
        if source[0] is not client._sock:
            buffer.clear()
            source[0] = client._sock
        if not buffer:
            data = original_recv(RECV_SIZE)  # BlockingIOError, ConnectionError as paho's
            if len(data) <= bufsize:
                return data  # b"" is the end of the connection, for paho to see
            buffer.extend(data)
        chunk = bytes(buffer[:bufsize])
        del buffer[:bufsize]
        return chunk

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        for _ in range(READ_LIMIT):
            if client._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = client._packet_read()
            if rc > 0:
                return client._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
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


QUICK = (0x00, 0x10)  # PUBACK reason codes decoded by `quick_puback`: success, no subscribers


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
    paho's code as before.
    """
    original = client._handle_pubackcomp
    success = ReasonCode(PacketTypes.PUBACK)
    reasons = {bytes([code]): ReasonCode(PacketTypes.PUBACK, identifier=code) for code in QUICK}
    no_properties = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    mutex = client._out_message_mutex

    def handle_pubackcomp(cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = client._in_packet["packet"]
        if cmd != "PUBACK":
            return original(cmd)
        found = success if len(packet) == 2 else reasons.get(bytes(packet[2:]))
        if found is None or len(packet) > 3:
            return original(cmd)
        mid = packet[0] << 8 | packet[1]
        with mutex:
            if mid in client._out_messages:
                return client._do_on_publish(mid, found, no_properties)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._handle_pubackcomp = handle_pubackcomp  # type: ignore[method-assign]


def speed_up(client: aiomqtt.Client) -> paho.Client:
    """Check a new aiomqtt client against what this module relies on, then make its paho
    client read everything available and write in bulk. Returns that paho client."""
    require(client)
    inner = paho_client(client)
    read_everything_available(inner)
    write_in_bulk(inner)
    no_idle_inflight_scan(inner)
    quick_puback(inner)
    return inner
