"""A real Mosquitto broker for the tests, started from the project's own mosquitto.conf.

Only the listener port and the persistence directory are rewritten, so what is tested is
what operators deploy. The broker can be stopped, killed, paused and restarted on the same
port and store, which the durability and fault tests need.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "mosquitto.conf"


def find_mosquitto() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("mosquitto not found: run ./run.sh test, which installs it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render_conf(port: int, store: Path, extra: str = "") -> str:
    text = CONF.read_text()
    text = re.sub(r"^listener\s+\d+.*$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = re.sub(
        r"^persistence_location\s+.*$", f"persistence_location {store}/", text, flags=re.M
    )
    text = re.sub(r"^autosave_interval\s+.*$", "autosave_interval 1", text, flags=re.M)
    if os.geteuid() == 0:
        # As root, mosquitto drops to the `mosquitto` user, which cannot write to the
        # test's private temp dir; keep it as the invoking user instead.
        text += "\nuser root\n"
    return text + "\n" + extra


class Mosquitto:
    """One broker process; `start()` again after `stop()`/`kill()` reuses port and store."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.store = workdir / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.conf_path.write_text(render_conf(self.port, self.store, self.extra_conf))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)  # polling a port that has no event to await
        raise RuntimeError("mosquitto did not start listening")

    def _signal(self, sig: int, wait: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if wait:
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its store and exits."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP, wait=False)

    def resume(self) -> None:
        self._signal(signal.SIGCONT, wait=False)

    def wipe_store(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)
        self.store.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)
