"""Steady disk use of the charging store's dedupe state for a fleet, at a compressed clock;
prints one JSON object.

The event mix of N chargers with P ports each (DNY defaults, docs/protocol): a heartbeat
every 3 min per charger carrying one `status` port event per port; a `power` event (0x06)
every 5 min per charging port; `charging_share` of the ports charging, sessions of
`session_h` hours, each with a `started` order event and a `settled` one (whose settlement key
is kept `dedup_window_s`). Every event message gets a fingerprint kept `redelivery_window_s`.
The store (SqliteStore with the service's default limits, synchronous=FULL) gets one commit
per simulated second and a prune every simulated minute, as the service does.

The steady state of the settlement keys takes `dedup_window_s` (2 days) to build, that of the
message fingerprints `redelivery_window_s` (15 min): the run first writes 2 days of
settlements (no message traffic: it changes nothing they leave behind), then `--hours` of
the full mix. Reported: rows by kind, the file's size (database + WAL) and bytes per row.

    .venv/bin/python bench/dedupe_disk.py [--chargers 10000] [--ports 10] [--hours 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.charging.store import DedupeLimits, SqliteStore

T0 = 1_800_000_000.0


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chargers", type=int, default=10_000)
    ap.add_argument("--ports", type=int, default=10)
    ap.add_argument("--hours", type=float, default=1.0, help="simulated hours of the full mix")
    ap.add_argument("--charging-share", type=float, default=0.3)
    ap.add_argument("--session-h", type=float, default=4.0)
    args = ap.parse_args()
    limits = DedupeLimits()
    ports = args.chargers * args.ports
    charging = ports * args.charging_share
    status_per_s = ports / 180.0
    power_per_s = charging / 300.0
    settled_per_s = charging / (args.session_h * 3600.0)
    orders_per_s = 2 * settled_per_s  # started + settled order events
    messages_per_s = status_per_s + power_per_s + orders_per_s
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "charging.sqlite3"
        store = SqliteStore(path, limits)
        counter = 0
        debt = {"msg": 0.0, "settled": 0.0}

        def keys(kind: str, rate: float, seconds: float) -> list[str]:
            nonlocal counter
            debt[kind] += rate * seconds
            n = int(debt[kind])
            debt[kind] -= n
            out = []
            for _ in range(n):
                counter += 1
                if kind == "msg":
                    out.append("msg:" + hashlib.sha256(b"%d" % counter).hexdigest())
                else:
                    out.append(f"settled:{counter % args.chargers:08X}:1:{counter:032X}")
            return out

        # Phase 1: the settlement keys of a dedupe window, a commit per simulated minute.
        now = T0
        end1 = T0 + limits.settlement_window_s
        while now < end1:
            store.commit(now=now, seen=keys("settled", settled_per_s, 60.0))
            if int(now - T0) % 3600 == 0:
                store.prune_seen(now)
            now += 60.0
        # Phase 2: the full mix, a commit per simulated second, a prune per minute.
        end2 = now + args.hours * 3600.0
        tick = 0
        while now < end2:
            seen = keys("msg", messages_per_s, 1.0) + keys("settled", settled_per_s, 1.0)
            store.commit(now=now, seen=seen)
            tick += 1
            if tick % 60 == 0:
                store.prune_seen(now)
            now += 1.0
        store.prune_seen(now)
        db = store._db
        msg_rows = db.execute(
            "SELECT count(*) FROM fingerprints WHERE key >= X'6d' AND key < X'6e'"
        ).fetchone()[0]
        rows = store.fingerprint_count()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        total = size(path)
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        page = db.execute("PRAGMA page_size").fetchone()[0]
        store.close()
    print(
        json.dumps(
            {
                "chargers": args.chargers,
                "ports": args.ports,
                "event_messages_per_s": round(messages_per_s, 1),
                "settlements_per_s": round(settled_per_s, 2),
                "redelivery_window_s": limits.redelivery_window_s,
                "settlement_window_s": limits.settlement_window_s,
                "simulated_hours_full_mix": args.hours,
                "message_fingerprints": msg_rows,
                "settlement_keys": rows - msg_rows,
                "store_bytes": total,
                "store_mb": round(total / 1e6, 1),
                "bytes_per_row": round(total / max(rows, 1), 1),
                "free_pages": free,
                "page_size": page,
                "wall_s": round(time.perf_counter() - started, 1),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
