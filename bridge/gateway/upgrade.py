"""Firmware upgrades (`upgrade_firmware`): an image from `firmware_dir`, served packet by packet.

The command follows the device (reference A.2, A.3): chargers and extensions whose 0x20 device
type is an old F8-family type get 0xF8 packets of 256 bytes; every other charger gets 0xE0
packets of 200 bytes followed by the check packet (byte sum, device type, version); hosts get
0xFA packets of 200 bytes after the 0xFA trigger, or 0xF9 packets of 256 bytes for the old 485
host (host type 0x01). Each packet waits `upgrade_reply_timeout_s` (30 s) for the device's
answer and is resent up to 3 times.

A disconnect does not end the transfer: it waits up to `upgrade_resume_timeout_s` for the
device to come back, then continues after the last acknowledged packet (the device asks for
another one with result 1 and the packet number it has). A device that asks for firmware
(0x05, 0x15, a host's 0xFA request) restarts the transfer at packet 1, as the reference
requires. At most `max_concurrent_upgrades` run at once; more are answered `busy`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import protocol as p
from bridge.config import GatewaySettings
from bridge.gateway.dispatcher import CommandTimeout, DeviceOffline, Dispatcher
from bridge.gateway.publishing import Publishing
from bridge.gateway.registry import Device
from bridge.mqtt.payloads import (
    CommandResponse,
    UpgradeFirmwareRequest,
    UpgradeProgressEvent,
    iso_utc,
)
from bridge.mqtt.payloads import response as make_response
from protocol.commands.firmware import CheckPacket, firmware_packets
from protocol.enums import upgrade_result_name

log = logging.getLogger(__name__)

PACKET_RESENDS = 3  # reference 5.1: up to 3 resends of one upgrade packet
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_ERRORS = 10  # packets the device asks again for (result 1) before the upgrade fails
# A.2: device types upgraded with 0xF8 (old 485, oldest and old multi-port models).
F8_DEVICE_TYPES = frozenset({0x01, 0x03, 0x04, 0x06, 0x07, 0x70, 0x71})
OLD_485_HOST = 0x01


class UpgradeError(Exception):
    """A request that cannot start: the message says why (answered `invalid`)."""


@dataclass(slots=True)
class Job:
    dev: Device
    file: str
    target: str
    command: int
    packets: list[p.FirmwarePacket]
    next_index: int = 0  # the packet to send next, 0-based
    restart: bool = False
    back: asyncio.Event = field(default_factory=asyncio.Event)
    last_percent: int = -1


def choose_command(dev: Device, target: str) -> int:
    """The upgrade command for this device and target (A.2, A.3)."""
    if target == "host":
        return 0xF9 if dev.host_type == OLD_485_HOST else 0xFA
    if dev.device_type is None:
        raise UpgradeError("target: device type unknown until the charger registers (0x20)")
    return 0xF8 if dev.device_type in F8_DEVICE_TYPES else 0xE0


def version_code(version: str | None, dev: Device) -> int:
    """ "2.16" -> 216; default: the device's current version."""
    text = version or dev.firmware
    if text is None:
        raise UpgradeError("version: required while the device's firmware version is unknown")
    major, _, minor = text.partition(".")
    return int(major) * 100 + int(minor or 0)


def read_image(firmware_dir: str, name: str) -> bytes:
    """The image `name`, which must be a plain file directly inside `firmware_dir`."""
    if not firmware_dir:
        raise UpgradeError("file: firmware upgrades are off (no firmware_dir configured)")
    base = Path(firmware_dir).resolve()
    path = (base / name).resolve()
    if path.parent != base or name in (".", ".."):
        raise UpgradeError("file: must be a plain file name inside firmware_dir")
    if not path.is_file():
        raise UpgradeError(f"file: {name!r} not found in firmware_dir")
    size = path.stat().st_size
    if size == 0 or size > MAX_IMAGE_BYTES:
        raise UpgradeError(f"file: {size} bytes; images are 1 byte to {MAX_IMAGE_BYTES} bytes")
    return path.read_bytes()


class Upgrades:
    """Running transfers by physical id."""

    def __init__(
        self, settings: GatewaySettings, publishing: Publishing, dispatcher: Dispatcher
    ) -> None:
        self.settings = settings
        self.publishing = publishing
        self.dispatcher = dispatcher
        self.jobs: dict[int, Job] = {}

    # ------------------------------------------------------------------ device hooks

    def seen(self, dev: Device) -> None:
        """A frame from the device: it is (back) online."""
        job = self.jobs.get(dev.physical_id)
        if job is not None:
            job.back.set()

    def restart(self, dev: Device) -> bool:
        """The device asked for firmware: restart its transfer at packet 1 (if one runs)."""
        job = self.jobs.get(dev.physical_id)
        if job is None:
            return False
        job.restart = True
        job.back.set()
        return True

    # ------------------------------------------------------------------ the request

    def prepare(self, dev: Device, req: UpgradeFirmwareRequest) -> Job:
        """Everything that can be refused before a packet goes out (raises UpgradeError)."""
        image = read_image(self.settings.firmware_dir, req.file)
        command = choose_command(dev, req.target)
        check = None
        if command == 0xE0:
            assert dev.device_type is not None
            check = CheckPacket.for_image(image, dev.device_type, version_code(req.version, dev))
        try:
            packets = firmware_packets(command, image, check)
        except p.PayloadError as exc:
            raise UpgradeError(f"file: {exc}") from None
        return Job(dev, req.file, req.target, command, packets)

    async def run(
        self, dev: Device, req: UpgradeFirmwareRequest, request_id: str | None
    ) -> CommandResponse:
        if dev.physical_id in self.jobs:
            return make_response(request_id, False, "busy", "an upgrade of this device runs")
        if len(self.jobs) >= self.settings.max_concurrent_upgrades:
            limit = self.settings.max_concurrent_upgrades
            return make_response(
                request_id, False, "busy", f"{limit} upgrades run already (max_concurrent_upgrades)"
            )
        try:
            job = self.prepare(dev, req)
        except UpgradeError as exc:
            return make_response(request_id, False, "invalid", str(exc))
        self.jobs[dev.physical_id] = job
        try:
            reason = await self._transfer(job)
        finally:
            del self.jobs[dev.physical_id]
        total = len(job.packets)
        fields: dict[str, Any] = {
            "file": job.file,
            "target": job.target,
            "upgrade_command": job.command,
            "packets": total,
        }
        if reason is None:
            self._progress(job, "done", total)
            return make_response(request_id, True, "ok", "firmware transferred", **fields)
        self._progress(job, "failed", job.next_index, reason)
        return make_response(request_id, False, "failed", reason, **fields)

    async def _transfer(self, job: Job) -> str | None:
        """Serve every packet; None when the device acknowledged the last one, else why not."""
        dev, total, errors = job.dev, len(job.packets), 0
        timeout = self.settings.upgrade_reply_timeout_s
        if job.command == 0xFA and (failed := await self._trigger(job)):
            return failed
        while job.next_index < total:
            if job.restart:
                job.restart, job.next_index = False, 0
            if not dev.online:
                self._progress(job, "waiting", job.next_index)
                job.back.clear()
                try:
                    async with asyncio.timeout(self.settings.upgrade_resume_timeout_s):
                        while not dev.online:
                            await job.back.wait()
                            job.back.clear()
                except TimeoutError:
                    return "device did not come back within upgrade_resume_timeout_s"
                continue
            packet = job.packets[job.next_index]
            try:
                got = await self.dispatcher.execute(
                    dev,
                    job.command,
                    packet.encode(),
                    timeout_s=timeout,
                    resends=PACKET_RESENDS,
                )
            except DeviceOffline:
                if dev.online:  # the write failed on a closing link: give it a moment
                    await asyncio.sleep(0.5)
                continue  # wait for the device, then resume where it stands
            except CommandTimeout:
                return f"no answer to packet {packet.packet_number} after {PACKET_RESENDS} resends"
            reply = got.payload if got is not None else None
            if not isinstance(reply, p.UpgradeReply):
                return f"packet {packet.packet_number}: answer not decodable"
            if reply.result == 0 and reply.packet_number == packet.packet_number:
                job.next_index += 1
                self._progress(job, "running", job.next_index)
                continue
            if reply.result in (0, 1):
                # The device has packets up to `packet_number`: continue after it.
                errors += 1
                if errors > MAX_ERRORS:
                    return f"device asked for packets again {MAX_ERRORS} times"
                job.next_index = min(reply.packet_number, total - 1)
                continue
            return f"device refused the image: {upgrade_result_name(reply.result)}"
        return None

    async def _trigger(self, job: Job) -> str | None:
        """0xFA: the trigger puts the host into upgrade mode (result 0 = ready)."""
        try:
            got = await self.dispatcher.execute(job.dev, 0xFA, b"")
        except (DeviceOffline, CommandTimeout) as exc:
            return f"host did not answer the 0xFA trigger ({type(exc).__name__})"
        reply = got.payload if got is not None else None
        if isinstance(reply, p.UpgradeReply) and reply.result != 0:
            return f"host refused the 0xFA trigger (result {reply.result})"
        job.restart = False  # its answer is also a "send from packet 1" request
        return None

    def _progress(
        self,
        job: Job,
        state: Literal["running", "waiting", "done", "failed"],
        done: int,
        reason: str | None = None,
    ) -> None:
        total = len(job.packets)
        percent = done * 100 // total
        if state == "running" and percent == job.last_percent and done != total:
            return
        job.last_percent = percent
        event = UpgradeProgressEvent(
            ts=iso_utc(),
            device_id=job.dev.device_id,
            gateway_id=self.publishing.gateway_id,
            command=job.command,
            message_id=None,
            file=job.file,
            target=job.target,
            upgrade_command=job.command,
            state=state,
            percent=percent,
            packet=done,
            total=total,
            reason=reason,
        )
        self.publishing.event(job.dev, "device", event)
