"""The in-memory charging service of the fast unit tests (test_units, test_field): a fake
clock and MQTT client around a real SQLite store in the test's temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.charging.service import ChargingService
from bridge.charging.settings import ChargingSettings
from bridge.charging.store import SqliteStore
from tests.bridge.charging.harness import BASE
from tests.bridge.charging.test_units import Clock, FakeClient


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(tmp_path: Path, clock: Clock) -> Iterator[Any]:
    stores: list[SqliteStore] = []

    def build(**settings: Any) -> tuple[ChargingService, FakeClient]:
        store = SqliteStore.in_dir(tmp_path)
        stores.append(store)
        values: dict[str, Any] = {
            "base_topic": BASE,
            "state_dir": tmp_path,
            "event_logging": False,
            "retry_backoff_s": 0.0,
            "request_timeout_s": 5.0,
            **settings,
        }
        client = FakeClient()
        return ChargingService(ChargingSettings(**values), store, client, clock=clock), client

    yield build
    for store in stores:
        store.close()
