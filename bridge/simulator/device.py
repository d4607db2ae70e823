"""A simulated charger as a pure state machine (no sockets, no clocks, no asyncio).

Inputs are `connect(now)`, `receive(frame, now)`, `tick(now)` and the user actions `plug`,
`unplug`, `swipe_card`; output is the bytes the device would write, collected by
`take_output()`. `now` is *device time* in seconds; the I/O layer (`fleet.py`) maps wall-clock
time to device time with the speed factor and calls `tick` at `next_deadline()`.

The behaviour follows the protocol reference's description of a real device: ICCID on connect,
0x20 until answered, 0x21 every interval, `link` after 30 s of silence, 0x22 until answered,
0x06 every 5 min per charging port, durable 0x03 records re-sent every 30 min until acknowledged.

A *legacy* device (built before mid-2019, reference 0x01/0x04) sends 0x01 heartbeats with the
per-port power instead of 0x21, confirms every session start with 0x04 (repeated each heartbeat
interval until answered) and never sends 0x06; its settlements stop after the order number.

Power limits: a session never draws more than its 0x82 overload power nor the device's per-port
overload power (0x85), which bounds every port at once, running sessions included.

Firmware upgrades (device side): a current device takes 0xE0 packets of 200 bytes ending with
the check packet (marker, byte sum, device type, version), a legacy device 0xF8 packets of 256
bytes. The transfer survives a disconnect (the server resumes with the next packet, a resent
packet is acknowledged again, packet 1 restarts); a verified image is installed and the device
reboots with the new firmware version.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace

from protocol import (
    AdjustCharging,
    CardParams,
    CardSwipe,
    CardSwipeReply,
    ChargeControl,
    ChargeControlReply,
    ChargeLimits,
    FirmwarePacket,
    Frame,
    Heartbeat,
    LegacyHeartbeat,
    LegacyUpgradeRequest,
    Locate,
    OrderConfirmation,
    OrderConfirmationReply,
    Payload,
    PayloadError,
    PortPowerReport,
    Registration,
    ResultReply,
    RunningParams1,
    RunningParams2,
    Sender,
    Settlement,
    TimeReply,
    UpgradeReply,
    decode_payload,
    encode_frame,
    encode_payload,
)
from protocol.commands.firmware import PACKET_SIZES, CheckPacket
from protocol.ids import device_number

from .session import (
    SAMPLE_S,
    STOP_BY_SERVER,
    STOP_FULL,
    STOP_UNPLUGGED,
    PeriodStats,
    PortSession,
    PowerCurve,
)
from .stats import FleetStats

KIND_BY_PORTS = {2: 0x04, 10: 0x05, 16: 0x06}
"""Port count -> device kind code (top byte of the physical ID)."""

LINK = b"link"

# Port status codes of 0x21 (Appendix A.4) and 0x06 (A.5).
IDLE, CHARGING, PLUGGED, FULL, FLOATING = 0, 1, 2, 3, 5

# 0x82 reply results (A.13) and 0x8A results (A.14) the simulator produces.
OK, NO_CHARGER, SAME_STATE, NO_SUCH_PORT = 0, 1, 2, 4
ADJUST_NOT_CHARGING, ADJUST_BAD_REQUEST = 1, 3

AUTO_PORT = 0xFF
ONLINE_START, OFFLINE_CARD_START = 1, 0

# 0x83/0x84/0x85/0x86 defaults as the reference lists them, answered to 0x90..0x93.
DEFAULT_PARAMS_1 = RunningParams1(
    unplug_power=3,
    unplug_detection_time=10,
    float_percentage=20,
    float_detection_time=1800,
    float_time=3600,
    heartbeat_interval=180,
)
DEFAULT_PARAMS_2 = RunningParams2(
    dynamic_overload_power=800,
    dynamic_overload_time=30,
    dynamic_overload_start=1800,
    unplug_interference_power=10,
    unplug_interference_time=300,
    float_stage2_time_point=10800,
    float_stage2_detection_time=300,
    min_power=300,
    min_power_time_point=1800,
    second_max_power_window=300,
    ambient_alarm_temperature=80,
    port_alarm_temperature=80,
    unplug_detection=0,
    qr_backlight=1,
)
DEFAULT_LIMITS = ChargeLimits(
    max_charge_time=36000, overload_power=20000, over_voltage=2700, under_voltage=1000
)
DEFAULT_CARD_PARAMS = CardParams(
    sector=0, user_key=bytes.fromhex("159185191880"), new_card_key=b"\xff" * 6
)

# Firmware upgrade results (A.15).
UPGRADE_OK, UPGRADE_PACKET_ERROR, UPGRADE_SUM_ERROR, UPGRADE_WRONG_TYPE, UPGRADE_NO_CHECK = (
    0,
    1,
    2,
    3,
    4,
)
UPGRADE_BY_E0, UPGRADE_BY_F8 = 0xE0, 0xF8

# (device type A.2, firmware x100): a legacy old-485 dual socket, new dual and multi-port piles.
LEGACY_MODEL = (0x06, 226)
DUAL_MODEL = (0x21, 215)
MULTI_PORT_MODEL = (0x20, 130)

MAX_OVERLOAD = 20000
"""0x85 overload power limit of dual and multi-port piles: 2000 W, in 0.1 W."""

SETTABLE = {0x83: 0x90, 0x84: 0x91, 0x85: 0x92, 0x86: 0x93}
"""Parameter set command -> the query command that reads the same layout back."""


@dataclass(frozen=True, slots=True)
class DeviceTiming:
    """Device-side intervals in device seconds (vendor defaults)."""

    heartbeat_s: float = 180.0
    power_report_s: float = 300.0
    settlement_first_s: float = 2.0
    settlement_retry_s: float = 1800.0
    settlement_next_s: float = 60.0
    link_idle_s: float = 30.0
    time_refresh_s: float = 12 * 3600.0
    reboot_s: float = 10.0


@dataclass(frozen=True, slots=True)
class UserBehaviour:
    """How simulated users treat the ports, in device seconds (only with `--auto-plug`).

    Someone plugs into an idle port after `plug_mean_s` on average; `card_share` of them swipe
    a card, the others wait for the server to start the port (the app path); nobody waits longer
    than `patience_s`; `early_unplug_share` of the sessions end by unplugging before full; a
    full battery is collected after `pickup_mean_s` on average.
    """

    plug_mean_s: float = 1800.0
    card_share: float = 0.3
    swipe_delay_s: float = 15.0
    patience_s: float = 900.0
    early_unplug_share: float = 0.2
    pickup_mean_s: float = 1200.0
    offline_card_starts: bool = True


@dataclass(slots=True)
class Port:
    """One socket: whether a charger is plugged in, its session, and the next user action."""

    index: int
    plugged: bool = False
    battery_full: bool = False
    session: PortSession | None = None
    report_at: float = math.inf
    user_at: float = math.inf
    user_action: str = ""
    confirm_id: int | None = None
    """Legacy devices: message ID of the unanswered 0x04 of the running session."""
    confirm_at: float = math.inf

    @property
    def status(self) -> int:
        if self.session is not None:
            return FLOATING if self.session.floating else CHARGING
        if self.plugged:
            return FULL if self.battery_full else PLUGGED
        return IDLE


@dataclass(slots=True)
class _Record:
    """A stored settlement: the payload and the message ID every resend reuses."""

    payload: Settlement
    message_id: int


@dataclass(slots=True)
class _Upgrade:
    """A firmware transfer in progress (kept across disconnects, lost on reboot)."""

    command: int
    total: int
    received: int = 0
    byte_sum: int = 0
    size: int = 0


@dataclass(slots=True, eq=False)
class SimulatedDevice:
    """A charging pile with `port_count` sockets talking DNY over one connection."""

    physical_id: int
    port_count: int
    rng: random.Random = field(repr=False)
    stats: FleetStats = field(default_factory=FleetStats, repr=False)
    timing: DeviceTiming = field(default_factory=DeviceTiming, repr=False)
    users: UserBehaviour | None = field(default=None, repr=False)
    iccid: str | None = None
    legacy: bool = False
    device_type: int = 0
    firmware: int = 0
    upgrade: _Upgrade | None = field(default=None, repr=False)
    upgrade_interrupted: bool = False
    ports: list[Port] = field(default_factory=list, repr=False)
    connected: bool = False
    registered: bool = False
    online: bool = False
    time_synced: bool = False
    clock_offset: float = 0.0
    reboot_at: float | None = None
    params: dict[int, Payload] = field(default_factory=dict, repr=False)
    settlements: deque[_Record] = field(default_factory=deque, repr=False)
    _out: list[bytes] = field(default_factory=list, repr=False)
    _message_id: int = field(default=0, repr=False)
    _registration_id: int | None = field(default=None, repr=False)
    _registration_at: float = field(default=math.inf, repr=False)
    _heartbeat_at: float = field(default=math.inf, repr=False)
    _heartbeats: dict[int, float] = field(default_factory=dict, repr=False)
    _missed: int = field(default=0, repr=False)
    _time_id: int | None = field(default=None, repr=False)
    _time_at: float = field(default=math.inf, repr=False)
    _settlement_at: float = field(default=math.inf, repr=False)
    _last_traffic: float = field(default=0.0, repr=False)
    _now: float = field(default=0.0, repr=False)
    _cards: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.ports:
            self.ports = [Port(i) for i in range(self.port_count)]
        if not self.device_type:
            model = LEGACY_MODEL if self.legacy else DUAL_MODEL
            if not self.legacy and self.physical_id >> 24 != 0x04:
                model = MULTI_PORT_MODEL
            self.device_type, self.firmware = model
        self._message_id = self.rng.randrange(1, 0xFFFF)
        self._cards = tuple(self.rng.randbytes(4) for _ in range(3))
        self.params = {
            0x83: DEFAULT_PARAMS_1,
            0x84: DEFAULT_PARAMS_2,
            0x85: DEFAULT_LIMITS,
            0x86: DEFAULT_CARD_PARAMS,
        }

    @classmethod
    def create(
        cls,
        index: int,
        *,
        ports: int = 2,
        seed: int = 0,
        stats: FleetStats | None = None,
        timing: DeviceTiming | None = None,
        users: UserBehaviour | None = None,
        iccid: bool = True,
        legacy: bool = False,
    ) -> SimulatedDevice:
        """Device number `index` of a fleet: physical ID = kind code << 24 | 10 000 000 +
        index (the printed number), RNG seeded from (seed, index) so a run is reproducible.
        `iccid=False` for devices behind a bus, which have no SIM of their own; `legacy` for a
        pre-2019 device (0x01 and 0x04, no 0x06, 0xF8 upgrades)."""
        rng = random.Random(f"{seed}/{index}")
        return cls(
            physical_id=(KIND_BY_PORTS[ports] << 24) | (10_000_000 + index),
            port_count=ports,
            rng=rng,
            stats=stats or FleetStats(),
            timing=timing or DeviceTiming(),
            users=users,
            iccid=f"8986{rng.randrange(10**16):016d}" if iccid else None,
            legacy=legacy,
        )

    # ---------------------------------------------------------------- inputs

    def connect(self, now: float) -> None:
        """The module has (re)connected: ICCID, then registration, heartbeat and time request."""
        self._now = now
        if self.reboot_at is not None:
            self._power_on(now)
        self.connected = True
        self._last_traffic = now
        if self.iccid is not None:
            self._write(self.iccid.encode("ascii"))
        self.registered = False
        self._registration_id = None
        self._send_registration(now)
        self._send_heartbeat(now)
        if not self.time_synced:
            self._send_time_request(now)
        if self.upgrade_interrupted:
            # The 0x05 data of F8-family devices is undocumented: the simulator sends none.
            self._send_frame(0x05, encode_payload(LegacyUpgradeRequest()))
            self.upgrade_interrupted = False
        for p in self.ports:
            if p.confirm_id is not None:
                self._send_confirmation(p, now, resend=True)
        if self.settlements:
            self._settlement_at = now + self.timing.settlement_first_s
        self._schedule_users(now)

    def disconnect(self, now: float) -> None:
        """The connection dropped: nothing is sent until the next `connect`."""
        if not self.connected:
            return
        self.connected = False
        if self.registered:
            self.stats.registered -= 1
        self.registered = False
        self._heartbeats.clear()

    def receive(self, frame: Frame, now: float) -> None:
        """A frame from the server addressed to this device."""
        self._now = now
        if frame.physical_id != self.physical_id:
            return
        self._last_traffic = now
        try:
            payload = decode_payload(frame.command, frame.data, Sender.SERVER)
        except PayloadError:
            self.stats.bad_frames += 1
            return
        self._tick_ports(now)
        handler = _HANDLERS.get(frame.command)
        if handler is not None:
            handler(self, frame, payload, now)

    def tick(self, now: float) -> None:
        """Time has reached `now`: do whatever fell due."""
        self._now = now
        self._tick_ports(now)
        self._tick_users(now)
        if not self.connected:
            return
        if not self.registered and now >= self._registration_at:
            self._send_registration(now, resend=True)
        if now >= self._heartbeat_at:
            self._send_heartbeat(now)
        if now >= self._time_at:
            self._send_time_request(now, resend=not self.time_synced)
        if now >= self._settlement_at:
            self._send_settlement(now)
        for p in self.ports:
            if now >= p.confirm_at:
                self._send_confirmation(p, now, resend=True)
        if now >= self._last_traffic + self.timing.link_idle_s:
            self._write(LINK)
            self._last_traffic = now

    def next_deadline(self) -> float:
        """Device time of the next `tick` that has work to do (inf if none)."""
        deadline = self._ports_deadline()
        if not self.connected:
            return deadline
        return min(
            deadline,
            self._registration_at if not self.registered else math.inf,
            self._heartbeat_at,
            self._time_at,
            self._settlement_at,
            min(p.confirm_at for p in self.ports),
            self._last_traffic + self.timing.link_idle_s,
        )

    def take_output(self) -> list[bytes]:
        """Bytes to write, in order, since the previous call."""
        out, self._out = self._out, []
        return out

    # ---------------------------------------------------------- user actions

    def plug(self, port: int, now: float) -> None:
        """A user plugs a charger into `port` (0-based)."""
        self._now = now
        p = self.ports[port]
        if p.plugged:
            return
        p.plugged, p.battery_full = True, False
        p.user_at, p.user_action = math.inf, ""
        if self.users is None:
            return
        if self.rng.random() < self.users.card_share:
            p.user_at, p.user_action = now + self.users.swipe_delay_s, "swipe"
        else:
            p.user_at, p.user_action = now + self.users.patience_s, "unplug"

    def unplug(self, port: int, now: float) -> None:
        """A user pulls the charger out; a running session ends with stop reason 5."""
        self._now = now
        p = self.ports[port]
        if p.session is not None:
            self._tick_ports(now)
            if p.session is not None:
                p.session.stop(now, STOP_UNPLUGGED, self.rng)
                self._end_session(p, now)
        p.plugged, p.battery_full = False, False
        p.user_at, p.user_action = math.inf, ""
        self._schedule_users(now)

    def swipe_card(self, port: int, now: float, card_id: bytes | None = None) -> None:
        """A user swipes a card to charge on `port`: 0x02 online, or a local start offline."""
        self._now = now
        card = card_id if card_id is not None else self.rng.choice(self._cards)
        p = self.ports[port]
        if self.users is not None:
            p.user_at, p.user_action = now + self.users.patience_s, "unplug"
        if self.online and self.connected:
            swipe = CardSwipe(card, 0, port, 0, self.unix_time(now))
            self._send_frame(0x02, encode_payload(swipe))
        elif (
            self.users is not None
            and self.users.offline_card_starts
            and p.plugged
            and p.session is None
        ):
            order = offline_order_no(self.unix_time(now), card, self.physical_id, port)
            terms = ChargeTerms(max_time_s=float(self._max_charge_time()))
            self._start(p, now, order, OFFLINE_CARD_START, card, terms)

    # ------------------------------------------------------------- internals

    def unix_time(self, now: float) -> int:
        """The device clock: 0 at power-on until the first time reply (reference 5.5)."""
        return max(0, int(now + self.clock_offset)) & 0xFFFFFFFF

    def _power_on(self, now: float) -> None:
        self.reboot_at = None
        if self.upgrade is not None:
            # The transfer lived in RAM; an F8-family device asks again with 0x05 (reference).
            self.upgrade, self.upgrade_interrupted = None, self.legacy
        self.time_synced = False
        self.clock_offset = -now
        self._time_at = math.inf

    def _device_limit_w(self) -> float | None:
        """The per-port overload power of 0x85 in watts (None if 0)."""
        limits = self.params[0x85]
        assert isinstance(limits, ChargeLimits)
        return limits.overload_power / 10.0 if limits.overload_power else None

    def _max_charge_time(self) -> int:
        """The device setting (0x85, default 10 h) for sessions without their own limit."""
        limits = self.params[0x85]
        assert isinstance(limits, ChargeLimits)
        return limits.max_charge_time

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _write(self, data: bytes) -> None:
        if self.connected:
            self._out.append(data)
            self._last_traffic = self._now

    def _send_frame(self, command: int, data: bytes, message_id: int | None = None) -> int:
        """Encode and queue one frame; returns the message ID used."""
        mid = self._next_id() if message_id is None else message_id
        if self.connected:
            self._write(encode_frame(self.physical_id, mid, command, data))
            self.stats.frames_sent += 1
        return mid

    def _reply(self, frame: Frame, data: bytes) -> None:
        self._send_frame(frame.command, data, frame.message_id)

    def _send_registration(self, now: float, *, resend: bool = False) -> None:
        registration = (
            Registration(self.firmware, self.port_count, 0, self.device_type)  # 5-byte form
            if self.legacy
            else Registration(self.firmware, self.port_count, 0, self.device_type, 0, 0)
        )
        self._registration_id = self._send_frame(
            0x20, encode_payload(registration), self._registration_id if resend else None
        )
        self._registration_at = now + self.timing.heartbeat_s

    def _send_heartbeat(self, now: float) -> None:
        if self._heartbeats:
            # Every interval without a reply is a missed heartbeat; two make the device offline.
            self._missed += 1
            self.online = self._missed < 2
            if len(self._heartbeats) > 4:
                self._heartbeats.pop(next(iter(self._heartbeats)))
        heartbeat: Heartbeat | LegacyHeartbeat
        if self.legacy:
            heartbeat = LegacyHeartbeat(
                firmware=self.firmware,
                voltage=round(self.rng.gauss(2200, 15)),
                port_statuses=tuple(p.status for p in self.ports),
                powers=tuple(_deci(p.session.power_w) if p.session else 0 for p in self.ports),
                peak_powers=tuple(
                    _deci(p.session.max_power_w) if p.session else 0 for p in self.ports
                ),
                virtual_id=0,
                signal=self.rng.randrange(15, 32),
                device_type=self.device_type,
                temperature=65 + round(self.rng.gauss(28, 2)),
                work_mode=0,
            )
        else:
            heartbeat = Heartbeat(
                voltage=round(self.rng.gauss(2200, 15)),
                port_statuses=tuple(p.status for p in self.ports),
                signal=self.rng.randrange(15, 32),
                temperature=65 + round(self.rng.gauss(28, 2)),
            )
        mid = self._send_frame(0x01 if self.legacy else 0x21, encode_payload(heartbeat))
        self._heartbeats[mid] = now
        self.stats.heartbeats_sent += 1
        self._heartbeat_at = now + self.timing.heartbeat_s

    def _send_time_request(self, now: float, *, resend: bool = False) -> None:
        self._time_id = self._send_frame(0x22, b"", self._time_id if resend else None)
        self._time_at = now + (
            self.timing.heartbeat_s if not self.time_synced else self.timing.time_refresh_s
        )

    def _send_confirmation(self, p: Port, now: float, *, resend: bool = False) -> None:
        """0x04 for the running session of `p` (legacy devices), until answered."""
        s = p.session
        if s is None:
            p.confirm_id, p.confirm_at = None, math.inf
            return
        confirmation = OrderConfirmation(
            p.index, s.start_mode, s.card_id, min(0xFFFF, int(s.elapsed_s)), s.order_no
        )
        p.confirm_id = self._send_frame(
            0x04, encode_payload(confirmation), p.confirm_id if resend else None
        )
        p.confirm_at = now + self.timing.heartbeat_s

    def _send_settlement(self, now: float) -> None:
        record = self.settlements[0]
        self._send_frame(0x03, encode_payload(record.payload), record.message_id)
        self.stats.settlements_sent += 1
        self._settlement_at = now + self.timing.settlement_retry_s

    # ----------------------------------------------------------------- ports

    def _ports_deadline(self) -> float:
        deadline = math.inf
        for p in self.ports:
            deadline = min(deadline, p.user_at)
            s = p.session
            if s is not None:
                deadline = min(deadline, p.report_at, s.started_at + s.planned_end_s())
                if s.energy_limit_wh is not None:
                    deadline = min(deadline, s.started_at + s.elapsed_s + SAMPLE_S)
        return deadline

    def _tick_ports(self, now: float) -> None:
        for p in self.ports:
            s = p.session
            while s is not None:
                s.advance(min(now, p.report_at), self.rng)
                if s.ended:
                    self._end_session(p, now)
                    break
                if p.report_at > now:
                    break
                self._send_power_report(p, s)
                p.report_at += self.timing.power_report_s

    def _send_power_report(self, p: Port, s: PortSession) -> None:
        period = s.period
        now = s.started_at + s.elapsed_s
        voltage = round(self.rng.gauss(2200, 15))
        report = PortPowerReport(
            port=p.index,
            status=FLOATING if s.floating else CHARGING,
            duration=int(s.elapsed_s),
            energy=s.energy_centi_kwh,
            start_mode=s.start_mode,
            power=_deci(s.power_w),
            max_power=_deci(period.max_w),
            min_power=_deci(period.min_w if period.seconds else 0.0),
            average_power=_deci(period.average_w),
            order_no=s.order_no,
            period_energy=min(0xFFFF, round(period.energy_ws / 3600.0 * 4.8)),
            peak_power=_deci(s.max_power_w),
            voltage=voltage,
            current=min(0xFFFF, round(s.power_w / (voltage / 10) * 1000)),
            ambient_temperature=65 + round(self.rng.gauss(26, 2)),
            port_temperature=65 + round(self.rng.gauss(32, 3)),
            timestamp=self.unix_time(now),
        )
        s.period = PeriodStats()
        self._send_frame(0x06, encode_payload(report))

    def _start(
        self,
        p: Port,
        now: float,
        order_no: bytes,
        start_mode: int,
        card_id: bytes,
        terms: ChargeTerms,
    ) -> None:
        curve = PowerCurve.random(self.rng, battery_full=p.battery_full)
        unplug_after = None
        if self.users is not None and self.rng.random() < self.users.early_unplug_share:
            unplug_after = self.rng.uniform(600.0, max(900.0, curve.full_at_s))
        p.session = PortSession(
            order_no=order_no,
            start_mode=start_mode,
            card_id=card_id,
            started_at=now,
            curve=curve,
            auto_stop=terms.auto_stop,
            time_limit_s=terms.time_limit_s,
            energy_limit_wh=terms.energy_limit_wh,
            max_time_s=terms.max_time_s,
            unplug_after_s=unplug_after,
            order_limit_w=terms.power_limit_w,
            device_limit_w=self._device_limit_w(),
        )
        # Legacy devices have no 0x06: they confirm the order with 0x04 (possibly before the
        # 0x82 reply, as the reference warns) and report power in the 0x01 heartbeat.
        p.report_at = math.inf if self.legacy else now + self.timing.power_report_s
        p.user_at, p.user_action = math.inf, ""
        self.stats.sessions_started += 1
        if self.legacy:
            self._send_confirmation(p, now)

    def _end_session(self, p: Port, now: float) -> None:
        """Power is cut: store the settlement (sent ~2 s later) and let the user react."""
        s = p.session
        assert s is not None and s.stop_reason is not None
        ended_at = s.started_at + s.elapsed_s
        p.session, p.report_at = None, math.inf
        p.confirm_id, p.confirm_at = None, math.inf
        settlement = Settlement(
            duration=int(s.elapsed_s),
            max_power=_deci(s.max_power_w),
            energy=s.energy_centi_kwh,
            port=p.index,
            start_mode=s.start_mode,
            card_id=s.card_id,
            stop_reason=s.stop_reason,
            order_no=s.order_no,
            second_max_power=None if self.legacy else _deci(s.second_max_power_w),
            timestamp=None if self.legacy else self.unix_time(ended_at),
        )
        if not self.settlements:
            self._settlement_at = ended_at + self.timing.settlement_first_s
        self.settlements.append(_Record(settlement, self._next_id()))
        self.stats.sessions_completed += 1
        if s.stop_reason == STOP_UNPLUGGED:
            p.plugged, p.battery_full = False, False
            self._schedule_port_user(p, now)
        else:
            p.battery_full = s.stop_reason == STOP_FULL
            if self.users is not None:
                p.user_at = now + self.rng.expovariate(1.0 / self.users.pickup_mean_s)
                p.user_action = "unplug"

    # ----------------------------------------------------------------- users

    def _schedule_users(self, now: float) -> None:
        for p in self.ports:
            self._schedule_port_user(p, now)

    def _schedule_port_user(self, p: Port, now: float) -> None:
        if self.users is not None and not p.plugged and p.user_at == math.inf:
            p.user_at = now + self.rng.expovariate(1.0 / self.users.plug_mean_s)
            p.user_action = "plug"

    def _tick_users(self, now: float) -> None:
        if self.users is None:
            return
        for p in self.ports:
            if p.user_at > now:
                continue
            action = p.user_action
            p.user_at, p.user_action = math.inf, ""
            if action == "plug":
                self.plug(p.index, now)
            elif action == "swipe":
                self.swipe_card(p.index, now)
            elif action == "unplug":
                self.unplug(p.index, now)

    # ------------------------------------------------------- server commands

    def _on_registration_reply(self, frame: Frame, payload: Payload, now: float) -> None:
        if frame.message_id == self._registration_id and not self.registered:
            self.registered = True
            self._registration_at = math.inf
            self.stats.registered += 1

    def _on_heartbeat_reply(self, frame: Frame, payload: Payload, now: float) -> None:
        sent_at = self._heartbeats.pop(frame.message_id, None)
        if sent_at is None:
            return
        self._heartbeats.clear()
        self._missed, self.online = 0, True
        self.stats.heartbeats_acked += 1
        self.stats.ack_latency(now - sent_at)

    def _on_time_reply(self, frame: Frame, payload: Payload, now: float) -> None:
        if isinstance(payload, TimeReply) and frame.message_id == self._time_id:
            self.clock_offset = payload.unix_time - now
            self.time_synced = True
            self._time_id = None
            self._time_at = now + self.timing.time_refresh_s

    def _on_settlement_reply(self, frame: Frame, payload: Payload, now: float) -> None:
        if not self.settlements or frame.message_id != self.settlements[0].message_id:
            return
        record = self.settlements.popleft()
        self.stats.settlements_acked += 1
        self.stats.energy_reported_wh += record.payload.energy * 10.0
        self._settlement_at = now + self.timing.settlement_next_s if self.settlements else math.inf

    def _on_card_reply(self, frame: Frame, payload: Payload, now: float) -> None:
        # Status 0: the user waits for the server's 0x82; any refusal: the user gives up soon.
        if (
            isinstance(payload, CardSwipeReply)
            and payload.account_status != 0
            and self.users is not None
            and payload.port < self.port_count
        ):
            p = self.ports[payload.port]
            if p.session is None and p.plugged:
                p.user_at, p.user_action = now + self.users.swipe_delay_s, "unplug"

    def _on_query(self, frame: Frame, payload: Payload, now: float) -> None:
        """0x81: the device re-sends its registration and heartbeat; no reply frame."""
        self._send_registration(now)
        self._send_heartbeat(now)

    def _on_charge_control(self, frame: Frame, payload: Payload, now: float) -> None:
        if not isinstance(payload, ChargeControl):
            return
        result, port = self._charge_control(payload, now)
        reply = ChargeControlReply(result, payload.order_no, port, 0)
        self._reply(frame, encode_payload(reply))

    def _charge_control(self, cmd: ChargeControl, now: float) -> tuple[int, int]:
        """Execute 0x82 and return (result A.13, port concerned)."""
        if cmd.port == AUTO_PORT:
            waiting = [p for p in self.ports if p.plugged and p.session is None]
            if cmd.command == 1 and not waiting:
                return NO_CHARGER, AUTO_PORT
            charging = [p for p in self.ports if p.session and p.session.order_no == cmd.order_no]
            candidates = waiting if cmd.command == 1 else charging
            if not candidates:
                return SAME_STATE, AUTO_PORT
            p = candidates[0]
        elif cmd.port >= self.port_count:
            return NO_SUCH_PORT, cmd.port
        else:
            p = self.ports[cmd.port]
        if cmd.command == 1:
            if p.session is not None:
                return SAME_STATE, p.index
            if not p.plugged:
                return NO_CHARGER, p.index
            terms = ChargeTerms.from_command(cmd, self._max_charge_time())
            self._start(p, now, cmd.order_no, ONLINE_START, bytes(4), terms)
            return OK, p.index
        if p.session is None or p.session.order_no != cmd.order_no:
            return SAME_STATE, p.index
        p.session.stop(now, STOP_BY_SERVER, self.rng)
        self._end_session(p, now)
        return OK, p.index

    def _on_adjust(self, frame: Frame, payload: Payload, now: float) -> None:
        if not isinstance(payload, AdjustCharging):
            return
        result = ADJUST_BAD_REQUEST
        if payload.mode <= 2 and payload.port < self.port_count:
            s = self.ports[payload.port].session
            result = ADJUST_NOT_CHARGING
            if s is not None:
                result = OK
                s.auto_stop = payload.mode != 0
                s.time_limit_s = float(payload.limit) if payload.mode < 2 else None
                s.energy_limit_wh = payload.limit * 10.0 if payload.mode == 2 else None
                if payload.mode < 2:
                    s.max_time_s = None
        self._reply(frame, encode_payload(ResultReply(result)))

    def _on_reboot(self, frame: Frame, payload: Payload, now: float) -> None:
        """0x87: answer, then the I/O layer drops the link and reconnects after `reboot_s`."""
        self._reply(frame, encode_payload(ResultReply(0)))
        self.reboot_at = now + self.timing.reboot_s

    def _on_locate(self, frame: Frame, payload: Payload, now: float) -> None:
        if isinstance(payload, Locate):
            self._reply(frame, encode_payload(ResultReply(0)))

    def _on_set_params(self, frame: Frame, payload: Payload, now: float) -> None:
        """0x83..0x86: keep the values (0x83's heartbeat interval and 0x85's max charge time take
        effect) and answer success."""
        if isinstance(payload, ChargeLimits) and payload.overload_power > MAX_OVERLOAD:
            self._reply(frame, encode_payload(ResultReply(1)))  # beyond the device limit
            return
        self.params[frame.command] = payload
        if isinstance(payload, ChargeLimits):
            # The new per-port limit bounds running sessions at once (ports were metered up to
            # `now` before this handler ran, so earlier energy keeps the earlier limit).
            for p in self.ports:
                if p.session is not None:
                    p.session.set_device_limit(self._device_limit_w())
        if isinstance(payload, RunningParams1) and payload.heartbeat_interval > 0:
            self.timing = replace(self.timing, heartbeat_s=float(payload.heartbeat_interval))
        self._reply(frame, encode_payload(ResultReply(0)))

    def _on_get_params(self, frame: Frame, payload: Payload, now: float) -> None:
        setter = next(k for k, v in SETTABLE.items() if v == frame.command)
        self._reply(frame, encode_payload(self.params[setter]))

    def _on_clear_memory(self, frame: Frame, payload: Payload, now: float) -> None:
        self._reply(frame, encode_payload(ResultReply(0)))

    def _on_order_confirmation_reply(self, frame: Frame, payload: Payload, now: float) -> None:
        if not isinstance(payload, OrderConfirmationReply) or payload.port >= self.port_count:
            return
        p = self.ports[payload.port]
        if p.confirm_id == frame.message_id:
            p.confirm_id, p.confirm_at = None, math.inf

    def _on_firmware_packet(self, frame: Frame, payload: Payload, now: float) -> None:
        """One upgrade packet: 0xE0 for current devices, 0xF8 for legacy ones (others are not
        this device's upgrade command and get no answer)."""
        if not isinstance(payload, FirmwarePacket):
            return
        if frame.command != (UPGRADE_BY_F8 if self.legacy else UPGRADE_BY_E0):
            return
        result, number = self._firmware_packet(frame.command, payload)
        self._reply(frame, encode_payload(UpgradeReply(result, number)))
        if result == UPGRADE_OK and number == payload.total_packets:
            self.stats.upgrades_completed += 1
            self.reboot_at = now + self.timing.reboot_s  # boot into the new firmware
        elif result not in (UPGRADE_OK, UPGRADE_PACKET_ERROR):
            self.stats.upgrades_failed += 1

    def _firmware_packet(self, command: int, packet: FirmwarePacket) -> tuple[int, int]:
        """Take one packet; return (result A.15, number of the last packet received well)."""
        number, total, data = packet.packet_number, packet.total_packets, packet.firmware
        checked = command == UPGRADE_BY_E0
        up = self.upgrade
        if number == 1 and (up is None or up.received != 1 or up.total != total):
            up = self.upgrade = _Upgrade(command, total)  # (re)start
        if up is None or up.total != total:
            return UPGRADE_PACKET_ERROR, 0
        if number == up.received:
            return UPGRADE_OK, number  # a resend: our answer was lost
        if number != up.received + 1 or number > total or (checked and total < 2):
            return UPGRADE_PACKET_ERROR, up.received
        if checked and number == total:
            self.upgrade = None
            if not CheckPacket.is_check_packet(data):
                return UPGRADE_NO_CHECK, up.received
            check = CheckPacket.decode(data)
            if check.firmware_sum != up.byte_sum & 0xFFFFFFFF:
                return UPGRADE_SUM_ERROR, up.received
            if check.device_type != self.device_type:
                return UPGRADE_WRONG_TYPE, up.received
            self.firmware = check.firmware
            return UPGRADE_OK, number
        last_slice = number == (total - 1 if checked else total)
        size = PACKET_SIZES[command]
        if not (0 < len(data) <= size) or (len(data) < size and not last_slice):
            return UPGRADE_PACKET_ERROR, up.received
        up.received, up.byte_sum, up.size = number, up.byte_sum + sum(data), up.size + len(data)
        if not checked and number == total:
            # 0xF8 images carry no version: the simulator counts the upgrade as one step.
            self.upgrade = None
            self.firmware += 1
        return UPGRADE_OK, number


@dataclass(frozen=True, slots=True)
class ChargeTerms:
    """How a session ends, from the 0x82 start (or an offline card start)."""

    auto_stop: bool = True
    time_limit_s: float | None = None
    energy_limit_wh: float | None = None
    max_time_s: float | None = 36000.0
    power_limit_w: float | None = None

    @classmethod
    def from_command(cls, cmd: ChargeControl, device_max_s: int) -> ChargeTerms:
        """0x82 semantics: value 0 = until full; time mode = seconds, no auto-stop unless
        forced, not limited by the max charge time; energy mode = 0.01 kWh, no auto-stop,
        limited by the max charge time; monthly/count modes always stop when full."""
        max_s = float(cmd.max_charge_time or device_max_s)
        limit = cmd.overload_power / 10.0 if cmd.overload_power else None  # 0.1 W; 0 = device's
        if cmd.duration == 0 or cmd.rate_mode in (1, 3):
            return cls(True, None, None, max_s, limit)
        if cmd.rate_mode == 0:
            return cls(bool(cmd.force_auto_stop), float(cmd.duration), None, None, limit)
        return cls(False, None, cmd.duration * 10.0, max_s, limit)


def offline_order_no(unix_time: int, card_id: bytes, physical_id: int, port: int) -> bytes:
    """The order number a device composes for an offline card start (reference 0x03): BCD
    `YYYYMMDDhhmmss` (7) + card ID (4) + BCD device number (4) + BCD port + 30 (1)."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(unix_time))
    digits = f"{stamp}{device_number(physical_id) % 100_000_000:08d}{(port + 30) % 100:02d}"
    bcd = bytes.fromhex(digits)
    return bcd[:7] + card_id + bcd[7:]


def _deci(watts: float) -> int:
    """Watts -> the wire unit 0.1 W, clamped to u16."""
    return max(0, min(0xFFFF, round(watts * 10)))


_HANDLERS = {
    0x20: SimulatedDevice._on_registration_reply,
    0x21: SimulatedDevice._on_heartbeat_reply,
    0x01: SimulatedDevice._on_heartbeat_reply,
    0x04: SimulatedDevice._on_order_confirmation_reply,
    0xE0: SimulatedDevice._on_firmware_packet,
    0xF8: SimulatedDevice._on_firmware_packet,
    0x22: SimulatedDevice._on_time_reply,
    0x03: SimulatedDevice._on_settlement_reply,
    0x02: SimulatedDevice._on_card_reply,
    0x81: SimulatedDevice._on_query,
    0x82: SimulatedDevice._on_charge_control,
    0x8A: SimulatedDevice._on_adjust,
    0x87: SimulatedDevice._on_reboot,
    0x96: SimulatedDevice._on_locate,
    0x88: SimulatedDevice._on_clear_memory,
    **dict.fromkeys(SETTABLE, SimulatedDevice._on_set_params),
    **dict.fromkeys(SETTABLE.values(), SimulatedDevice._on_get_params),
}
