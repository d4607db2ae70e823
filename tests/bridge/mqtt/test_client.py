"""MqttClient against a real Mosquitto: acknowledgements, outages, ordering, on_connect."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import aiomqtt
import pytest

from bridge.mqtt import _private
from bridge.mqtt.client import MqttClient, MqttClientFailed, MqttSettings, Received
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


async def test_messages_beyond_a_full_incoming_queue_wait_and_keep_their_order(
    broker: Mosquitto,
) -> None:
    """A message read while the consumer's queue is full stays in aiomqtt's queue and is moved
    later, before any newer one: nothing lost, nothing overtaken."""
    subs = [("chargebridge/t/full", 1)]
    async with (
        MqttClient(settings(broker, client_id="t-full-pub")) as pub,
        MqttClient(
            settings(broker, client_id="t-full-sub"), subscriptions=subs, max_incoming=3
        ) as sub,
    ):
        await asyncio.gather(pub.wait_connected(), sub.wait_connected())
        received = _private.received(sub._client)  # type: ignore[arg-type]
        overflowed = asyncio.Event()
        put = received.put_nowait

        def put_and_see(message: aiomqtt.Message) -> None:
            put(message)
            if not received.empty():  # the consumer's queue is full: this one waits here
                overflowed.set()

        received.put_nowait = put_and_see  # type: ignore[method-assign]
        sent = [b"%d" % i for i in range(40)]
        await asyncio.gather(*(pub.submit("chargebridge/t/full", p) for p in sent))
        await asyncio.wait_for(overflowed.wait(), 10)
        # Newer messages arrive while the older ones are being moved: they queue behind.
        got: list[bytes] = []
        async with asyncio.timeout(10):
            async for message in sub.messages:
                got.append(message.payload)  # type: ignore[arg-type]
                if len(got) % 7 == 0 and len(got) <= len(sent) - 3:
                    sent.append(b"late%d" % len(got))
                    pub.submit("chargebridge/t/full", sent[-1])
                if len(got) == len(sent):
                    break
        assert got == sent


async def test_a_waiting_receiver_learns_that_the_client_died(broker: Mosquitto) -> None:
    async def broken() -> None:
        raise RuntimeError("on_connect failed")

    async with MqttClient(settings(broker, client_id="t-dies"), on_connect=broken) as mqtt:
        with pytest.raises(MqttClientFailed, match="on_connect failed"):
            await asyncio.wait_for(anext(mqtt.messages), 10)


async def test_a_message_read_while_an_older_one_is_moved_does_not_overtake_it() -> None:
    """The connection task holds a message aiomqtt queued (the consumer's queue was full);
    the consumer makes room; a message read before that task resumes must queue behind."""
    mqtt = MqttClient(MqttSettings(url="mqtt://127.0.0.1:1"), max_incoming=1)
    client = aiomqtt.Client("127.0.0.1", 1, queue_type=Received)  # never connected
    receiving = asyncio.create_task(mqtt._receive(client))
    await asyncio.sleep(0)
    queue = _private.received(client)

    def message(payload: bytes) -> aiomqtt.Message:
        return aiomqtt.Message("chargebridge/t/o", payload, 1, False, 1, None)

    queue.put_nowait(message(b"a"))  # straight into the consumer's queue, now full
    queue.put_nowait(message(b"b"))  # refused: kept by aiomqtt's queue, moved by the task
    for _ in range(5):
        await asyncio.sleep(0)
    assert queue.empty()  # the task holds b, waiting for room
    assert (await mqtt._next()).payload == b"a"  # room: the task is woken, not run yet
    queue.put_nowait(message(b"c"))
    assert [(await mqtt._next()).payload for _ in range(2)] == [b"b", b"c"]
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving


def loop_factories() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    factories: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:  # the `fast` extra: what the roles run on when it is installed
        return factories
    return [*factories, uvloop.new_event_loop]


@pytest.mark.parametrize("loop_factory", loop_factories(), ids=lambda f: f.__module__)
def test_reading_goes_on_after_each_batch_window(
    broker: Mosquitto, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """Lists keep coming window after window, on each event loop the roles run on."""

    async def scenario() -> list[list[bytes]]:
        subs = [("chargebridge/t/windows", 1)]
        async with (
            MqttClient(settings(broker, client_id="t-windows-pub")) as pub,
            MqttClient(settings(broker, client_id="t-windows-sub"), subscriptions=subs) as sub,
        ):
            await asyncio.gather(pub.wait_connected(), sub.wait_connected())
            batches = sub.batches(limit=100, every=0.05)
            got: list[list[bytes]] = []
            for n in range(4):
                waiting = asyncio.ensure_future(anext(batches))
                await pub.publish("chargebridge/t/windows", b"%d" % n)
                got.append([m.payload for m in await asyncio.wait_for(waiting, 10)])  # type: ignore[misc]
            return got

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(scenario()) == [[b"0"], [b"1"], [b"2"], [b"3"]]


async def test_posted_messages_are_delivered_in_order_and_a_refused_one_is_logged(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """`post`: no future to wait on; the broker still gets every message in order, and one
    it refuses (ACL, MQTT v5) is logged and leaves the outbox, not kept in flight."""
    async with (
        broker.client() as sub,
        MqttClient(settings(broker, client_id="t-post")) as mqtt,
    ):
        await sub.subscribe("chargebridge/t/#", qos=1)
        await mqtt.wait_connected()
        for i in range(5):
            mqtt.post("chargebridge/t/post", b"%d" % i)
        mqtt.post("chargebridge/t/state", b"retained", retain=True)
        messages = await next_messages(sub, 6)
        assert [m.payload for m in messages] == [b"0", b"1", b"2", b"3", b"4", b"retained"]
        await mqtt.close()
        assert mqtt.queued == 0
    monitor = MqttSettings(url=broker.url_for("monitor"), client_id="t-post-refused")
    async with MqttClient(monitor) as mqtt:
        await mqtt.wait_connected()
        mqtt.post("chargebridge/charging/request/start", b"{}")
        await mqtt.close(flush_timeout=10)  # returns once the outbox is empty
        assert mqtt.queued == 0
    assert "could not publish a message on chargebridge/charging/request/start" in caplog.text


async def test_send_queued_writes_what_was_posted_before_the_loop_turn_ends(
    broker: Mosquitto,
) -> None:
    """The gateway calls `send_queued` after each device read: the messages are handed to
    paho and written to the socket at once, not in a round at the next loop turn."""
    async with MqttClient(settings(broker, client_id="t-send-queued")) as mqtt:
        await mqtt.wait_connected()
        inner = _private.paho_client(mqtt._client)  # type: ignore[arg-type]
        await mqtt.publish("chargebridge/t/first", b"settled")  # the sender is running
        mqtt.post("chargebridge/t/a", b"1")
        mqtt.post("chargebridge/t/b", b"2", retain=True)
        assert mqtt.outbox.has_pending and not inner._out_packet
        mqtt.send_queued()  # no await in between: all within this loop turn
        assert not mqtt.outbox.has_pending  # both taken and in flight
        assert len(_private.raw_acks(inner).mids) == 2  # ours, not in paho's bookkeeping
        assert not inner._out_messages
        assert not inner._out_packet  # and written to the socket
        mqtt.send_queued()  # nothing queued: harmless
        await mqtt.close(flush_timeout=10)
        assert mqtt.queued == 0


async def test_send_queued_while_offline_publishes_on_the_next_connection(
    broker: Mosquitto,
) -> None:
    """Offline there is no sender: `send_queued` does nothing and the message waits for the
    next connection, where the broker acknowledges it."""
    broker.stop()
    try:
        async with MqttClient(settings(broker, client_id="t-send-offline")) as mqtt:
            mqtt.post("chargebridge/t/offline", b"kept", retain=True)
            mqtt.send_queued()
            assert mqtt.outbox.has_pending and mqtt.queued == 1
            broker.start()
            await mqtt.wait_connected()
            await mqtt.close(flush_timeout=10)
            assert mqtt.queued == 0
    finally:
        if broker.proc is None:
            broker.start()
    async with broker.client() as sub:  # retained: the broker has it
        await sub.subscribe("chargebridge/t/offline", qos=1)
        [msg] = await next_messages(sub, 1)
        assert msg.payload == b"kept"


async def test_a_publish_interval_sends_what_comes_within_it_together_at_its_end(
    broker: Mosquitto,
) -> None:
    """`publish_interval_s` (the gateway's): the first message after a quiet spell goes at
    once; what is queued within the interval after that round waits for the interval's end,
    `send_queued` does not run it early, and then it goes out in one round."""
    interval = 1.0  # long: the checks within one loop turn cannot reach its end
    taken: list[tuple[float, bytes, int]] = []
    async with MqttClient(
        settings(broker, client_id="t-interval"), publish_interval_s=interval
    ) as mqtt:
        await mqtt.wait_connected()
        loop = asyncio.get_running_loop()
        inner = _private.paho_client(mqtt._client)  # type: ignore[arg-type]
        take = mqtt.outbox.take

        def recorded() -> Any:
            message = take()
            if message is not None:  # with the packets of this round not yet written
                taken.append((loop.time(), message.payload, len(inner._out_packet)))
            return message

        mqtt.outbox.take = recorded  # type: ignore[method-assign]
        first = mqtt.submit("chargebridge/t/interval", b"a")
        mqtt.send_queued()  # no round yet on this connection: at once
        assert not mqtt.outbox.has_pending
        rest = [mqtt.submit("chargebridge/t/interval", p) for p in (b"b", b"c")]
        mqtt.send_queued()  # within the interval: put off
        assert mqtt.outbox.has_pending
        async with asyncio.timeout(30):
            await asyncio.gather(first, *rest)
    (at_a, a, _), (at_b, b, unwritten_b), (_, c, unwritten_c) = taken
    assert (a, b, c) == (b"a", b"b", b"c")
    assert (unwritten_b, unwritten_c) == (0, 1)  # one round: b not yet written when c is taken
    assert at_b - at_a >= interval * 0.99  # not before the interval's end (loop clock)


def test_a_publish_interval_out_of_range_is_refused(broker: Mosquitto) -> None:
    for bad in (-0.001, 1.5):
        with pytest.raises(ValueError, match="publish_interval_s"):
            MqttClient(settings(broker), publish_interval_s=bad)
