"""The upgrade transfer's rules in memory (a fake link answers each packet by hand): restart at
packet 1 when the device asks for firmware, continue after the packet a device says it has,
3 resends then failure, a refused image ends the upgrade with its reason."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import protocol as p
from bridge.gateway.core import Gateway
from bridge.mqtt.payloads import CommandResponse
from tests.bridge.gateway.fakes import DEVICE_ID, FakeLink, FakePublisher, gateway

IMAGE = bytes(range(256)) * 4  # 1024 bytes: 6 packets of 200 + the check packet


def setup(tmp_path: Path, **overrides: object) -> tuple[FakeLink, FakePublisher, Gateway]:
    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "img.bin").write_bytes(IMAGE)
    gw, mqtt, _clock = gateway(tmp_path, firmware_dir=str(fw), **overrides)
    link = FakeLink(gw)
    reg = p.Registration(firmware=215, port_count=2, virtual_id=0, device_type=0x21, work_mode=0)
    link.send(0x20, p.encode_payload(reg))
    link.new_frames()  # the 0x20 reply
    return link, mqtt, gw


def start(gw: Gateway) -> asyncio.Task[CommandResponse]:
    body = json.dumps({"file": "img.bin", "version": "2.16"}).encode()
    return asyncio.create_task(gw.commands.request(DEVICE_ID, "upgrade_firmware", body))


async def packet(link: FakeLink) -> tuple[p.Frame, p.FirmwarePacket]:
    frame = await link.next_frame()
    body = p.decode_payload(frame.command, frame.data, p.Sender.SERVER)
    assert frame.command == 0xE0 and isinstance(body, p.FirmwarePacket)
    return frame, body


def answer(link: FakeLink, frame: p.Frame, result: int, number: int) -> None:
    link.send(0xE0, p.encode_payload(p.UpgradeReply(result, number)), message_id=frame.message_id)


async def test_0x05_restarts_the_transfer_at_packet_1(tmp_path: Path) -> None:
    link, mqtt, gw = setup(tmp_path)
    task = start(gw)
    for expected in (1, 2, 3):
        frame, body = await packet(link)
        assert (body.packet_number, body.total_packets) == (expected, 7)
        if expected == 3:
            link.send(0x05, p.encode_payload(p.UpgradeRequest(0x21, 215, 0)))
        answer(link, frame, 0, expected)
    numbers = []
    for _ in range(7):
        frame, body = await packet(link)
        numbers.append(body.packet_number)
        answer(link, frame, 0, body.packet_number)
    assert numbers == [1, 2, 3, 4, 5, 6, 7]
    resp = await task
    assert resp.ok and resp.result == "ok"
    assert [e["type"] for e in mqtt.events("device", "upgrade_request")] == ["upgrade_request"]
    check = p.decode_payload(0xE0, link.frames()[-1].data, p.Sender.SERVER)
    assert isinstance(check, p.FirmwarePacket)
    assert check.firmware[:8] == bytes.fromhex("A1A2A3A4A5A6A7A8")


async def test_resend_request_continues_after_the_packet_the_device_has(tmp_path: Path) -> None:
    link, _mqtt, gw = setup(tmp_path)
    task = start(gw)
    for n in (1, 2):
        frame, _ = await packet(link)
        answer(link, frame, 0, n)
    frame, body = await packet(link)
    assert body.packet_number == 3
    answer(link, frame, 1, 2)  # "error, I have packet 2"
    frame, body = await packet(link)
    assert body.packet_number == 3
    answer(link, frame, 3, 2)  # wrong device type: refused
    resp = await task
    assert (resp.ok, resp.result) == (False, "failed")
    assert resp.message == "device refused the image: wrong_device_type"


async def test_a_silent_device_gets_three_resends_then_the_upgrade_fails(tmp_path: Path) -> None:
    link, mqtt, gw = setup(tmp_path, upgrade_reply_timeout_s=0.05)
    resp = await start(gw)
    assert (resp.ok, resp.result) == (False, "failed")
    assert resp.message == "no answer to packet 1 after 3 resends"
    sent = [f for f in link.new_frames() if f.command == 0xE0]
    assert len(sent) == 4 and len({f.message_id for f in sent}) == 1
    [failed] = [e for e in mqtt.events("device", "upgrade_progress") if e["state"] == "failed"]
    assert (failed["packet"], failed["total"]) == (0, 7)
