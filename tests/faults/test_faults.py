"""Fault injection on the real system: gateway and service processes, Mosquitto, chargers.

Every scenario ends with `assert_exactly_once`: the set of 0x06 reports and 0x03 settlements
the chargers sent equals the set of events that reached MQTT, and the charging service counted
each exactly once (sessions completed with the settled energy, statistics equal to the ledger).
Redelivered copies on MQTT are allowed (QoS 1 is at-least-once); counting one twice is not.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import protocol as p
from tests.broker import Mosquitto
from tests.faults.system import B, Charger, Ledger, System, assert_exactly_once, running_system


async def connected_charger(system: System, ledger: Ledger) -> Charger:
    charger = Charger(ledger)
    await charger.connect(system.tcp_port)
    await charger.online()
    return charger


async def outage_scenario(broker: Mosquitto, tmp_path: Path, *, kill: bool) -> None:
    """A session that starts before the outage, charges and settles during it, and one after."""
    ledger = Ledger()
    async with running_system(broker, tmp_path) as system:
        charger = await connected_charger(system, ledger)
        first = await system.start_session(charger, 1, "before")
        await charger.report(first, 1, 10, 5)
        await system.stats(power_update_events=1)
        if kill:
            # Mosquitto saves sessions and queues every autosave_interval; a SIGKILL loses
            # what came since (docs/reliability.md). Kill it once the sessions are saved.
            await asyncio.to_thread(broker.wait_saved, time.time())
            broker.kill()
        else:
            broker.stop()
        await charger.report(first, 1, 20, 10)
        await charger.report(first, 1, 30, 15)
        settling = asyncio.create_task(charger.settle(first, 1, 35))
        # the gateway may not acknowledge the settlement before the broker has it
        other = Charger(ledger, physical_id=0x04000001)
        await other.connect(system.tcp_port)
        await other.online()  # the gateway keeps serving devices meanwhile
        assert not settling.done()
        broker.start()
        assert await settling >= 1
        second = await system.start_session(charger, 2, "after")
        await charger.report(second, 2, 7, 5)
        await charger.settle(second, 2, 9)
        stats = await system.stats(sessions_completed=2, power_update_events=4)
        assert_exactly_once(system, ledger, stats)
        await charger.close()
        await other.close()
    # the retained state is on the broker for whoever comes later
    async with broker.client("monitor") as late:
        await late.subscribe(f"{B}/sessions/{first}", qos=1)
        async with asyncio.timeout(10):
            message = await anext(late.messages)
        assert message.retain and b'"completed"' in bytes(message.payload)  # type: ignore[arg-type]


async def test_broker_sigterm_and_restart(broker: Mosquitto, tmp_path: Path) -> None:
    await outage_scenario(broker, tmp_path, kill=False)


async def test_broker_sigkill_and_restart(broker: Mosquitto, tmp_path: Path) -> None:
    await outage_scenario(broker, tmp_path, kill=True)


async def test_service_sigkill_mid_session(broker: Mosquitto, tmp_path: Path) -> None:
    ledger = Ledger()
    async with running_system(broker, tmp_path) as system:
        charger = await connected_charger(system, ledger)
        order = await system.start_session(charger, 1, "r1")
        await charger.report(order, 1, 10, 5)
        await system.stats(power_update_events=1)
        await system.service.kill()
        # events while the service is dead wait in its persistent session on the broker
        await charger.report(order, 1, 20, 10)
        await charger.settle(order, 1, 25)
        other = "00" * 15 + "0A"  # an offline start the service has never heard of
        await charger.report(other, 2, 3, 1)
        await charger.settle(other, 2, 4)
        system.service.start()
        stats = await system.stats(sessions_completed=2, power_update_events=3)
        assert stats["sessions_created"] == 2
        assert_exactly_once(system, ledger, stats)


async def test_network_blackhole_longer_than_two_keepalives(
    broker: Mosquitto, tmp_path: Path
) -> None:
    ledger = Ledger()
    async with running_system(broker, tmp_path) as system:
        charger = await connected_charger(system, ledger)
        order = await system.start_session(charger, 1, "r1")
        await charger.report(order, 1, 10, 5)
        await system.stats(power_update_events=1)
        broker.pause()  # packets are accepted by the kernel and never answered
        try:
            await charger.report(order, 1, 20, 10)
            settling = asyncio.create_task(charger.settle(order, 1, 22))
            # our own watcher (same 2 s keepalive) gives up on the silent broker: so do they
            watcher = system.mqtt.client
            async with asyncio.timeout(15):
                await watcher.disconnected.wait()  # type: ignore[union-attr]
            assert not settling.done()
        finally:
            broker.resume()
        assert await settling > 1  # resent meanwhile, acknowledged once the broker had it
        stats = await system.stats(sessions_completed=1, power_update_events=2)
        assert_exactly_once(system, ledger, stats)


async def test_device_disconnects_mid_frame_and_reconnects(
    broker: Mosquitto, tmp_path: Path
) -> None:
    ledger = Ledger()
    async with running_system(broker, tmp_path) as system:
        charger = await connected_charger(system, ledger)
        order = await system.start_session(charger, 1, "r1")
        # half a 0x06 and half a 0x03, then the connection drops
        half_report = p.encode_frame(charger.physical_id, 90, 0x06, bytes(40))[:25]
        await charger.send_raw(half_report)
        await charger.close()
        charger = Charger(ledger)
        await charger.connect(system.tcp_port)
        half_settlement = p.encode_frame(
            charger.physical_id, 91, 0x03, charger.settlement(order, 1, 50)
        )
        await charger.send_raw(half_settlement[:30])
        await charger.close()
        # back again: the device repeats both from the start
        charger = Charger(ledger)
        await charger.connect(system.tcp_port)
        await charger.online()
        await charger.report(order, 1, 40, 20)
        assert await charger.settle(order, 1, 50) == 1
        stats = await system.stats(sessions_completed=1, power_update_events=1)
        assert_exactly_once(system, ledger, stats)
        device = await system.mqtt.wait(f"{B}/devices/{charger.id}", lambda m: m["online"])
        assert device["device_id"] == charger.id


async def test_device_resending_its_settlement(broker: Mosquitto, tmp_path: Path) -> None:
    """The device misses the acknowledgements: same message id, then new ones (firmwares
    differ); every copy is answered, the session completes once and is counted once."""
    ledger = Ledger()
    async with running_system(broker, tmp_path) as system:
        charger = await connected_charger(system, ledger)
        order = await system.start_session(charger, 1, "r1")
        await charger.report(order, 1, 60, 30)
        data = charger.settlement(order, 1, 64)
        ledger.settled[order] = 64
        mid = await charger.send(0x03, data)
        for resend in range(6):
            reply = await charger.recv()
            assert (reply.command, reply.message_id) == (0x03, mid)
            if resend == 3:
                await system.stats(sessions_completed=1)  # later copies come after completion
            mid = await charger.send(0x03, data, message_id=mid if resend < 3 else None)
        await charger.recv()
        stats = await system.stats(sessions_completed=1, power_update_events=1)
        assert_exactly_once(system, ledger, stats)
        settled = [e for e in system.events("order") if e["type"] == "settled"]
        assert len(settled) >= 1
        session = system.sessions()[order]
        assert [e["type"] for e in session["events"]].count("settled") == 1


async def test_two_connections_claiming_the_same_physical_id(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The newer connection wins: the older one is closed, commands and events follow the
    newer, and the device does not flap offline when the old socket goes."""
    ledger = Ledger()
    async with running_system(broker, tmp_path) as system:
        first = await connected_charger(system, ledger)
        order = await system.start_session(first, 1, "r1")
        await first.report(order, 1, 10, 5)
        second = await connected_charger(system, ledger)
        await first.closed_by_peer()
        await second.report(order, 1, 20, 10)
        other = await system.start_session(second, 2, "r2")  # routed to the newer connection
        await second.report(other, 2, 5, 5)
        await second.settle(order, 1, 21)
        await second.settle(other, 2, 6)
        stats = await system.stats(sessions_completed=2, power_update_events=3)
        assert_exactly_once(system, ledger, stats)
        states = [
            m.json()["online"]
            for m in system.mqtt.messages
            if m.topic == f"{B}/devices/{second.id}" and m.payload
        ]
        assert states and all(states), f"device went offline while connected: {states}"
