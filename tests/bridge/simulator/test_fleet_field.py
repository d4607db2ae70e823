"""Legacy chargers and firmware upgrades over real TCP sockets, against the fake server."""

from __future__ import annotations

from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from protocol import (
    ChargeControl,
    LegacyHeartbeat,
    OrderConfirmation,
    Registration,
    Sender,
    Settlement,
    UpgradeReply,
    decode_payload,
)
from protocol.commands.firmware import CheckPacket, firmware_packets
from tests.bridge.simulator.fake_server import FakeServer
from tests.bridge.simulator.test_fleet import ORDER, until


async def test_legacy_fleet_heartbeats_with_power_confirms_and_settles_without_0x06() -> None:
    async with FakeServer() as server:
        target = TcpTarget.parse(server.target)
        async with Fleet(FleetConfig(devices=1, kind="legacy", speed=20_000), target) as fleet:
            await until(fleet, lambda s: s.registered == 1)
            pid = fleet.devices[0].physical_id
            fleet.plug(0, 0)
            server.send(pid, 9, 0x82, ChargeControl(0, 500, 0, 1, 0, ORDER))
            await until(fleet, lambda s: s.settlements_acked == 1, within=30)
        assert not server.of(0x06, pid) and not server.of(0x21, pid)
        [confirmation] = [decode_payload(0x04, f.data, Sender.DEVICE) for f in server.of(0x04, pid)]
        assert confirmation == OrderConfirmation(0, 1, bytes(4), 0, ORDER)
        beats = [decode_payload(0x01, f.data, Sender.DEVICE) for f in server.of(0x01, pid)]
        assert any(isinstance(b, LegacyHeartbeat) and b.powers[0] > 0 for b in beats)
        record = decode_payload(0x03, server.of(0x03, pid)[0].data, Sender.DEVICE)
        assert isinstance(record, Settlement) and record.order_no == ORDER


async def test_upgrade_survives_a_dropped_connection_and_reboots_into_the_new_firmware() -> None:
    async with FakeServer() as server:
        target = TcpTarget.parse(server.target)
        async with Fleet(FleetConfig(devices=1, speed=10), target) as fleet:
            await until(fleet, lambda s: s.registered == 1)
            dev = fleet.devices[0]
            image = bytes(range(256)) * 4
            packets = firmware_packets(0xE0, image, CheckPacket.for_image(image, 0x21, 300))

            def acked(number: int) -> bool:
                replies = [decode_payload(0xE0, f.data, Sender.DEVICE) for f in server.of(0xE0)]
                return UpgradeReply(0, number) in replies

            for packet in packets[:3]:
                server.send(dev.physical_id, packet.packet_number, 0xE0, packet)
                await server.wait_for(lambda n=packet.packet_number: acked(n))
            server.connections[-1].writer.close()  # the link drops mid-transfer
            await until(fleet, lambda s: s.disconnects == 1 and s.registered == 1, within=20)
            for packet in packets[3:]:
                server.send(dev.physical_id, packet.packet_number, 0xE0, packet)
                await server.wait_for(lambda n=packet.packet_number: acked(n))
            await until(fleet, lambda s: s.upgrades_completed == 1 and s.disconnects == 2)
            await until(fleet, lambda s: s.registered == 1, within=20)
        regs = [decode_payload(0x20, f.data, Sender.DEVICE) for f in server.of(0x20)]
        assert isinstance(regs[-1], Registration) and regs[-1].firmware == 300
        assert {r.firmware for r in regs if isinstance(r, Registration)} == {215, 300}
