"""The demo's live view. It is an ordinary MQTT subscriber: it shows exactly what an operator
would see with `mosquitto_sub`, built only from retained state and stats topics: the presence
and counters of every gateway (`{b}/gateways/+/state|stats`, summed over all of them), the
charging service's presence, sessions, devices and ports.

`LiveState` is pure (messages in, snapshot out) so it is tested without a terminal; the
renderers draw it with rich on a terminal, or as one plain line per period otherwise.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from bridge.mqtt.topics import Topics

ACTIVE = ("starting", "charging", "stopping")
MAX_SESSIONS_SHOWN = 16
MAX_ACTIVE_SHOWN = 10  # the rest of the table shows the latest finished sessions


@dataclass
class LiveState:
    topics: Topics
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    ports: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    charging_stats: dict[str, Any] = field(default_factory=dict)
    gateway_states: dict[str, str] = field(default_factory=dict)  # gateway id -> state
    gateway_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    charging_state: str = "unknown"

    def apply(self, topic: str, payload: bytes) -> None:
        """Fold one MQTT message in; an empty payload clears retained state."""
        data: dict[str, Any] = {}
        if payload:
            try:
                loaded = json.loads(payload)
            except ValueError:
                return
            if not isinstance(loaded, dict):
                return
            data = loaded
        t = self.topics
        if (gateway := t.parse_gateway_topic(topic)) is not None:
            gateway_id, kind = gateway
            if kind == "state" and data:
                self.gateway_states[gateway_id] = str(data.get("state", "unknown"))
            elif kind == "state":
                self.gateway_states.pop(gateway_id, None)
            elif data:
                self.gateway_stats[gateway_id] = data
            else:
                self.gateway_stats.pop(gateway_id, None)
        elif topic == t.charging_state:
            self.charging_state = str(data.get("state", "unknown")) if data else "unknown"
        elif topic == t.charging_stats:
            self.charging_stats = data
        elif (session_id := t.parse_session(topic)) is not None:
            if data:
                self.sessions[session_id] = data
            else:
                self.sessions.pop(session_id, None)
        elif (parsed := t.parse_device_topic(topic)) is not None:
            device_id, rest = parsed
            if rest == "":
                self.devices[device_id] = data
            elif rest.startswith("ports/") and rest[6:].isdigit():
                key = (device_id, int(rest[6:]))
                if data:
                    self.ports[key] = data
                else:
                    self.ports.pop(key, None)

    @property
    def subscriptions(self) -> list[str]:
        t = self.topics
        return [
            t.all_gateway_states,
            t.all_gateway_stats,
            t.charging_state,
            t.charging_stats,
            t.all_sessions,
            t.all_devices,
            t.all_ports,
        ]

    def active_sessions(self) -> list[dict[str, Any]]:
        return [s for s in self.sessions.values() if s.get("status") in ACTIVE]

    def completed_sessions(self) -> list[dict[str, Any]]:
        return [s for s in self.sessions.values() if s.get("status") == "completed"]

    def gateway_total(self, counter: str) -> int:
        """One counter summed over every gateway's stats."""
        return sum(int(s.get(counter) or 0) for s in self.gateway_stats.values())

    @property
    def gateways_line(self) -> str:
        """`gateway online` for one gateway (the usual `run`), else `gateways 2/3 online`."""
        states = self.gateway_states
        if len(states) == 1:
            return f"gateway {next(iter(states.values()))}"
        online = sum(1 for v in states.values() if v == "online")
        return f"gateways {online}/{len(states)} online"

    def summary_line(self) -> str:
        """Counts from the retained sessions themselves, so they are never stale."""
        online = sum(1 for d in self.devices.values() if d.get("online"))
        completed = self.completed_sessions()
        energy = sum(float(s.get("energy_kwh") or 0.0) for s in completed)
        power = sum(float(s.get("power_w") or 0.0) for s in self.active_sessions())
        return (
            f"{time.strftime('%H:%M:%S')} {self.gateways_line} | "
            f"service {self.charging_state} | "
            f"chargers {online}/{len(self.devices)} online | "
            f"sessions {len(self.active_sessions())} active, {len(completed)} completed | "
            f"{power:.0f} W now, {energy:.3f} kWh delivered | "
            f"frames in {self.gateway_total('frames_in')}"
        )


STATUS_STYLE = {
    "starting": "yellow",
    "charging": "green",
    "stopping": "yellow",
    "completed": "cyan",
    "failed": "red",
    "timeout": "red",
}


def _port_glyph(port: dict[str, Any]) -> Text:
    status = str(port.get("status", "?"))
    if status == "charging":
        return Text("●", style="green")
    if status == "idle":
        return Text("○", style="dim")
    if "fault" in status or "damaged" in status or "stuck" in status:
        return Text("✖", style="red")
    return Text("◐", style="yellow")


def render(state: LiveState) -> Group:
    devices = Table(title="Chargers", expand=True, title_justify="left")
    for col in ("device", "kind", "online", "signal", "ports"):
        devices.add_column(col)
    for device_id in sorted(state.devices):
        d = state.devices[device_id]
        glyphs = Text()
        for (dev, _port), p in sorted(state.ports.items()):
            if dev == device_id:
                glyphs.append_text(_port_glyph(p))
        devices.add_row(
            device_id,
            str(d.get("device_kind", "")),
            Text("yes", style="green") if d.get("online") else Text("no", style="red"),
            str(d.get("signal", "")),
            glyphs,
        )

    sessions = Table(title="Charging sessions", expand=True, title_justify="left")
    for col in ("session", "device", "port", "status", "power W", "energy kWh", "charged s"):
        sessions.add_column(col)

    def newest_first(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(sessions, key=lambda s: str(s.get("last_update", "")), reverse=True)

    active = newest_first(state.active_sessions())[:MAX_ACTIVE_SHOWN]
    finished = newest_first([s for s in state.sessions.values() if s.get("status") not in ACTIVE])
    shown = active + finished[: MAX_SESSIONS_SHOWN - len(active)]
    for s in shown:
        status = str(s.get("status", ""))
        sessions.add_row(
            str(s.get("session_id", ""))[:12] + "…",
            str(s.get("device_id", "")),
            str(s.get("port", "")),
            Text(status, style=STATUS_STYLE.get(status, "")),
            f"{float(s.get('power_w') or 0):.1f}",
            f"{float(s.get('energy_kwh') or 0):.3f}",
            str(s.get("duration_s", "")),
        )

    cs, total = state.charging_stats, state.gateway_total
    stats = Table.grid(padding=(0, 2))
    stats.add_row(
        f"sessions created {cs.get('sessions_created', 0)}",
        f"completed {cs.get('sessions_completed', 0)}",
        f"active {cs.get('active_sessions', 0)}",
        f"energy {float(cs.get('total_energy_delivered_kwh', 0) or 0):.3f} kWh",
        f"avg processing {float(cs.get('average_processing_time_ms', 0) or 0):.2f} ms",
    )
    stats.add_row(
        f"connections {total('connections')}",
        f"frames in {total('frames_in')}",
        f"frames out {total('frames_out')}",
        f"commands {total('commands_sent')}",
        f"decode errors {total('decode_errors')}",
    )
    return Group(Text(state.summary_line(), style="bold"), devices, sessions, stats)
