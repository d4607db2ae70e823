"""A real PostgreSQL for the tests: a private cluster in a temp dir, like tests/broker.py.

`initdb` + `pg_ctl` from Debian's `postgresql` package (./run.sh test installs it), on a
random port on 127.0.0.1, with its socket in the same temp dir, so nothing of the machine's
own PostgreSQL (if any) is touched. As root, the cluster runs as the `postgres` user (the
server refuses to run as root): the temp dir is chowned to it and the binaries are run through
`runuser -u postgres --`. `PostgresCluster.url(db)` gives a `postgresql://` URL for the store;
`fresh_database()` makes an empty database per test, so one cluster serves the whole session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.broker import free_port

USER = "chargebridge"
PASSWORD = "chargebridge-test-password"


def find_bin(name: str) -> str:
    """The newest installed server's binary (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version)
    if found:
        return found[-1]
    which = shutil.which(name)
    if which:
        return which
    raise RuntimeError(f"{name} not found: run ./run.sh test, which installs postgresql")


def _version(path: str) -> float:
    try:
        return float(Path(path).parts[4])
    except (IndexError, ValueError):
        return 0.0


class PostgresCluster:
    """initdb, start, stop; a superuser `chargebridge` with a password over TCP."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync  # off in tests (speed), on in benchmarks (what production does)
        self.dir = Path(tempfile.mkdtemp(prefix="chargebridge-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
            self.dir.chmod(0o700)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        return subprocess.run(
            [*prefix, *args], check=True, capture_output=True, text=True, timeout=120
        )

    def start(self) -> PostgresCluster:
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            find_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50"
        )
        if not self.fsync:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        self._run(
            find_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(find_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def fresh_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
