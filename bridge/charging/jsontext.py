"""Compact JSON text of flat values, byte for byte what `json.dumps(..., separators=(",", ":"))`
writes, without building a dict and an encoder per call.

The service serialises a session's head and each new history entry on every update (docs/
performance.md, branch p-svc); these are flat: strings, numbers, booleans, None. `value`
writes one such value exactly as the json module does (ASCII escapes, `repr` of floats,
`NaN`/`Infinity`), and hands anything else to `json.dumps` itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

_encode_str: Callable[[str], str] = encode_basestring_ascii


def _float(v: float) -> str:
    if math.isfinite(v):
        return float.__repr__(v)
    return json.dumps(v)  # NaN, Infinity, -Infinity, as the json module writes them


def _other(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: _encode_str,
    float: _float,
    int: int.__repr__,
    bool: lambda v: "true" if v else "false",
    type(None): lambda v: "null",
}


def value(v: Any) -> str:
    """One value as `json.dumps` writes it (compact)."""
    return _BY_TYPE.get(type(v), _other)(v)


# `number`'s texts of recent floats: a 0x06 report's figures are written twice per event (its
# history entry, then the session's head) and repeat across reports and sessions (230.0 W,
# 221.2 V): a dict lookup is about a third of `float.__repr__`. Bounded: cleared when full.
_FLOATS: dict[float, str] = {}
_MAX_FLOATS = 4096


def number(v: Any) -> str:
    """`value` for what is usually a float (a measurement), faster: finite non-zero floats'
    texts are remembered. Zeros are not (0.0 and -0.0 are equal keys with different texts),
    nor NaN and the infinities (`value` writes them as `json.dumps` does)."""
    if type(v) is float:
        text = _FLOATS.get(v)
        if text is not None:
            return text
        if v and math.isfinite(v):
            if len(_FLOATS) >= _MAX_FLOATS:
                _FLOATS.clear()
            text = _FLOATS[v] = float.__repr__(v)
            return text
    return value(v)


def string(v: Any) -> str:
    """`value` for what is usually a str (an id, a status), faster."""
    return _encode_str(v) if type(v) is str else value(v)


def key(name: str) -> str:
    """`"name":` for a key, as `json.dumps` writes it."""
    return f"{_encode_str(name)}:"
