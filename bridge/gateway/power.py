"""Power control: the `adjust_power` request and the optional site power cap.

The reference has no command that changes one running order's power: 0x82 sets an order's
overload power only at the start. What a server can change later is 0x85, the charger's
per-port overload power (0.1 W), which the device applies to running sessions at once. So
`adjust_power` sends 0x85, and its caveat is that the limit holds for every port of that
charger, and stays in the device's memory until changed again. 0x85 also carries the max
charge time: it is read first (0x92) and sent back unchanged (36000 s when the read fails).

The site cap (`site_power_limit_w`, 0 = off) watches the live power of all ports of this
gateway (0x06 and the 0x01 per-port powers). Above the cap every charger with a charging port
gets the fair share `cap / charging ports` as its 0x85 limit (`power_limited` device event);
once the live power falls below 90 % of the cap (hysteresis) the limits are raised back to the
charger's own (the last `adjust_power`, else 2000 W, the dual/multi-port maximum) with a
`power_restored` event.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Literal

import protocol as p
from bridge.config import GatewaySettings
from bridge.gateway.clock import Clock
from bridge.gateway.dispatcher import CommandTimeout, DeviceOffline, Dispatcher
from bridge.gateway.publishing import CHARGING_CODES, Publishing
from bridge.gateway.registry import Device, Registry
from bridge.mqtt.payloads import AdjustPowerRequest, CommandResponse, PowerLimitEvent, iso_utc
from bridge.mqtt.payloads import response as make_response

log = logging.getLogger(__name__)

DEFAULT_MAX_CHARGE_TIME_S = 36000  # 0x85 default (reference)
DEVICE_MAX_POWER_W = 2000.0  # 0x85 limit of dual and multi-port chargers
RESTORE_BELOW = 0.9  # hysteresis: raise the limits again below 90 % of the cap
QUERY_LIMITS = p.command_code("query_charge_limits")
OBSERVE_EVERY_S = 0.05


def deci_watts(watts: float) -> int:
    """Watts -> the wire unit 0.1 W."""
    return round(watts * 10)


class Power:
    """`adjust_power` and the site cap; one 0x85 in flight per charger."""

    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        publishing: Publishing,
        dispatcher: Dispatcher,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._observed_at = -math.inf
        self.registry = registry
        self.publishing = publishing
        self.dispatcher = dispatcher
        self.own_limit_w: dict[int, float] = {}  # set by adjust_power
        self.capped_w: dict[int, float] = {}  # chargers the site cap lowered, and to what
        self._max_time: dict[int, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy: set[int] = set()

    # ------------------------------------------------------------------ adjust_power

    async def adjust(
        self, dev: Device, req: AdjustPowerRequest, request_id: str | None
    ) -> CommandResponse:
        state = dev.ports.get(req.port)
        running = state.order_no if state is not None else None
        if running is not None and running != req.order_no:
            return make_response(
                request_id,
                False,
                "invalid",
                f"order_no: port {req.port} runs order {running}, not {req.order_no}",
            )
        limit = req.max_power_w
        if dev.physical_id in self.capped_w:
            limit = min(limit, self.capped_w[dev.physical_id])
        try:
            code, max_time = await self._set_limit(dev, limit)
        except DeviceOffline:
            return make_response(request_id, False, "offline", "device is not connected")
        except CommandTimeout:
            return make_response(request_id, False, "timeout", "no reply to 0x85 after one resend")
        fields = {
            "port": req.port,
            "order_no": req.order_no,
            "max_power_w": limit,
            "max_charge_time_s": max_time,
            "applies_to": "every port of the charger (0x85)",
        }
        if code != 0:
            return make_response(
                request_id, False, "failed", "the device refused the limit", code, **fields
            )
        self.own_limit_w[dev.physical_id] = req.max_power_w
        return make_response(request_id, True, "ok", "power limit set", code, **fields)

    async def _set_limit(self, dev: Device, watts: float) -> tuple[int | None, int]:
        """Send 0x85 with `watts` and the device's max charge time; (result, max time)."""
        max_time = await self._max_charge_time(dev)
        limits = p.ChargeLimits(max_charge_time=max_time, overload_power=deci_watts(watts))
        assert limits.COMMAND is not None
        got = await self.dispatcher.execute(dev, limits.COMMAND, p.encode_payload(limits))
        payload = got.payload if got is not None else None
        code = payload.result if isinstance(payload, p.ResultReply) else None
        return code, max_time

    async def _max_charge_time(self, dev: Device) -> int:
        known = self._max_time.get(dev.physical_id)
        if known is not None:
            return known
        value = DEFAULT_MAX_CHARGE_TIME_S
        try:
            got = await self.dispatcher.execute(dev, QUERY_LIMITS, b"")
        except CommandTimeout:
            got = None
        if got is not None and isinstance(got.payload, p.ChargeLimits):
            value = got.payload.max_charge_time or DEFAULT_MAX_CHARGE_TIME_S
        self._max_time[dev.physical_id] = value
        return value

    # ------------------------------------------------------------------ site cap

    def site_power_w(self) -> tuple[float, int]:
        """Live power of every charging port of the online chargers, and their count."""
        total, ports = 0.0, 0
        for dev in self.registry.devices.values():
            if not dev.online:
                continue
            for state in dev.ports.values():
                if state.status_code in CHARGING_CODES:
                    ports += 1
                    total += state.power_w or 0.0
        return total, ports

    def observe(self) -> None:
        """After a power report or heartbeat: lower or restore limits when the site power
        asks for it. The sum goes over every device, so it is taken at most every
        `OBSERVE_EVERY_S` (a big fleet reports many times a second)."""
        cap = self.settings.site_power_limit_w
        if cap <= 0:
            return
        now = self.clock.monotonic()
        if now - self._observed_at < OBSERVE_EVERY_S:
            return
        self._observed_at = now
        total, ports = self.site_power_w()
        if total > cap and ports:
            share = round(cap / ports, 1)
            for dev in self.registry.devices.values():
                charging = any(s.status_code in CHARGING_CODES for s in dev.ports.values())
                if not dev.online or not charging:
                    continue
                own = self.own_limit_w.get(dev.physical_id, DEVICE_MAX_POWER_W)
                limit = min(share, own)
                if self.capped_w.get(dev.physical_id) != limit:
                    self.capped_w[dev.physical_id] = limit
                    self._apply(dev, limit, "power_limited", total, cap)
        elif total < cap * RESTORE_BELOW and self.capped_w:
            for pid in list(self.capped_w):
                del self.capped_w[pid]
                restored = self.registry.devices.get(pid)
                if restored is not None and restored.online:
                    own = self.own_limit_w.get(pid, DEVICE_MAX_POWER_W)
                    self._apply(restored, own, "power_restored", total, cap)

    def _apply(
        self,
        dev: Device,
        watts: float,
        kind: Literal["power_limited", "power_restored"],
        total: float,
        cap: float,
    ) -> None:
        event = PowerLimitEvent(
            ts=iso_utc(),
            device_id=dev.device_id,
            gateway_id=self.publishing.gateway_id,
            command=p.ChargeLimits.COMMAND,
            message_id=None,
            type=kind,
            port=None,
            limit_w=watts,
            site_power_w=round(total, 1),
            site_power_limit_w=cap,
        )
        self.publishing.event(dev, "device", event)
        log.info("site power cap: %s", kind, extra={"device_id": dev.device_id, "limit_w": watts})
        if dev.physical_id in self._busy:
            return  # the running task applies the latest wanted limit when it is done
        task = asyncio.get_running_loop().create_task(self._send(dev))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, dev: Device) -> None:
        pid = dev.physical_id
        self._busy.add(pid)
        try:
            sent: float | None = None
            while True:
                want = self.capped_w.get(pid, self.own_limit_w.get(pid, DEVICE_MAX_POWER_W))
                if want == sent:
                    return
                try:
                    code, _ = await self._set_limit(dev, want)
                except (DeviceOffline, CommandTimeout) as exc:
                    log.warning(
                        "site power cap: 0x85 not applied",
                        extra={"device_id": dev.device_id, "error": type(exc).__name__},
                    )
                    return
                if code != 0:
                    log.warning("site power cap: 0x85 refused", extra={"device_id": dev.device_id})
                    return
                sent = want
        finally:
            self._busy.discard(pid)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
