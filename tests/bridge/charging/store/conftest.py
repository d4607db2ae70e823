"""One private PostgreSQL cluster per test session (tests/postgres.py); a fresh database per
test; `open_any` opens (and reopens) either store for tests that hold for both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.charging.store import ChargingStore, DedupeLimits, open_store
from tests.postgres import PostgresCluster

Opener = Callable[..., ChargingStore]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    return pg_cluster.fresh_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """open_any(limits=None) -> a store on the same file/database each time it is called."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store' / 'charging.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened: list[ChargingStore] = []

    def opener(limits: DedupeLimits | None = None) -> ChargingStore:
        store = open_store(url, tmp_path / "state", limits)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()
