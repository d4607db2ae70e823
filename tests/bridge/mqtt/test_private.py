"""The guard of bridge/mqtt/_private.py: the installed aiomqtt and paho-mqtt are versions its
private use was written for and have every private attribute it touches; if not, it says
which, with the versions. The patch is applied by making a client, not by importing."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.properties import Properties

from bridge.mqtt import _private


def test_the_installed_versions_are_the_ones_the_private_use_was_written_for() -> None:
    found = _private.problems()
    assert not found, (
        "bridge/mqtt/_private.py was not written for the installed MQTT libraries: "
        + "; ".join(found)
        + f" ({_private.versions()}). Check each trick in it against the new version, "
        "then widen SUPPORTED there and the bounds in pyproject.toml."
    )


async def test_a_client_has_every_private_attribute_touched() -> None:
    client = aiomqtt.Client("127.0.0.1")  # made, never connected
    found = _private.problems(client)
    assert not found, "; ".join(found) + f" ({_private.versions()})"
    assert isinstance(_private.paho_client(client), paho.Client)
    assert not _private.connection_lost(client).done()


def test_a_missing_paho_attribute_is_named_with_the_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(paho.Client, "_packet_write")
    assert "paho.mqtt.client.Client._packet_write is missing" in _private.problems()
    with pytest.raises(_private.UnsupportedMqttLibrary) as raised:
        _private.require()
    message = str(raised.value)
    assert "paho.mqtt.client.Client._packet_write" in message
    assert f"paho-mqtt {_private.installed_version('paho-mqtt')}" in message
    assert f"aiomqtt {_private.installed_version('aiomqtt')}" in message


async def test_a_missing_aiomqtt_attribute_stops_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = aiomqtt.Client("127.0.0.1")
    del client._disconnected
    with pytest.raises(_private.UnsupportedMqttLibrary, match=r"aiomqtt\.Client\._disconnected"):
        _private.speed_up(client)


def test_a_properties_table_paho_adds_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sharing the tables is safe only while a Properties holds nothing but them."""

    def paho_with_a_cache(self: Properties, packetType: int) -> None:
        tables = {"names": {}, "properties": {}, "types": [], "cache": {}}  # cache: per instance
        for name, value in {"packetType": packetType, **tables}.items():
            object.__setattr__(self, name, value)

    monkeypatch.setattr(Properties, "__init__", paho_with_a_cache)
    [problem] = _private.problems()
    assert "found ['cache', 'names', 'properties', 'types']" in problem


@pytest.mark.parametrize("version", ["3.0.0", "2.0.1", "1.6.1"])
def test_a_version_outside_the_range_is_reported(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    def installed(name: str) -> str:
        return version if name == "paho-mqtt" else "2.5.1"

    monkeypatch.setattr(_private, "installed_version", installed)
    assert _private.problems() == [
        f"paho-mqtt {version} is outside the versions chargebridge's private use of it was "
        "written for (>=2.1,<3.0)"
    ]


FRESH_PROCESS = """
import sys
from paho.mqtt.properties import Properties
import bridge.config
from bridge.mqtt.client import MqttSettings, Will
import bridge.mqtt.settings as settings
assert MqttSettings is settings.MqttSettings and Will is settings.Will
patched = lambda: getattr(Properties.__init__, "shared_tables", False)
print(patched())
from bridge.mqtt.client import MqttClient
MqttClient(MqttSettings())
MqttClient(MqttSettings())
print(patched())
"""


def test_the_patch_is_applied_by_making_a_client_not_by_importing() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_reading_the_configuration_imports_no_mqtt_library() -> None:
    code = "import sys, bridge.config; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'paho'" not in out.stdout and "'aiomqtt'" not in out.stdout


def _client_with_one_unacknowledged_message() -> tuple[paho.Client, list[tuple[int, object]]]:
    """A paho client (never connected) holding one QoS 1 message, its acknowledgements
    recorded."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    seen: list[tuple[int, object]] = []
    client.on_publish = lambda _c, _u, mid, reason, _p: seen.append((mid, reason))
    client.publish("t", b"x", qos=1)  # not connected: kept in flight, unacknowledged
    _private.quick_puback(client)
    return client, seen


@pytest.mark.parametrize(
    ("reason", "name"), [(b"", "Success"), (b"\x10", "No matching subscribers")]
)
def test_a_bare_puback_acknowledges_its_message_through_the_short_path(
    reason: bytes, name: str
) -> None:
    client, seen = _client_with_one_unacknowledged_message()
    [mid] = client._out_messages
    client._in_packet["packet"] = mid.to_bytes(2, "big") + reason
    client._handle_pubackcomp("PUBACK")
    assert [(m, str(r), r.is_failure) for m, r in seen] == [(mid, name, False)]  # type: ignore[attr-defined]
    assert not client._out_messages
    client._handle_pubackcomp("PUBACK")  # a duplicate acknowledges nothing twice
    assert len(seen) == 1


def test_a_puback_with_a_reason_code_still_reports_the_refusal() -> None:
    client, seen = _client_with_one_unacknowledged_message()
    [mid] = client._out_messages
    client._in_packet["packet"] = mid.to_bytes(2, "big") + bytes([0x87])  # not authorized
    client._handle_pubackcomp("PUBACK")
    assert [(m, r.is_failure) for m, r in seen] == [(mid, True)]  # type: ignore[attr-defined]


class _CountingSocket:
    """One end of a socket pair that counts the `recv` calls paho makes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, bufsize: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(bufsize)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


async def test_packets_are_read_from_one_recv_and_none_is_left_in_the_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five PUBACKs arrive at once; with at most 2 packets per read, the 3 left in the
    buffer (the socket itself is then empty, so never readable again) are still read."""
    monkeypatch.setattr(_private, "READ_LIMIT", 2)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    acked: list[int] = []
    client.on_publish = lambda _c, _u, mid, _r, _p: acked.append(mid)
    for _ in range(5):
        client.publish("t", b"x", qos=1)  # not connected: kept in flight
    mids = list(client._out_messages)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    counting = _CountingSocket(ours)
    client._sock = counting  # type: ignore[assignment]
    _private.read_everything_available(client)
    broker.sendall(b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids))
    client.loop_read()
    for _ in range(10):
        if len(acked) == 5:
            break
        await asyncio.sleep(0)
    assert acked == mids
    # One recv: it read less than it asked, so the socket had no more (paho alone: 3 per
    # packet, and a fourth to learn that the socket is empty).
    assert counting.recvs == 1
    client._sock = None
    broker.close()
    ours.close()


def test_a_message_info_wakes_a_waiter_though_its_condition_is_made_late() -> None:
    """`LazyMessageInfo` has no Condition until someone waits; a thread waiting still wakes
    when the message is published, and one published first needs no Condition at all."""
    _private.lazy_message_conditions()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    assert isinstance(client.publish("t", b"x", qos=1), _private.LazyMessageInfo)
    info = _private.LazyMessageInfo(1)
    waited = threading.Thread(target=info.wait_for_publish, args=(30,))
    waited.start()
    deadline = time.monotonic() + 30
    while info._lazy is None and time.monotonic() < deadline:  # the waiter made it
        time.sleep(0.001)
    assert info._lazy is not None
    info._set_as_published()
    waited.join(30)
    assert not waited.is_alive() and info.is_published()
    quick = _private.LazyMessageInfo(7)
    quick._set_as_published()
    assert quick._lazy is None and quick.is_published()


@pytest.mark.parametrize(
    ("owner", "name", "named"),
    [
        (paho.Client, "_packet_queue", "paho.mqtt.client.Client._packet_queue"),
        (paho.Client, "_mid_generate", "paho.mqtt.client.Client._mid_generate"),
        (paho, "mqtt_ms_wait_for_puback", "paho.mqtt.client.mqtt_ms_wait_for_puback"),
    ],
)
def test_what_the_quick_publish_relies_on_is_named_when_missing(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, named: str
) -> None:
    monkeypatch.delattr(owner, name)
    assert f"{named} is missing" in _private.problems()


async def test_a_missing_attribute_of_the_quick_reader_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = aiomqtt.Client("127.0.0.1")
    monkeypatch.delattr(aiomqtt.Client, "_on_message")
    inner = _private.paho_client(client)
    del inner._manual_ack
    found = _private.problems(client)
    assert "paho.mqtt.client.Client._manual_ack is missing" in found
    assert "aiomqtt.Client._on_message is missing" in found
