"""What every MQTT payload shares: the base model, identifiers and units (API.md section 2),
the request size limit, and `describe`, which turns a validation error into one readable line.

Identifiers are defined here once, for the gateway and the charging service alike:
`device_id` is 8 upper-case hex digits (requests with lower case are refused, because the id
names a topic); `order_no` is 32 hex digits, accepted in either case and normalised to upper
case; `session_id` equals the published `order_no` and names a topic, so it must be upper case.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

DEVICE_ID_RE = re.compile(r"^[0-9A-F]{8}$")
ORDER_NO_RE = re.compile(r"^[0-9A-F]{32}$")  # the published (canonical) form
_ORDER_NO_INPUT = r"^[0-9A-Fa-f]{32}$"


# Whole Unix second -> `2026-01-02T03:04:05.`: the gateway formats mostly the current second,
# the charging service a few recent ones (an entry's time, a session's start). Bounded.
_SECONDS: dict[int, str] = {}
_MAX_SECONDS = 4096


def _whole_second(second: int) -> str:
    """`2026-01-02T03:04:05.` for a whole Unix second, each formatted once."""
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= _MAX_SECONDS:
            _SECONDS.clear()
        text = _SECONDS[second] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
    return text


def iso_utc(t: float | datetime | None = None) -> str:
    """Unix seconds (or an aware datetime, or now) -> `2026-01-02T03:04:05.678Z`.

    Every event carries `ts = iso_utc()`, and every device state two given times: formatting
    a datetime was 5% of the gateway's CPU at 1,000 frames/s, so the whole second is
    formatted once and the milliseconds added. Unix seconds are split as `datetime` splits
    them (microseconds rounded half to even, then truncated to milliseconds), so the text is
    the one `datetime.fromtimestamp(t, UTC)` gives."""
    if t is None:
        now = time.time()
        second = int(now)
        return f"{_whole_second(second)}{int((now - second) * 1000):03d}Z"
    if isinstance(t, datetime):
        dt = t.astimezone(UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    fraction, whole = math.modf(t)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    return f"{_whole_second(int(whole))}{micros // 1000:03d}Z"


class MqttPayload(BaseModel):
    """Base of every payload chargebridge publishes: compact JSON, keys exactly as declared."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# --------------------------------------------------------------------------- identifiers

DeviceId = Annotated[
    StrictStr, Field(pattern=DEVICE_ID_RE.pattern, description="8 upper-case hex digits")
]
OrderNo = Annotated[
    str,
    Field(pattern=_ORDER_NO_INPUT, description="32 hex digits"),
    AfterValidator(str.upper),
]
SessionId = Annotated[
    str, Field(pattern=ORDER_NO_RE.pattern, description="the session's order_no, upper case")
]
PortNumber = Annotated[StrictInt, Field(ge=1, le=254, description="1-based port")]


def _port_or_auto(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "port_or_auto", 'must be an integer from 1 to 254 or "auto"'
        ) from None


PortOrAuto = Annotated[PortNumber | Literal["auto"], WrapValidator(_port_or_auto)]
"""A port in a start request: 1..254, or "auto" (the device chooses; wire value 0xFF)."""

U16Seconds = Annotated[int, Field(ge=0, le=0xFFFF)]
U16Raw = Annotated[int, Field(ge=0, le=0xFFFF)]


# Requests are small JSON objects (the largest, a `raw` frame of 1024 data bytes in hex, is
# about 2 KB); anything bigger is refused unread, so a client cannot make us parse megabytes.
MAX_REQUEST_BYTES = 16384


def oversized(payload: bytes) -> str | None:
    """Why a request payload is refused for its size, or None."""
    if len(payload) <= MAX_REQUEST_BYTES:
        return None
    return f"payload of {len(payload)} bytes; requests are limited to {MAX_REQUEST_BYTES} bytes"


# --------------------------------------------------------------------------- describe

_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "none", "bytes", "list", "dict"})
_PATTERNS = {
    DEVICE_ID_RE.pattern: "8 upper-case hex digits",
    ORDER_NO_RE.pattern: "32 upper-case hex digits",
    _ORDER_NO_INPUT: "32 hex digits",
}
_PHRASES: dict[str, Callable[[dict[str, Any]], str]] = {
    "int_type": lambda _: "an integer",
    "int_parsing": lambda _: "an integer",
    "int_from_float": lambda _: "an integer",
    "float_type": lambda _: "a number",
    "float_parsing": lambda _: "a number",
    "string_type": lambda _: "a string",
    "bool_type": lambda _: "true or false",
    "bool_parsing": lambda _: "true or false",
    "none_required": lambda _: "null",
    "literal_error": lambda ctx: str(ctx["expected"]).replace("'", '"'),
    "greater_than_equal": lambda ctx: f"at least {ctx['ge']}",
    "less_than_equal": lambda ctx: f"at most {ctx['le']}",
    "greater_than": lambda ctx: f"more than {ctx['gt']}",
    "less_than": lambda ctx: f"less than {ctx['lt']}",
    "string_pattern_mismatch": lambda ctx: _PATTERNS.get(
        str(ctx["pattern"]), f"text matching {ctx['pattern']}"
    ),
}
_PREFIXES = ("Value error, ", "Assertion failed, ")


def _is_union_tag(part: str | int) -> bool:
    """pydantic appends the failing member of a union to `loc` (`constrained-int`, `str`,
    `literal['auto']`); field names are identifiers and never one of the bare type names."""
    return isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS)


def _phrase(error: Any) -> str | None:
    make = _PHRASES.get(error["type"])
    return make(error.get("ctx") or {}) if make else None


def _message(error: Any) -> str:
    if error["type"] == "missing":
        return "required"
    phrase = _phrase(error)
    if phrase is not None:
        return f"must be {phrase}"
    msg = str(error["msg"])
    for prefix in _PREFIXES:
        msg = msg.removeprefix(prefix)
    return msg


def describe(exc: ValidationError) -> str:
    """One readable line naming every bad field, e.g. `port: must be an integer from 1 to 254
    or "auto"; order_no: must be 32 hex digits`. The alternatives of a union are joined with
    `or` instead of listed as separate errors."""
    fields: dict[str, list[Any]] = {}
    for error in exc.errors():
        path = [p for p in error["loc"] if not _is_union_tag(p)]
        where = ".".join(str(p) for p in path) or "request"
        fields.setdefault(where, []).append(error)
    parts = []
    for where, errors in fields.items():
        union = len(errors) > 1 and all(e["loc"] and _is_union_tag(e["loc"][-1]) for e in errors)
        phrases = [_phrase(e) for e in errors]
        if union and all(phrases):
            unique = list(dict.fromkeys(p for p in phrases if p))
            parts.append(f"{where}: must be {' or '.join(unique)}")
        else:
            parts.extend(f"{where}: {_message(e)}" for e in errors)
    return "; ".join(parts)
