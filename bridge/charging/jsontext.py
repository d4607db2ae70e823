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


def key(name: str) -> str:
    """`"name":` for a key, as `json.dumps` writes it."""
    return f"{_encode_str(name)}:"
