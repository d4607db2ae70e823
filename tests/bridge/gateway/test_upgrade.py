"""Firmware upgrades: simulated chargers (which verify the image) upgraded end to end through the
real gateway and Mosquitto, a disconnect in the middle included; file names confined to
`firmware_dir`; `max_concurrent_upgrades`."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

import protocol as p
from bridge.gateway.registry import Device
from bridge.gateway.upgrade import UpgradeError, choose_command, read_image
from bridge.mqtt.topics import Topics
from bridge.simulator.fleet import Fleet, FleetConfig, TcpTarget
from protocol import Frame, Sender
from protocol.ids import device_id
from tests.bridge.helpers import gateway_settings, mqtt_collector, running_gateway, tcp_port
from tests.broker import Mosquitto

T = Topics("chargebridge")
IMAGE = bytes((i * 7 + 3) % 251 for i in range(3000))  # 15 slices of 200 (+ check), 12 of 256


async def request(broker: Mosquitto, dev_id: str, body: dict[str, Any]) -> None:
    async with broker.client() as client:
        await client.publish(T.device_request(dev_id, "upgrade_firmware"), json.dumps(body), qos=1)


# ---------------------------------------------------------------------- units


def test_file_must_be_a_plain_name_inside_firmware_dir(tmp_path: Path) -> None:
    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "ok.bin").write_bytes(b"\x01" * 10)
    (tmp_path / "secret.bin").write_bytes(b"\x02" * 10)
    os.symlink(tmp_path / "secret.bin", fw / "link.bin")
    assert read_image(str(fw), "ok.bin") == b"\x01" * 10
    for name in ("../secret.bin", "link.bin", "..", "sub/ok.bin", "missing.bin"):
        with pytest.raises(UpgradeError, match=r"^file: "):
            read_image(str(fw), name)
    (fw / "empty.bin").write_bytes(b"")
    with pytest.raises(UpgradeError, match="bytes"):
        read_image(str(fw), "empty.bin")
    with pytest.raises(UpgradeError, match="off"):
        read_image("", "ok.bin")


def test_the_command_follows_the_device_type() -> None:
    dev = Device(0x04000001, "04000001")
    with pytest.raises(UpgradeError, match="device type unknown"):
        choose_command(dev, "device")
    dev.device_type = 0x21
    assert choose_command(dev, "device") == 0xE0
    dev.device_type = 0x06
    assert choose_command(dev, "extension") == 0xF8
    assert choose_command(dev, "host") == 0xFA
    dev.host_type = 0x01
    assert choose_command(dev, "host") == 0xF9


# ---------------------------------------------------------------------- end to end


@pytest.mark.parametrize("kind", ["2", "legacy"])
async def test_upgrade_survives_a_disconnect_and_installs_the_image(
    broker: Mosquitto, tmp_path: Path, kind: str
) -> None:
    fw = tmp_path / "firmware"
    fw.mkdir()
    (fw / "pile-2.16.bin").write_bytes(IMAGE)
    settings = gateway_settings(
        broker, tmp_path, command_spacing_s=0.0, firmware_dir=str(fw), upgrade_reply_timeout_s=2.0
    )
    async with (
        mqtt_collector(broker, f"{T.base}/devices/#") as mqtt,
        running_gateway(settings) as app,
    ):
        assert app.gateway is not None
        gateway = app.gateway
        dropped: list[int] = []

        def drop_at_packet_5(sender: Sender, dev: Device, frame: Frame) -> None:
            """The link breaks right after the gateway wrote packet 5 (the first time)."""
            if sender is Sender.SERVER and frame.command in (0xE0, 0xF8) and not dropped:
                packet = p.decode_payload(frame.command, frame.data, Sender.SERVER)
                if isinstance(packet, p.FirmwarePacket) and packet.packet_number == 5:
                    dropped.append(5)
                    assert dev.conn is not None
                    dev.conn.abort()

        gateway.taps.append(drop_at_packet_5)
        target = TcpTarget("127.0.0.1", tcp_port(app))
        config = FleetConfig(devices=1, kind=kind, speed=50, reconnect_min_s=0.2)
        async with Fleet(config, target) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.registered == 1)
            sim = fleet.devices[0]
            before = sim.firmware
            dev_id = device_id(sim.physical_id)
            await mqtt.wait(T.device(dev_id), lambda m: m["device_type_code"] is not None)
            body = {"file": "pile-2.16.bin", "version": "2.16", "request_id": "u"}
            await request(broker, dev_id, body)
            resp = await mqtt.wait(T.device_response(dev_id, "upgrade_firmware"), timeout=30)
            assert resp["ok"], resp
            command, total = (0xF8, 12) if kind == "legacy" else (0xE0, 16)
            assert (resp["upgrade_command"], resp["packets"]) == (command, total)
            assert dropped == [5]
            progress = [
                e for e in mqtt.all(T.event(dev_id, "device")) if e["type"] == "upgrade_progress"
            ]
            states = [e["state"] for e in progress]
            assert "waiting" in states and states[-1] == "done"
            waiting = progress[states.index("waiting")]
            assert waiting["packet"] == 4 and waiting["total"] == total
            assert [e["percent"] for e in progress if e["state"] == "running"] == sorted(
                e["percent"] for e in progress if e["state"] == "running"
            )
            assert progress[-1]["percent"] == 100 and progress[-1]["packet"] == total
            # The simulated charger verified and installed the image, then rebooted into it.
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.upgrades_completed == 1)
            assert sim.firmware == (216 if kind != "legacy" else before + 1)
            if kind != "legacy":
                await mqtt.wait(T.device(dev_id), lambda m: m["firmware"] == "2.16", timeout=15)


async def test_bad_requests_and_max_concurrent_upgrades(broker: Mosquitto, tmp_path: Path) -> None:
    fw = tmp_path / "firmware"
    fw.mkdir()
    (fw / "big.bin").write_bytes(IMAGE * 4)
    settings = gateway_settings(
        broker,
        tmp_path,
        command_spacing_s=0.3,
        firmware_dir=str(fw),
        max_concurrent_upgrades=1,
    )
    async with (
        mqtt_collector(broker, f"{T.base}/devices/#") as mqtt,
        running_gateway(settings) as app,
    ):
        target = TcpTarget("127.0.0.1", tcp_port(app))
        async with Fleet(FleetConfig(devices=2, speed=50), target) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_until(lambda s: s.registered == 2)
            ids = [device_id(d.physical_id) for d in fleet.devices]
            for dev_id in ids:
                await mqtt.wait(T.device(dev_id), lambda m: m["device_type_code"] is not None)
            for name in ("../etc/passwd", "/etc/passwd", "a/b.bin"):
                await request(broker, ids[0], {"file": name})
                bad = await mqtt.wait(T.device_response(ids[0], "upgrade_firmware"))
                assert (bad["ok"], bad["result"]) == (False, "invalid"), bad
                assert bad["message"].startswith("file: ")
            await request(broker, ids[0], {"file": "missing.bin"})
            missing = await mqtt.wait(T.device_response(ids[0], "upgrade_firmware"))
            assert missing["message"] == "file: 'missing.bin' not found in firmware_dir"
            # One transfer runs (0.3 s between packets); a second one is answered busy.
            await request(broker, ids[0], {"file": "big.bin", "request_id": "first"})
            await mqtt.wait(
                T.event(ids[0], "device"),
                lambda e: e["type"] == "upgrade_progress" and e["packet"] >= 1,
            )
            await request(broker, ids[1], {"file": "big.bin", "request_id": "second"})
            busy = await mqtt.wait(T.device_response(ids[1], "upgrade_firmware"))
            assert (busy["ok"], busy["result"], busy["request_id"]) == (False, "busy", "second")
            assert "max_concurrent_upgrades" in busy["message"]
            await request(broker, ids[0], {"file": "big.bin", "request_id": "again"})
            again = await mqtt.wait(T.device_response(ids[0], "upgrade_firmware"))
            assert (again["result"], again["request_id"]) == ("busy", "again")
