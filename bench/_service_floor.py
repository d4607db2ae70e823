"""The CPU floor of the charging service's job (bench/service_stage.py's `floor:1` config, and
through it bench/cpu_per_event.py): the least a hand-written Python service does with the same
parts and the same guarantees, so that the service's CPU per event has a floor measured in
the same run. Not a benchmark itself, and not a product: it knows power events only.

What it keeps of the real service, per event, because the contract or the non-negotiables ask
for it: a QoS 1 subscription on a persistent session, acknowledged by hand only after the
commit (nothing lost); the message's fingerprint (SHA-256 of topic and payload), looked up in
the store before and written with the effect (nothing twice); the JSON parsed; the session's
retained state rebuilt (its head and its last 50 history entries, each entry serialised once,
as the service caches them) and published at QoS 1 with retain; one SQLite transaction per
batch window (WAL, `synchronous=FULL`: a commit survives a power cut) writing the changed
sessions, the fingerprints and the statistics row; the statistics published retained.

What it leaves out: every other command and event, validation of the payload, the state
machine (a power report updates an active session, nothing else), settlements, requests,
timeouts, the power window, Home Assistant, metrics, logging, reconnection, pruning. One
thread, no asyncio: a blocking `poll` on the broker's socket, MQTT written and read as bytes
(bench/_mqtt_floor.py: everything a batch sends goes in one `send`), the batch handled when
its window ends.

    python bench/_service_floor.py --port MQTT_PORT --state-dir DIR [--window-s 0.005]

The window defaults to `CHARGEBRIDGE_BATCH_INTERVAL_S` when set (the service's own setting),
so one variable sets both in `service_stage.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import signal
import socket
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

import _mqtt_floor as mqtt

BASE = "chargebridge"
MAX_EVENTS = 50


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class Session:
    __slots__ = ("events", "head")

    def __init__(self, head: dict[str, Any]) -> None:
        self.head = head
        self.events: deque[str] = deque(maxlen=MAX_EVENTS)

    def text(self) -> str:
        head = json.dumps(self.head, separators=(",", ":"))
        return head[:-1] + ',"events":[' + ",".join(self.events) + "]}"


class Floor:
    def __init__(self, port: int, state_dir: Path, window_s: float) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(state_dir / "floor.sqlite3", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, payload TEXT NOT NULL)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS fingerprints (key BLOB PRIMARY KEY) WITHOUT ROWID"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY, payload TEXT)")
        self.window_s = window_s
        self.sessions: dict[str, Session] = {}
        self.processed = 0
        self.pending: list[tuple[str, int, bytes]] = []  # (topic, packet id, payload)
        self.last_batch = 0.0
        self.running = True
        self.ids = mqtt.PacketIds()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(mqtt.connect("service-floor", clean=False))
        self.reader = mqtt.Reader()
        self.out: list[bytes] = []

    def on_packet(self, kind: int, flags: int, body: bytes) -> None:
        if kind == mqtt.PUBLISH:
            self.pending.append(mqtt.parse_publish(flags, body))
        elif kind == mqtt.CONNACK:
            self.out.append(mqtt.subscribe(self.ids.next(), f"{BASE}/devices/+/event/+"))
            self.publish_stats()

    def publish_stats(self) -> None:
        text = json.dumps(
            {"total_events_processed": self.processed, "active_sessions": len(self.sessions)},
            separators=(",", ":"),
        )
        topic = f"{BASE}/charging/stats".encode()
        self.out.append(mqtt.publish(topic, text.encode(), self.ids.next(), retain=True))

    def handle(self, batch: list[tuple[str, int, bytes]]) -> None:
        keys = [hashlib.sha256(t.encode() + b"\0" + p).digest() for t, _, p in batch]
        marks = ",".join("?" * len(keys))
        query = f"SELECT key FROM fingerprints WHERE key IN ({marks})"
        known = {k for (k,) in self.db.execute(query, keys)}
        changed: dict[str, Session] = {}
        fresh = []
        for (_topic, _id, payload), key in zip(batch, keys, strict=True):
            if key in known:
                continue
            fresh.append((key,))
            known.add(key)
            event = json.loads(payload)
            order = event["order_no"]
            session = self.sessions.get(order)
            if session is None:
                session = self.sessions[order] = Session(
                    {
                        "session_id": order,
                        "device_id": event["device_id"],
                        "port": event["port"],
                        "status": "charging",
                        "start_time": event["ts"],
                    }
                )
            head = session.head
            head["duration_s"] = event["duration_s"]
            head["energy_kwh"] = event["energy_kwh"]
            head["max_power_w"] = event["max_power_w"]
            head["power_w"] = event["power_w"]
            head["voltage_v"] = event["voltage_v"]
            head["current_a"] = event["current_a"]
            head["temperature_c"] = event["temperature_c"]
            head["last_update"] = iso(time.time())
            session.events.append(
                json.dumps(
                    {
                        "ts": head["last_update"],
                        "type": "power",
                        "port": event["port"],
                        "power_w": event["power_w"],
                        "energy_kwh": event["energy_kwh"],
                        "duration_s": event["duration_s"],
                    },
                    separators=(",", ":"),
                )
            )
            changed[order] = session
            self.processed += 1
        texts = [(order, session.text()) for order, session in changed.items()]
        db = self.db
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?)", texts)
        db.executemany("INSERT OR IGNORE INTO fingerprints VALUES (?)", fresh)
        db.execute("INSERT OR REPLACE INTO stats VALUES (1, ?)", (json.dumps(self.processed),))
        db.execute("COMMIT")
        # Committed: the states, then the acknowledgements, all in one send.
        out = self.out
        for order, text in texts:
            topic = f"{BASE}/sessions/{order}".encode()
            out.append(mqtt.publish(topic, text.encode(), self.ids.next(), retain=True))
        out.extend(mqtt.puback(packet_id) for _, packet_id, _ in batch if packet_id)

    def run(self) -> None:
        sock = self.sock
        sock.setblocking(False)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        stats_at = ping_at = time.monotonic()
        while self.running:
            now = time.monotonic()
            due = self.last_batch + self.window_s
            if self.pending and now >= due:
                batch, self.pending = self.pending, []
                self.last_batch = now
                self.handle(batch)
            if now - stats_at >= 1.0:
                stats_at = now
                self.publish_stats()
            if now - ping_at >= 30.0:
                ping_at = now
                self.out.append(mqtt.PINGREQ_PACKET)
            if self.out:
                data, self.out = b"".join(self.out), []
                sock.setblocking(True)
                sock.sendall(data)
                sock.setblocking(False)
            wait = max(0.0, due - now) if self.pending else 1.0
            if not poller.poll(wait * 1000):
                continue
            while True:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    break
                if not data:
                    raise SystemExit("the broker closed the connection")
                for packet in self.reader.feed(data):
                    self.on_packet(*packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    window = float(os.environ.get("CHARGEBRIDGE_BATCH_INTERVAL_S") or 0.005)
    parser.add_argument("--window-s", type=float, default=window)
    args = parser.parse_args()
    floor = Floor(args.port, args.state_dir, args.window_s)

    def stop(*_: object) -> None:
        floor.running = False

    signal.signal(signal.SIGTERM, stop)
    floor.run()


if __name__ == "__main__":
    main()
