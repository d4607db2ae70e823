"""psycopg 3 (binary) vs asyncpg for the charging store's real operations; prints one JSON object.

Against a private PostgreSQL cluster (tests/postgres.py: initdb + pg_ctl, fsync on), both
drivers run, in the same run and on the same tables, what the store does per batch of
messages: one transaction that upserts N session rows (~2 KB JSON each), inserts N
fingerprints (`ON CONFLICT DO NOTHING`) and updates the one statistics row; and the
`seen_among` lookup of N fingerprints (`= ANY($1)`). Reported: transactions (and lookups) per
second and the per-row cost, median of the repeats. psycopg runs its synchronous API (what
the store calls from the event loop, like sqlite3) and its async API; asyncpg has only async.

    .venv/bin/python bench/pg_driver.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import psycopg

from tests.postgres import PostgresCluster

DDL = """
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL);
INSERT INTO stats VALUES (1, '{}') ON CONFLICT DO NOTHING;
"""
UPSERT = (
    "INSERT INTO sessions VALUES ($1, $2) "
    "ON CONFLICT (session_id) DO UPDATE SET payload = EXCLUDED.payload"
)
SEEN = "INSERT INTO seen VALUES ($1, $2) ON CONFLICT DO NOTHING"
STATS = "UPDATE stats SET payload = $1 WHERE id = 1"
LOOKUP = "SELECT key FROM seen WHERE key = ANY($1)"
PAYLOAD = json.dumps({"events": [{"ts": i, "type": "power", "power_w": 200.0} for i in range(40)]})


def pct(s: str) -> str:
    """psycopg uses %s placeholders."""
    for i in range(9, 0, -1):
        s = s.replace(f"${i}", "%s")
    return s


def rows(n: int, round_: int, tag: str) -> tuple[list[tuple[str, str]], list[tuple[str, float]]]:
    sessions = [(f"{tag}-s{i}", PAYLOAD) for i in range(n)]
    seen = [(f"{tag}-r{round_}-k{i}", time.time()) for i in range(n)]
    return sessions, seen


def bench_psycopg_sync(url: str, n: int, rounds: int) -> dict[str, float]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(DDL)
    tx, lk = [], []
    for r in range(rounds):
        sessions, seen = rows(n, r, "ps")
        t = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(pct(UPSERT), sessions)
            cur.executemany(pct(SEEN), seen)
            cur.execute(pct(STATS), (f'{{"n": {r}}}',))
        tx.append(time.perf_counter() - t)
        keys = [k for k, _ in seen] + [f"missing-{i}" for i in range(n)]
        t = time.perf_counter()
        found = conn.execute(pct(LOOKUP), (keys,)).fetchall()
        lk.append(time.perf_counter() - t)
        assert len(found) == n
    conn.close()
    return summary(tx, lk, n)


async def bench_psycopg_async(url: str, n: int, rounds: int) -> dict[str, float]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    tx, lk = [], []
    for r in range(rounds):
        sessions, seen = rows(n, r, "pa")
        t = time.perf_counter()
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(pct(UPSERT), sessions)
            await cur.executemany(pct(SEEN), seen)
            await cur.execute(pct(STATS), (f'{{"n": {r}}}',))
        tx.append(time.perf_counter() - t)
        keys = [k for k, _ in seen] + [f"missing-{i}" for i in range(n)]
        t = time.perf_counter()
        cur = await conn.execute(pct(LOOKUP), (keys,))
        found = await cur.fetchall()
        lk.append(time.perf_counter() - t)
        assert len(found) == n
    await conn.close()
    return summary(tx, lk, n)


async def bench_asyncpg(url: str, n: int, rounds: int) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    tx, lk = [], []
    for r in range(rounds):
        sessions, seen = rows(n, r, "ap")
        t = time.perf_counter()
        async with conn.transaction():
            await conn.executemany(UPSERT, sessions)
            await conn.executemany(SEEN, seen)
            await conn.execute(STATS, f'{{"n": {r}}}')
        tx.append(time.perf_counter() - t)
        keys = [k for k, _ in seen] + [f"missing-{i}" for i in range(n)]
        t = time.perf_counter()
        found = await conn.fetch(LOOKUP, keys)
        lk.append(time.perf_counter() - t)
        assert len(found) == n
    await conn.close()
    return summary(tx, lk, n)


def summary(tx: list[float], lk: list[float], n: int) -> dict[str, float]:
    t, lookup = statistics.median(tx), statistics.median(lk)
    return {
        "tx_per_s": round(1 / t, 1),
        "tx_ms": round(t * 1000, 3),
        "us_per_row": round(t / n * 1e6, 1),
        "lookup_ms": round(lookup * 1000, 3),
    }


def run(coro_or_fn: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
    return asyncio.run(coro_or_fn())  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds = 15 if args.quick else 60
    cluster = PostgresCluster(fsync=True).start()
    try:
        out: dict[str, object] = {"rounds": rounds}
        for n in (1, 50, 500):
            url = cluster.fresh_database()
            # Interleaved, so that load from elsewhere on the machine hits all three alike.
            res = {"psycopg_sync": [], "psycopg_async": [], "asyncpg": []}  # type: ignore[var-annotated]
            for _ in range(3):
                res["psycopg_sync"].append(bench_psycopg_sync(url, n, rounds // 3))
                res["psycopg_async"].append(asyncio.run(bench_psycopg_async(url, n, rounds // 3)))
                res["asyncpg"].append(asyncio.run(bench_asyncpg(url, n, rounds // 3)))
            out[f"batch_{n}"] = {
                name: {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
                for name, runs in res.items()
            }
        print(json.dumps(out, indent=2))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
