"""The channel table in bridge.contract: complete, built through Topics, true to API.md."""

from __future__ import annotations

import inspect

from pydantic import BaseModel

import bridge.mqtt.payloads as payloads
from bridge import contract
from bridge.mqtt.topics import Topics

# Bases and parts of payloads, not payloads of a topic of their own.
NOT_A_TOPIC = {
    "MqttPayload",
    "EventBase",
    "HeartbeatPort",
    "ExtensionVersion",
    "CommandRequest",
    "ChargingRequest",
    "ChargingTarget",
    "StartFields",
}


def test_every_payload_model_has_a_topic() -> None:
    models = {
        name
        for name, obj in vars(payloads).items()
        if inspect.isclass(obj) and issubclass(obj, BaseModel)
    }
    listed = {model.__name__ for model in contract.all_models()}
    assert models - NOT_A_TOPIC - {"Payload"} <= listed
    assert {"CaptureRequest", "CaptureFrame"} <= listed


def test_topics_are_those_clients_use() -> None:
    """Substituting the parameters gives the topics the running code publishes and parses."""
    real = Topics("cb")
    topics = {c.topic for c in contract.CHANNELS}
    fill = {
        "{base}": "cb",
        "{device_id}": "04AB373B",
        "{port}": "2",
        "{session_id}": "S",
        "{command}": "reboot",
        "{action}": "stop",
        "{capture_id}": "c1",
        "{gateway_id}": "gw-1",
        "{instance_id}": "node-a",
    }

    def filled(topic: str) -> str:
        for key, value in fill.items():
            topic = topic.replace(key, value)
        return topic

    expected = {
        real.gateway_state("gw-1"),
        real.gateway_stats("gw-1"),
        real.charging_state,
        real.charging_instance("node-a"),
        real.device("04AB373B"),
        real.port("04AB373B", 2),
        real.event("04AB373B", "order"),
        real.device_request("04AB373B", "card_reply"),
        real.device_response("04AB373B", "reboot"),
        real.session("S"),
        real.charging_stats,
        real.charging_request("query"),
        real.charging_response("stop"),
        real.capture_stream("c1"),
    }
    assert expected <= {filled(t) for t in topics}
    assert real.parse_device_request(filled("{base}/devices/{device_id}/request/raw")) is not None
    assert real.parse_gateway_topic(filled("{base}/gateways/{gateway_id}/stats")) == (
        "gw-1",
        "stats",
    )
    assert (
        real.parse_charging_instance(filled("{base}/charging/instances/{instance_id}")) == "node-a"
    )
    assert not any("/bridge/state" in t or "/bridge/stats" in t for t in topics)


def test_direction_and_retain_follow_api_md_section_3() -> None:
    by_topic = {c.topic: c for c in contract.CHANNELS}
    retained = {t for t, c in by_topic.items() if c.retained}
    assert retained == {
        "{base}/gateways/{gateway_id}/state",
        "{base}/gateways/{gateway_id}/stats",
        "{base}/devices/{device_id}",
        "{base}/devices/{device_id}/ports/{port}",
        "{base}/sessions/{session_id}",
        "{base}/charging/stats",
        "{base}/charging/state",
        "{base}/charging/instances/{instance_id}",
    }
    requests = {t for t, c in by_topic.items() if c.direction == "in"}
    assert len(requests) == len(payloads.DEVICE_COMMAND_REQUESTS) + 3 + 1  # + charging, capture
    assert all("/request/" in t for t in requests)


def test_the_gateway_reference_lists_only_gateway_topics() -> None:
    text = contract.gateway_reference()
    assert "Topic `{b}/devices/{device_id}/event/order`." in text
    assert "#### Port event `power`" in text
    assert "sessions" not in text and "capture" not in text
