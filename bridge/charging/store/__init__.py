"""The charging service's durable state: `SqliteStore` (embedded default, one file under
`--state-dir`) or `PostgresStore` (`--store postgresql://...`), behind the `ChargingStore`
protocol (base.py); `open_store` picks one from the `--store` URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from bridge.charging.store.base import (
    ChargingStore,
    Conflict,
    DedupeLimits,
    SessionRow,
    SharedStore,
    StoreError,
)
from bridge.charging.store.sqlite import SqliteStore

__all__ = [
    "ChargingStore",
    "Conflict",
    "DedupeLimits",
    "SessionRow",
    "SharedStore",
    "SqliteStore",
    "StoreError",
    "open_store",
    "shared_url",
]


def shared_url(url: str) -> bool:
    """Whether `--store` names a store several service instances can share (PostgreSQL)."""
    return url.split(":", 1)[0].lower() in ("postgresql", "postgres")


def open_store(url: str, state_dir: Path, limits: DedupeLimits | None = None) -> ChargingStore:
    """`""` or `sqlite://` (`{state_dir}/charging.sqlite3`), `sqlite:///PATH` (a file), or
    `postgresql://user:password@host:port/db`; raises StoreError (one line) otherwise."""
    scheme = url.split(":", 1)[0].lower() if url else "sqlite"
    if scheme == "sqlite":
        # As SQLAlchemy spells it: sqlite:///relative/path, sqlite:////absolute/path.
        path = unquote(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else ""
        if not path:
            return SqliteStore.in_dir(state_dir, limits)
        return SqliteStore(Path(path), limits)
    if scheme in ("postgresql", "postgres"):
        from bridge.charging.store.postgres import PostgresStore

        return PostgresStore(url, limits)
    raise StoreError(f"--store {url!r}: use sqlite:///PATH or postgresql://user:pw@host:port/db")
