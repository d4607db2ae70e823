"""The live view's state is built only from MQTT messages; check that fold."""

from __future__ import annotations

import json

from rich.console import Console

from bridge.demo.view import LiveState, render
from bridge.mqtt.topics import Topics


def msg(state: LiveState, topic: str, payload: dict[str, object] | None) -> None:
    state.apply(topic, json.dumps(payload).encode() if payload is not None else b"")


def test_state_follows_retained_topics_and_clears_on_empty_payload() -> None:
    t = Topics("cb")
    s = LiveState(t)
    msg(s, t.device("04AB373B"), {"device_id": "04AB373B", "online": True, "device_kind": "x"})
    msg(s, t.port("04AB373B", 1), {"port": 1, "status": "charging", "power_w": 200.0})
    msg(s, t.session("AA" * 16), {"session_id": "AA" * 16, "status": "charging", "power_w": 210})
    msg(
        s, t.session("BB" * 16), {"session_id": "BB" * 16, "status": "completed", "energy_kwh": 0.5}
    )
    msg(s, t.charging_stats, {"sessions_completed": 1, "total_energy_delivered_kwh": 0.5})
    assert [x["session_id"] for x in s.active_sessions()] == ["AA" * 16]
    assert "chargers 1/1 online" in s.summary_line()
    assert "1 active, 1 completed" in s.summary_line()
    assert "210 W now, 0.500 kWh" in s.summary_line()
    s.apply(t.session("BB" * 16), b"")
    s.apply(t.port("04AB373B", 1), b"")
    assert "BB" * 16 not in s.sessions and not s.ports
    s.apply(t.device("04AB373B"), b"not json")  # ignored, not a crash
    assert s.devices["04AB373B"]["online"] is True


def test_gateways_and_the_service_come_from_their_presence_topics() -> None:
    t = Topics("cb")
    s = LiveState(t)
    assert {t.all_gateway_states, t.all_gateway_stats, t.charging_state} <= set(s.subscriptions)
    msg(s, t.gateway_state("gw-a"), {"state": "online", "gateway_id": "gw-a"})
    msg(s, t.gateway_stats("gw-a"), {"frames_in": 5, "connections": 1})
    assert "gateway online |" in s.summary_line() and "frames in 5" in s.summary_line()
    msg(s, t.gateway_state("gw-b"), {"state": "offline", "gateway_id": "gw-b"})
    msg(s, t.gateway_stats("gw-b"), {"frames_in": 7, "connections": 2})
    msg(s, t.charging_state, {"state": "online", "instances": ["svc"]})
    line = s.summary_line()
    assert "gateways 1/2 online" in line and "service online" in line
    assert "frames in 12" in line and s.gateway_total("connections") == 3
    s.apply(t.gateway_state("gw-b"), b"")  # a cleared presence: the gateway is gone
    s.apply(t.gateway_stats("gw-b"), b"")
    assert "gateway online |" in s.summary_line() and "frames in 5" in s.summary_line()


def test_a_bad_message_is_ignored() -> None:
    t = Topics("cb")
    s = LiveState(t)
    msg(s, t.device("04AB373B"), {"device_id": "04AB373B", "online": True})
    s.apply(t.device("04AB373B"), b"not json")  # ignored, not a crash
    assert s.devices["04AB373B"]["online"] is True


def test_render_shows_devices_and_sessions() -> None:
    t = Topics()
    s = LiveState(t)
    msg(s, t.device("04AB373B"), {"online": True, "device_kind": "dual_socket", "signal": 9})
    msg(s, t.port("04AB373B", 2), {"status": "charging"})
    msg(
        s,
        t.session("CC" * 16),
        {
            "session_id": "CC" * 16,
            "device_id": "04AB373B",
            "port": 2,
            "status": "charging",
            "power_w": 321.5,
            "energy_kwh": 0.012,
            "duration_s": 60,
        },
    )
    for i in range(20):  # more active sessions than the table has room for
        sid = f"{i:032X}"
        msg(s, t.session(sid), {"session_id": sid, "status": "charging", "last_update": "1"})
    msg(
        s,
        t.session("DD" * 16),
        {"session_id": "DD" * 16, "status": "completed", "energy_kwh": 0.777, "last_update": "0"},
    )
    console = Console(width=140, record=True)
    console.print(render(s))
    text = console.export_text()
    assert "04AB373B" in text and "dual_socket" in text
    assert "charging" in text
    assert "completed" in text and "0.777" in text  # finished sessions keep a place
