"""The power report's fast path (`gateway_events._power_fast`) against the validating path it
stands in for: for payloads of every shape, the same event, or the same error."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.charging import gateway_events
from bridge.charging.gateway_events import IncomingEvent, parse_event
from bridge.charging.messages import RequestError
from tests.bridge.charging.harness import DEV, power_event

NOW = 1_790_000_000.0


def slow(payload: bytes, monkeypatch: pytest.MonkeyPatch) -> IncomingEvent | str:
    with monkeypatch.context() as patch:
        patch.setattr(gateway_events, "_POWER_CHECKS", None)  # the fast path off
        return outcome(payload)


def outcome(payload: bytes) -> IncomingEvent | str:
    try:
        return parse_event(DEV, payload, NOW)
    except RequestError as exc:
        return f"RequestError: {exc}"


def test_the_fast_path_reads_the_gateways_power_report() -> None:
    """It is on (the payload model has no field of a kind it does not check), and it is the
    path a well-formed report takes."""
    assert gateway_events._POWER_CHECKS is not None
    payload = json.dumps(power_event(0.25, 180.0)).encode()
    fast = gateway_events._power_fast(DEV, payload, NOW)
    assert fast is not None and fast == parse_event(DEV, payload, NOW)
    assert fast.event is not None and fast.event.kind == "power"


# Values of every JSON type and the edges the validating path cares about.
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 254, 255, -1, 0.0, 1.5, math.nan, math.inf]),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdef",
            "0123456789ABCDEF0123456789ABCDEF\n",
            "power",
            "settled",
            "not-a-time",
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = list(power_event(0.1))


@settings(max_examples=400)
@given(
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=4),
    st.lists(st.sampled_from(FIELDS), max_size=2),
    st.dictionaries(st.text(max_size=5), values, max_size=2),
)
def test_every_payload_reads_as_the_validating_path_reads_it(
    changes: dict[str, Any],
    removed: list[str],
    extra: dict[str, Any],
) -> None:
    body: dict[str, Any] = {**extra, **power_event(0.1), **changes}
    for name in removed:
        body.pop(name, None)
    payload = json.dumps(body).encode()
    with pytest.MonkeyPatch.context() as patch:
        assert repr(outcome(payload)) == repr(slow(payload, patch))  # NaN != NaN


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps(power_event(0.1)).replace('"charging"', '"\\ud800"').encode(),  # lone surrogate
        json.dumps(power_event(0.1)).encode("utf-16"),
        b"\xef\xbb\xbf" + json.dumps(power_event(0.1)).encode(),  # a BOM
        json.dumps(power_event(0.1)).encode()[:-1] + b', "port": 3}',  # a key twice
        json.dumps(power_event(0.1)).replace("180.0", "1e400").encode(),
        json.dumps(power_event(0.1)).replace("180.0", "NaN").encode(),
        json.dumps(power_event(0.1, 180)).encode(),  # ints for the floats
        json.dumps({**power_event(0.1), "duration_s": 300.0}).encode(),
        json.dumps({**power_event(0.1), "port": True}).encode(),
        json.dumps({**power_event(0.1), "command": None, "message_id": None}).encode(),
        json.dumps([power_event(0.1)]).encode(),
        b'{"type": "power"}',
        b'"power"',
        b"\xff\xfe power",
    ],
)
def test_unusual_payloads_read_as_before(payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert repr(outcome(payload)) == repr(slow(payload, monkeypatch))
