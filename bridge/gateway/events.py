"""Decoded protocol payloads -> MQTT payload models (API.md section 4), and the device state
they update. Pure functions: wire units become SI, 0-based wire ports become 1-based."""

from __future__ import annotations

from typing import Any

import protocol as p
from bridge.gateway.registry import Device, PortRecord
from bridge.mqtt.payloads import (
    AlarmEvent,
    CabinetHeartbeatEvent,
    CardSwipeEvent,
    ChargeFinishedEvent,
    DeviceOfflineEvent,
    DeviceOnlineEvent,
    ExtensionVersion,
    ExtensionVersionsEvent,
    FrameEvent,
    FskParamsEvent,
    HeartbeatEvent,
    HeartbeatPort,
    HostStatusEvent,
    OrderConfirmedEvent,
    OrderResultEvent,
    OrderSettledEvent,
    PortPowerEvent,
    PortPushEvent,
    PortStatusEvent,
    RegisterEvent,
    TimeSyncEvent,
    UnknownEvent,
    UpgradeRequestEvent,
    iso_utc,
)
from bridge.mqtt.payloads.fast import FastJson
from protocol import units
from protocol.enums import (
    alarm_type_name,
    card_type_name,
    charge_result_executed,
    charge_result_name,
    charging_status_name,
    device_type_name,
    port_status_name,
    push_type_name,
    stop_reason_name,
)
from protocol.ids import device_id, order_no_hex

# API.md names the 0x03/0x04/0x06 start modes `offline`, `online`, `code`.
_START_MODES = {0: "offline", 1: "online", 3: "code"}


def start_mode_name(code: int) -> str:
    return _START_MODES.get(code, f"unknown_{code:02X}")


def firmware(raw: int) -> str:
    """Wire value x100 -> "1.26"."""
    return f"{raw // 100}.{raw % 100:02d}"


def _common(dev: Device, gateway_id: str, frame: p.Frame | None) -> dict[str, Any]:
    return {
        "ts": iso_utc(),
        "device_id": dev.device_id,
        "gateway_id": gateway_id,
        "command": frame.command if frame else None,
        "message_id": frame.message_id if frame else None,
    }


# ---------------------------------------------------------------------- device events


def online(dev: Device, gw: str, frame: p.Frame, peer: str) -> DeviceOnlineEvent:
    return DeviceOnlineEvent(**_common(dev, gw, frame), peer=peer, iccid=dev.iccid)


def offline(dev: Device, gw: str, reason: str) -> DeviceOfflineEvent:
    return DeviceOfflineEvent(**_common(dev, gw, None), reason=reason)


def apply_registration(dev: Device, reg: p.Registration) -> None:
    dev.firmware = firmware(reg.firmware)
    dev.port_count = reg.port_count
    dev.device_type = reg.device_type


def register(dev: Device, gw: str, frame: p.Frame, reg: p.Registration) -> RegisterEvent:
    return RegisterEvent(
        **_common(dev, gw, frame),
        firmware=firmware(reg.firmware),
        port_count=reg.port_count,
        virtual_id=reg.virtual_id,
        device_type=reg.device_type,
        work_mode=reg.work_mode,
        power_board_firmware=(
            firmware(reg.power_board_version) if reg.power_board_version is not None else None
        ),
    )


Heartbeats = p.Heartbeat | p.LegacyHeartbeat | p.HostHeartbeat


def apply_heartbeat(dev: Device, hb: Heartbeats) -> None:
    if isinstance(hb, p.HostHeartbeat):
        dev.firmware = firmware(hb.firmware)
        dev.signal = hb.signal
        dev.host_type = hb.host_type
        if hb.iccid:
            dev.iccid = hb.iccid
        return
    if isinstance(hb, p.LegacyHeartbeat):
        dev.firmware = firmware(hb.firmware)
    dev.voltage_v = hb.voltage_v
    dev.port_count = len(hb.port_statuses)
    if hb.signal is not None:
        dev.signal = hb.signal
    if hb.temperature is not None:
        dev.temperature_c = hb.temperature_c


def heartbeat_port_states(hb: Heartbeats) -> list[PortRecord]:
    if isinstance(hb, p.HostHeartbeat):
        return []
    now = iso_utc()
    powers: tuple[float | None, ...] = (
        hb.powers_w if isinstance(hb, p.LegacyHeartbeat) else (None,) * len(hb.port_statuses)
    )
    return [
        PortRecord(
            port=i + 1,
            status=port_status_name(code),
            status_code=code,
            power_w=power,
            order_no=None,
            updated_at=now,
            measured_at=now if power is not None else None,
        )
        for i, (code, power) in enumerate(zip(hb.port_statuses, powers, strict=True))
    ]


def heartbeat(dev: Device, gw: str, frame: p.Frame, hb: Heartbeats) -> HeartbeatEvent:
    common = _common(dev, gw, frame)
    if isinstance(hb, p.HostHeartbeat):
        return HeartbeatEvent(
            **common,
            firmware=firmware(hb.firmware),
            signal=hb.signal,
            iccid=hb.iccid or None,
            imei=hb.imei,
            module_type=hb.module_type,
            host_time=iso_utc(hb.host_time) if hb.host_time else None,
        )
    legacy = isinstance(hb, p.LegacyHeartbeat)
    ports = [
        HeartbeatPort(
            port=i + 1,
            status=port_status_name(code),
            status_code=code,
            power_w=hb.powers_w[i] if isinstance(hb, p.LegacyHeartbeat) else None,
            peak_power_w=hb.peak_powers_w[i] if isinstance(hb, p.LegacyHeartbeat) else None,
        )
        for i, code in enumerate(hb.port_statuses)
    ]
    return HeartbeatEvent(
        **common,
        firmware=firmware(hb.firmware) if isinstance(hb, p.LegacyHeartbeat) and legacy else None,
        voltage_v=hb.voltage_v,
        port_count=len(hb.port_statuses),
        ports=ports,
        signal=hb.signal,
        temperature_c=hb.temperature_c if hb.temperature is not None else None,
    )


def time_sync(dev: Device, gw: str, frame: p.Frame, unix_time: int) -> TimeSyncEvent:
    return TimeSyncEvent(**_common(dev, gw, frame), unix_time=unix_time)


def alarm(dev: Device, gw: str, frame: p.Frame, a: p.Alarm) -> AlarmEvent:
    # Byte 1 is a port for port alarms (hot-melt), else a sensor address (reference 0x42).
    port_alarm = a.alarm_type == 3
    return AlarmEvent(
        **_common(dev, gw, frame),
        alarm=alarm_type_name(a.alarm_type),
        alarm_code=a.alarm_type,
        port=a.port + 1 if port_alarm else None,
        sensor_address=0 if port_alarm else a.port,
        inputs=a.inputs or 0,
    )


def upgrade_request(dev: Device, gw: str, frame: p.Frame, req: Any) -> UpgradeRequestEvent:
    """0x05 (either layout), 0x15, or a host's 0xFA request."""
    if isinstance(req, p.UpgradeRequest):
        return UpgradeRequestEvent(
            **_common(dev, gw, frame),
            device_type=device_type_name(req.device_type),
            device_type_code=req.device_type,
            firmware=firmware(req.firmware),
            package_type=req.package_type,
        )
    return UpgradeRequestEvent(**_common(dev, gw, frame), data_hex=frame.data.hex().upper())


def host_status(dev: Device, gw: str, frame: p.Frame, h: p.HostStatus) -> HostStatusEvent:
    return HostStatusEvent(
        **_common(dev, gw, frame),
        breaker_closed=h.breaker_state == 1,
        temperature_c=units.celsius(h.temperature),
        voltage_v=h.voltage_v,
        current_a=h.current_a,
        energy_kwh=h.energy_kwh,
        meter_current_a=units.centiamps(h.meter_current),
        meter_energy_kwh=units.kwh(h.meter_energy),
        smoke_alarm=h.smoke_alarm == 1,
        alarm_relay=h.alarm_relay == 1,
        leakage_current_ma=h.leakage_current,
        live_temperature_c=units.celsius(h.live_temperature),
        neutral_temperature_c=units.celsius(h.neutral_temperature),
        breaker_locked=h.breaker_lock == 1,
        breaker_model=h.breaker_model,
    )


def extension_versions(
    dev: Device, gw: str, frame: p.Frame, v: p.ExtensionVersions
) -> ExtensionVersionsEvent:
    return ExtensionVersionsEvent(
        **_common(dev, gw, frame),
        extensions=[
            ExtensionVersion(
                extension_type=device_type_name(r.extension_type),
                extension_type_code=r.extension_type,
                lowest_firmware=firmware(r.lowest_version),
                device_id=device_id(r.physical_id),
            )
            for r in v.records
        ],
    )


def _bits(bitmap: int, count: int) -> list[int]:
    """1-based ports whose bit is set (bit i = wire port i)."""
    return [i + 1 for i in range(min(count, 32)) if bitmap >> i & 1]


def cabinet_heartbeat(
    dev: Device, gw: str, frame: p.Frame, c: p.CabinetHeartbeat
) -> CabinetHeartbeatEvent:
    return CabinetHeartbeatEvent(
        **_common(dev, gw, frame),
        port_count=c.port_count,
        doors_open=_bits(c.doors, c.port_count),
        fans_on=_bits(c.fans, c.port_count),
    )


def charge_finished(
    dev: Device, gw: str, frame: p.Frame, f: p.ChargeFinished
) -> ChargeFinishedEvent:
    return ChargeFinishedEvent(
        **_common(dev, gw, frame),
        port=_port(f.port),
        order_no=order_no_hex(f.order_no),
        duration_s=f.duration_s,
        max_power_w=f.max_power_w,
        energy_kwh=f.energy_kwh,
        start_mode=start_mode_name(f.start_mode),
        start_mode_code=f.start_mode,
        card_id=f.card_id.hex().upper(),
        stop_reason=stop_reason_name(f.stop_reason),
        stop_reason_code=f.stop_reason,
    )


def port_push(dev: Device, gw: str, frame: p.Frame, push: p.PortPush) -> PortPushEvent:
    return PortPushEvent(
        **_common(dev, gw, frame),
        port=_port(push.port),
        push=push_type_name(push.push_type),
        push_code=push.push_type,
        order_no=order_no_hex(push.order_no),
    )


def fsk_params(dev: Device, gw: str, frame: p.Frame, answer: p.FskParams) -> FskParamsEvent:
    return FskParamsEvent(
        **_common(dev, gw, frame),
        frequency_mhz=answer.frequency,
        extension_ids=[device_id(i) for i in answer.extension_ids],
    )


def frame_fields(dev: Device, gw: str, frame: p.Frame, fields: dict[str, Any]) -> FrameEvent:
    return FrameEvent(
        **_common(dev, gw, frame), command_name=p.command_name(frame.command), fields=fields
    )


def unknown(dev: Device, gw: str, frame: p.Frame, error: str | None = None) -> UnknownEvent:
    return UnknownEvent(
        **_common(dev, gw, frame),
        command_name=p.command_name(frame.command),
        data_hex=frame.data.hex().upper(),
        error=error,
    )


# ---------------------------------------------------------------------- port events


def _port(wire: int) -> int:
    return wire + 1


# The port events are published for every 0x06 and heartbeat: their text is made without a
# model (`FastJson`), byte for byte what the model would write.
STATUS_EVENT = FastJson(PortStatusEvent)
POWER_EVENT = FastJson(PortPowerEvent)


def port_status(dev: Device, gw: str, frame: p.Frame, state: PortRecord) -> bytes:
    return STATUS_EVENT.dump(
        ts=iso_utc(),
        device_id=dev.device_id,
        gateway_id=gw,
        command=frame.command,
        message_id=frame.message_id,
        port=state.port,
        status=state.status,
        status_code=state.status_code,
    )


def power_port_state(r: p.PortPowerReport, now: str) -> PortRecord:
    """The port state a 0x06 reports, measured `now`."""
    return PortRecord(
        _port(r.port),
        charging_status_name(r.status),
        r.status,
        r.power_w,
        order_no_hex(r.order_no),
        now,
        r.energy_kwh,
        r.voltage_v,
        r.current_a,
        r.ambient_temperature_c,
        r.port_temperature_c,
        now,
    )


def power(dev: Device, gw: str, frame: p.Frame, r: p.PortPowerReport, state: PortRecord) -> bytes:
    """The 0x06 event; `state` is `power_port_state(r, ts)` (the fields they share)."""
    return POWER_EVENT.dump(
        ts=state.updated_at,
        device_id=dev.device_id,
        gateway_id=gw,
        command=frame.command,
        message_id=frame.message_id,
        port=state.port,
        status=state.status,
        status_code=state.status_code,
        order_no=state.order_no,
        duration_s=r.duration_s,
        energy_kwh=state.energy_kwh,
        power_w=state.power_w,
        max_power_w=r.max_power_w,
        min_power_w=r.min_power_w,
        avg_power_w=r.average_power_w,
        peak_power_w=r.peak_power_w,
        voltage_v=state.voltage_v,
        current_a=state.current_a,
        temperature_c=state.temperature_c,
        port_temperature_c=state.port_temperature_c,
        start_mode=start_mode_name(r.start_mode),
        start_mode_code=r.start_mode,
    )


# ---------------------------------------------------------------------- order events


def confirmed(dev: Device, gw: str, frame: p.Frame, c: p.OrderConfirmation) -> OrderConfirmedEvent:
    return OrderConfirmedEvent(
        **_common(dev, gw, frame),
        port=_port(c.port),
        order_no=order_no_hex(c.order_no),
        start_mode=start_mode_name(c.start_mode),
        start_mode_code=c.start_mode,
        card_id=c.card_id.hex().upper(),
        duration_s=c.duration_s,
    )


def settled(dev: Device, gw: str, frame: p.Frame, s: p.Settlement) -> OrderSettledEvent:
    return OrderSettledEvent(
        **_common(dev, gw, frame),
        port=_port(s.port),
        order_no=order_no_hex(s.order_no),
        duration_s=s.duration_s,
        max_power_w=s.max_power_w,
        energy_kwh=s.energy_kwh,
        start_mode=start_mode_name(s.start_mode),
        start_mode_code=s.start_mode,
        card_id=s.card_id.hex().upper(),
        stop_reason=stop_reason_name(s.stop_reason),
        stop_reason_code=s.stop_reason,
        second_max_power_w=s.second_max_power_w,
        device_time=iso_utc(s.timestamp) if s.timestamp is not None else None,
        occupied_minutes=s.occupied_time,
    )


def card_swipe(
    dev: Device, gw: str, frame: p.Frame, c: p.CardSwipe, awaiting_reply: bool
) -> CardSwipeEvent:
    return CardSwipeEvent(
        **_common(dev, gw, frame),
        port="balance_query" if c.port == 0xFF else _port(c.port),
        card_id=c.card_id.hex().upper(),
        card_number=int.from_bytes(c.card_id, "big"),
        card_type=card_type_name(c.card_type),
        card_type_code=c.card_type,
        balance_cents=c.balance,
        awaiting_reply=awaiting_reply,
    )


def card_reply(c: p.CardSwipe, status: int, rate_mode: int, balance: int) -> p.CardSwipeReply:
    return p.CardSwipeReply(
        card_id=c.card_id, account_status=status, rate_mode=rate_mode, balance=balance, port=c.port
    )


def order_result(
    dev: Device, gw: str, frame: p.Frame, reply: Any, sent: p.ChargeControl
) -> OrderResultEvent:
    """A 0x82 reply. Older devices send the result byte only: port and order number then come
    from the command we sent."""
    code = reply.result
    order_no, wire_port, waiting = sent.order_no, sent.port, None
    if isinstance(reply, p.ChargeControlReply):
        order_no = reply.order_no or order_no
        wire_port = reply.port if reply.port is not None else wire_port
        waiting = reply.waiting_ports
    executed = charge_result_executed(code)
    if sent.command == 1:
        kind = "started" if executed else "start_failed"
    else:
        kind = "stopped" if executed else "stop_failed"
    return OrderResultEvent(
        **_common(dev, gw, frame),
        type=kind,
        port=_port(wire_port) if wire_port != 0xFF else None,
        order_no=order_no_hex(order_no),
        result=charge_result_name(code),
        result_code=code,
        reason=None if executed else charge_result_name(code).replace("_", " "),
        waiting_ports=[i + 1 for i in range(16) if waiting >> i & 1] if waiting else None,
    )
