"""Bounded memories for protocol resends (reference 4.5 and 0x03).

A device resends a frame with the same message id when our reply got lost; we must answer
again (with the same reply) but not publish it twice. Settlements are also resent much later
with new message ids, so they are deduplicated on content as well.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedTtlMap(Generic[K, V]):
    """An LRU map with at most `max_items` entries, each forgotten after `ttl_s` seconds."""

    def __init__(self, max_items: int, ttl_s: float) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._items[key]
            return None
        return entry[1]

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not None

    def put(self, key: K, value: V) -> None:
        self._items[key] = (time.monotonic() + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def add(self, key: K, value: V) -> V | None:
        """The live value of `key`; when it has none, `value` is stored (as `put`) and None
        returned. One lookup where `in` then `put` take two (once per device frame)."""
        now = time.monotonic()
        entry = self._items.get(key)
        if entry is not None and entry[0] >= now:
            return entry[1]
        self._items[key] = (now + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return None

    def update(self, key: K, value: V) -> None:
        """Replace the value of a remembered key without extending its life."""
        entry = self._items.get(key)
        if entry is not None:
            self._items[key] = (entry[0], value)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)
