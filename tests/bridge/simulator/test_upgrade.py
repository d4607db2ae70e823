"""The device side of firmware upgrades: 0xE0 with the check packet (current devices), 0xF8
(legacy devices); answers per packet, verification, resume after a disconnect."""

from __future__ import annotations

import pytest

from bridge.simulator.device import SimulatedDevice
from protocol import (
    FirmwarePacket,
    Frame,
    LegacyUpgradeRequest,
    Registration,
    UpgradeReply,
    encode_payload,
)
from protocol.commands.firmware import CheckPacket, firmware_packets
from tests.bridge.simulator.test_device import SERVER_ID, frames, online, payload
from tests.bridge.simulator.test_legacy import legacy_online

IMAGE = bytes((i * 7) % 251 for i in range(1000))  # 5 slices of 200, 4 of 256


def send(dev: SimulatedDevice, cmd: int, packet: FirmwarePacket, now: float) -> UpgradeReply | None:
    dev.receive(Frame(dev.physical_id, SERVER_ID, cmd, encode_payload(packet)), now)
    replies = [f for f in frames(dev) if f.command == cmd]
    if not replies:
        return None
    [reply] = replies
    body = payload(reply)
    assert isinstance(body, UpgradeReply) and reply.message_id == SERVER_ID
    return body


def e0_packets(dev: SimulatedDevice, image: bytes = IMAGE, **check: int) -> list[FirmwarePacket]:
    fields = {"device_type": dev.device_type, "firmware": 216, **check}
    return firmware_packets(0xE0, image, CheckPacket.for_image(image, **fields))


def test_e0_transfer_installs_the_image_and_reboots_into_it() -> None:
    dev = online()
    assert (dev.device_type, dev.firmware) == (0x21, 215)
    packets = e0_packets(dev)
    assert len(packets) == 6
    for i, packet in enumerate(packets):
        assert send(dev, 0xE0, packet, 10.0 + i) == UpgradeReply(0, packet.packet_number)
    assert dev.firmware == 216 and dev.stats.upgrades_completed == 1
    assert dev.reboot_at is not None
    dev.disconnect(20.0)
    dev.connect(30.0)
    reg = payload(next(f for f in frames(dev) if f.command == 0x20))
    assert isinstance(reg, Registration) and reg.firmware == 216


@pytest.mark.parametrize(
    ("change", "result"),
    [({"device_type": 0x20}, 3), ({"firmware_sum": 1}, 2), ({"no_check": 1}, 4)],
)
def test_e0_verification_failures_are_reported(change: dict[str, int], result: int) -> None:
    dev = online()
    if "no_check" in change:
        packets = firmware_packets(0xE0, IMAGE + bytes(200))  # last packet: no marker
    else:
        check = CheckPacket.for_image(IMAGE, dev.device_type, 216)
        if "firmware_sum" in change:
            check = CheckPacket(check.marker, check.firmware_sum + 1, 0x21, 216, bytes(185))
        else:
            check = CheckPacket.for_image(IMAGE, change["device_type"], 216)
        packets = firmware_packets(0xE0, IMAGE, check)
    replies = [send(dev, 0xE0, p, 10.0) for p in packets]
    assert all(r is not None and r.result == 0 for r in replies[:-1])
    assert replies[-1] == UpgradeReply(result, len(packets) - 1)
    assert dev.firmware == 215 and dev.reboot_at is None
    assert dev.stats.upgrades_failed == 1 and dev.upgrade is None


def test_out_of_order_and_bad_size_packets_ask_for_the_next_one() -> None:
    dev = online()
    packets = e0_packets(dev)
    send(dev, 0xE0, packets[0], 1.0)
    assert send(dev, 0xE0, packets[2], 2.0) == UpgradeReply(1, 1)  # skipped packet 2
    short = FirmwarePacket(packets[1].total_packets, 2, packets[1].firmware[:100])
    assert send(dev, 0xE0, short, 3.0) == UpgradeReply(1, 1)  # only the last slice is short
    assert send(dev, 0xE0, packets[1], 4.0) == UpgradeReply(0, 2)
    assert send(dev, 0xE0, packets[1], 5.0) == UpgradeReply(0, 2)  # a resend, acked again
    for packet in packets[2:]:
        assert send(dev, 0xE0, packet, 6.0) == UpgradeReply(0, packet.packet_number)
    assert dev.firmware == 216


def test_packets_without_a_start_are_refused() -> None:
    dev = online()
    assert send(dev, 0xE0, e0_packets(dev)[3], 1.0) == UpgradeReply(1, 0)


def test_disconnect_mid_transfer_then_the_server_resumes() -> None:
    dev = online()
    packets = e0_packets(dev)
    for packet in packets[:3]:
        send(dev, 0xE0, packet, 1.0)
    dev.disconnect(2.0)
    dev.connect(40.0)
    frames(dev)
    assert send(dev, 0xE0, packets[2], 41.0) == UpgradeReply(0, 3)  # the lost answer again
    for packet in packets[3:]:
        assert send(dev, 0xE0, packet, 42.0) == UpgradeReply(0, packet.packet_number)
    assert dev.firmware == 216 and dev.stats.upgrades_completed == 1


def test_the_server_may_restart_at_packet_1() -> None:
    dev = online()
    packets = e0_packets(dev)
    for packet in packets[:4]:
        send(dev, 0xE0, packet, 1.0)
    for packet in packets:
        assert send(dev, 0xE0, packet, 2.0) == UpgradeReply(0, packet.packet_number)
    assert dev.firmware == 216


def test_legacy_device_upgrades_with_f8_and_ignores_e0() -> None:
    dev = legacy_online()
    assert send(dev, 0xE0, e0_packets(dev)[0], 1.0) is None
    packets = firmware_packets(0xF8, IMAGE)
    assert [len(p.firmware) for p in packets] == [256, 256, 256, 232]
    for packet in packets:
        assert send(dev, 0xF8, packet, 2.0) == UpgradeReply(0, packet.packet_number)
    assert dev.firmware == 227 and dev.reboot_at is not None


def test_current_device_ignores_f8() -> None:
    dev = online()
    assert send(dev, 0xF8, firmware_packets(0xF8, IMAGE)[0], 1.0) is None


def test_legacy_device_rebooted_mid_transfer_asks_again_with_0x05() -> None:
    dev = legacy_online()
    packets = firmware_packets(0xF8, IMAGE)
    send(dev, 0xF8, packets[0], 1.0)
    send(dev, 0xF8, packets[1], 2.0)
    dev.reboot_at = 3.0  # power cut: the transfer was in RAM
    dev.disconnect(3.0)
    dev.connect(10.0)
    requests = [f for f in frames(dev) if f.command == 0x05]
    assert [payload(f) for f in requests] == [LegacyUpgradeRequest()]
    assert send(dev, 0xF8, packets[2], 11.0) == UpgradeReply(1, 0)
    for packet in packets:
        assert send(dev, 0xF8, packet, 12.0) == UpgradeReply(0, packet.packet_number)
    dev.disconnect(13.0)
    dev.connect(20.0)
    assert not [f for f in frames(dev) if f.command == 0x05]
