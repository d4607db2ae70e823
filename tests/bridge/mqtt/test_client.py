"""MqttClient against a real Mosquitto: acknowledgements, outages, ordering, on_connect."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiomqtt
import pytest

from bridge.mqtt import _private
from bridge.mqtt.client import MqttClient, MqttSettings
from tests.broker import Mosquitto


def settings(broker: Mosquitto, **kw: object) -> MqttSettings:
    return MqttSettings(url=broker.url, **kw)


async def next_messages(
    client: aiomqtt.Client, n: int, timeout: float = 10
) -> list[aiomqtt.Message]:
    out: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for m in client.messages:
            out.append(m)
            if len(out) == n:
                return out
    raise AssertionError("unreachable")


async def test_publish_returns_after_broker_ack_and_is_delivered(broker: Mosquitto) -> None:
    async with (
        broker.client() as sub,
        MqttClient(settings(broker, client_id="t1")) as mqtt,
    ):
        await sub.subscribe("chargebridge/t/#", qos=1)
        await mqtt.publish("chargebridge/t/a", b"hello")
        assert mqtt.queued == 0
        [msg] = await next_messages(sub, 1)
        assert msg.payload == b"hello"


async def test_outage_keeps_order_and_acks_only_after_broker_is_back(broker: Mosquitto) -> None:
    # A persistent subscriber so that the broker keeps what arrives for it across restarts.
    async with broker.client(identifier="watcher", clean_session=False) as sub:
        await sub.subscribe("chargebridge/t/#", qos=1)
    async with MqttClient(settings(broker, client_id="t2")) as mqtt:
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        broker.stop()
        async with asyncio.timeout(10):
            await mqtt.disconnected.wait()
        futures = [mqtt.submit("chargebridge/t/seq", str(i)) for i in range(200)]
        await asyncio.sleep(0)
        assert not any(f.done() for f in futures), "acknowledged while the broker was down"
        assert mqtt.queued == 200
        broker.start()
        async with asyncio.timeout(20):
            await asyncio.gather(*futures)
        assert mqtt.queued == 0
    async with broker.client(identifier="watcher", clean_session=False) as sub:
        got = await next_messages(sub, 200)
    assert [m.payload for m in got] == [str(i).encode() for i in range(200)]


async def test_on_connect_runs_before_messages_after_every_connection(broker: Mosquitto) -> None:
    calls: list[int] = []
    reconnected = asyncio.Event()

    async def on_connect() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            reconnected.set()
        await mqtt.publish("chargebridge/t/state", b"online", retain=True)

    mqtt = MqttClient(
        settings(broker, client_id="t3"),
        subscriptions=[("chargebridge/in/#", 1)],
        on_connect=on_connect,
    )
    async with mqtt:
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        assert calls == [0]
        broker.kill()
        broker.start()
        async with broker.client() as pub:
            async with asyncio.timeout(15):
                await reconnected.wait()
            await pub.publish("chargebridge/in/x", b"1", qos=1)
            async with asyncio.timeout(10):
                msg = await anext(aiter(mqtt.messages))
        assert msg.payload == b"1"
        assert calls == [0, 1]


WILL_SCRIPT = """
import asyncio, sys
from bridge.mqtt.client import MqttClient, MqttSettings, Will

async def main():
    s = MqttSettings(url=sys.argv[1], client_id="dying", keepalive_s=2,
                     will=Will(topic="chargebridge/t/state", payload=b"offline", retain=True))
    async with MqttClient(s) as mqtt:
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        print("connected", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_will_is_published_when_the_process_dies(broker: Mosquitto) -> None:
    async with broker.client() as sub:
        await sub.subscribe("chargebridge/t/state", qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WILL_SCRIPT, broker.url, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            assert await proc.stdout.readline() == b"connected\n"
        proc.kill()
        await proc.wait()
        [msg] = await next_messages(sub, 1, timeout=15)
        assert msg.payload == b"offline"
        assert msg.retain is False  # live delivery; the broker retains it for later readers


async def test_manual_ack_leaves_unprocessed_messages_with_the_broker(broker: Mosquitto) -> None:
    s = settings(broker, client_id="svc", clean_start=False, session_expiry_s=3600, manual_ack=True)
    async with MqttClient(s, subscriptions=[("chargebridge/jobs/#", 1)]) as mqtt:
        await asyncio.wait_for(mqtt.wait_connected(), 10)
    async with broker.client() as pub:
        await pub.publish("chargebridge/jobs/1", b"a", qos=1)
        await pub.publish("chargebridge/jobs/2", b"b", qos=1)
    async with MqttClient(s, subscriptions=[("chargebridge/jobs/#", 1)]) as mqtt:
        it = aiter(mqtt.messages)
        async with asyncio.timeout(10):
            first = await anext(it)
            second = await anext(it)
        assert (first.payload, second.payload) == (b"a", b"b")
        mqtt.ack(first)  # "b" is never acknowledged: the process "crashes" before that
    async with MqttClient(s, subscriptions=[("chargebridge/jobs/#", 1)]) as mqtt:
        async with asyncio.timeout(10):
            again = await anext(aiter(mqtt.messages))
        assert again.payload == b"b"


def test_settings_reject_bad_urls() -> None:
    with pytest.raises(ValueError, match="scheme"):
        MqttSettings(url="http://host")
    with pytest.raises(ValueError, match="port"):
        MqttSettings(url="mqtt://host:99999")
    s = MqttSettings(url="mqtts://user:p%40ss@broker.example")
    assert (s.host, s.port, s.tls, s.username, s.password) == (
        "broker.example",
        8883,
        True,
        "user",
        "p@ss",
    )
    assert "p%40ss" not in s.redacted_url()


async def test_a_message_paho_refuses_fails_alone_and_the_rest_go_out(broker: Mosquitto) -> None:
    async with (
        broker.client() as sub,
        MqttClient(settings(broker, client_id="t-refused")) as mqtt,
    ):
        await sub.subscribe("chargebridge/t/#", qos=1)
        await mqtt.wait_connected()
        bad = mqtt.submit("chargebridge/t/#", b"a wildcard is no topic to publish on")
        good = mqtt.submit("chargebridge/t/ok", b"after")
        with pytest.raises(aiomqtt.MqttError, match="could not publish"):
            await asyncio.wait_for(bad, 10)
        await asyncio.wait_for(good, 10)
        [msg] = await next_messages(sub, 1)
        assert (str(msg.topic), msg.payload) == ("chargebridge/t/ok", b"after")
        assert mqtt.queued == 0


async def test_batches_group_what_arrives_within_the_interval(broker: Mosquitto) -> None:
    subs = [("chargebridge/t/batch", 1)]
    async with (
        MqttClient(settings(broker, client_id="t-batch-pub")) as pub,
        MqttClient(settings(broker, client_id="t-batch-sub"), subscriptions=subs) as sub,
    ):
        await asyncio.gather(pub.wait_connected(), sub.wait_connected())
        batches = sub.batches(limit=100, every=0.5)
        await pub.publish("chargebridge/t/batch", b"first")
        first = await asyncio.wait_for(anext(batches), 10)
        assert [m.payload for m in first] == [b"first"]
        # The consumer waits already; handed out just now, the next list is not made before
        # 0.5 s have passed, so the messages sent meanwhile come together.
        waiting = asyncio.ensure_future(anext(batches))
        await asyncio.gather(*(pub.submit("chargebridge/t/batch", b"%d" % i) for i in range(5)))
        second = await asyncio.wait_for(waiting, 10)
        assert [m.payload for m in second] == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_message_the_broker_refuses_fails_and_is_not_taken_as_published(
    broker: Mosquitto,
) -> None:
    """MQTT v5: Mosquitto answers a publish its ACL denies with PUBACK "not authorised"."""
    monitor = MqttSettings(url=broker.url_for("monitor"), client_id="t-acl-refused")
    async with MqttClient(monitor) as mqtt:
        await mqtt.wait_connected()
        with pytest.raises(aiomqtt.MqttError, match="refused"):
            await asyncio.wait_for(mqtt.publish("chargebridge/charging/request/start", b"{}"), 10)
        assert mqtt.queued == 0


async def test_a_message_from_an_earlier_connection_is_not_acked_on_the_new_one(
    broker: Mosquitto,
) -> None:
    """Message ids belong to a connection: acknowledging an old message on a new connection
    could acknowledge a different one. It is left to the broker, which redelivers it."""
    s = settings(broker, client_id="svc-gen", clean_start=False, session_expiry_s=3600)
    s = s.model_copy(update={"manual_ack": True})
    async with MqttClient(s, subscriptions=[("chargebridge/jobs/#", 1)]) as mqtt:
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        async with broker.client() as pub:
            await pub.publish("chargebridge/jobs/1", b"job", qos=1)
        batches = mqtt.batches(limit=10)
        [old] = await asyncio.wait_for(anext(batches), 10)
        broker.stop()
        async with asyncio.timeout(10):
            await mqtt.disconnected.wait()
        broker.start()
        await asyncio.wait_for(mqtt.wait_connected(), 20)
        sent = acks_sent(mqtt)
        mqtt.ack(old)  # from the first connection
        assert sent == []
        [again] = await asyncio.wait_for(anext(batches), 20)
        assert (again.payload, again.mid) == (b"job", old.mid)
        mqtt.ack(again)
        assert sent == [again.mid]


def acks_sent(mqtt: MqttClient) -> list[int]:
    """The message ids of the PUBACKs the current connection queues from now on."""
    assert mqtt._client is not None
    inner = _private.paho_client(mqtt._client)
    sent: list[int] = []
    real_queue = inner._packet_queue

    def queue(command: int, packet: bytes, mid: int, qos: int, info: Any = None) -> Any:
        if command & 0xF0 == 0x40:  # PUBACK
            sent.append(mid)
        return real_queue(command, packet, mid, qos, info)

    inner._packet_queue = queue  # type: ignore[method-assign]
    return sent
