"""A real Mosquitto broker for the tests, started from the project's own mosquitto.conf.

Only the listener port, the persistence directory and the password/ACL file paths are
rewritten, so what is tested is what operators deploy: no anonymous access, the shipped ACL
(deploy/mosquitto/chargebridge.acl), and with `tls=True` the shipped TLS listener
(deploy/mosquitto/tls.conf) with certificates from deploy/mosquitto/make-certs.sh. The test
users (`USERS`, known passwords) are created once per test process with
deploy/mosquitto/make-users.sh. The broker can be stopped, killed, paused and restarted on the
same port and store, which the durability and fault tests need.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import aiomqtt

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "mosquitto.conf"
DEPLOY = ROOT / "deploy" / "mosquitto"
ACL = DEPLOY / "chargebridge.acl"
BRIDGE_USER = "chargebridge"
USERS = {
    user: f"{user}-test-password" for user in (BRIDGE_USER, "monitor", "operator", "homeassistant")
}


@cache
def _secrets_dir() -> Path:
    """A private directory for the password file and certificates, shared by the process."""
    path = tempfile.mkdtemp(prefix="chargebridge-broker-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


@cache
def password_file() -> Path:
    path = _secrets_dir() / "passwd"
    specs = [f"{user}:{password}" for user, password in USERS.items()]
    subprocess.run([DEPLOY / "make-users.sh", path, *specs], check=True, capture_output=True)
    return path


@cache
def certificates() -> Path:
    """ca.crt, server.crt and server.key valid for 127.0.0.1 and localhost."""
    path = _secrets_dir() / "certs"
    subprocess.run(
        [DEPLOY / "make-certs.sh", path, "localhost", "127.0.0.1"], check=True, capture_output=True
    )
    return path


def find_mosquitto() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("mosquitto not found: run ./run.sh test, which installs it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set(text: str, key: str, value: str) -> str:
    """Replace the value of every (uncommented) `key ...` line."""
    return re.sub(rf"^{key}\s+.*$", f"{key} {value}", text, flags=re.M)


def render_conf(
    port: int,
    store: Path,
    extra: str = "",
    tls_port: int | None = None,
    passwd: Path | None = None,
) -> str:
    text = CONF.read_text()
    text = _set(text, "listener", f"{port} 127.0.0.1")
    text = _set(text, "persistence_location", f"{store}/")
    text = _set(text, "password_file", str(passwd or password_file()))
    text = _set(text, "acl_file", str(ACL))
    if tls_port is not None:
        certs = certificates()
        tls = (DEPLOY / "tls.conf").read_text()
        tls = _set(tls, "listener", f"{tls_port} 127.0.0.1")
        for key, name in (
            ("cafile", "ca.crt"),
            ("certfile", "server.crt"),
            ("keyfile", "server.key"),
        ):
            tls = _set(tls, key, str(certs / name))
        text += "\n" + tls
    text = re.sub(r"^autosave_interval\s+.*$", "autosave_interval 1", text, flags=re.M)
    if os.geteuid() == 0:
        # As root, mosquitto drops to the `mosquitto` user, which cannot write to the
        # test's private temp dir; keep it as the invoking user instead.
        text += "\nuser root\n"
    return text + "\n" + extra


class Mosquitto:
    """One broker process; `start()` again after `stop()`/`kill()` reuses port and store."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_conf: str = "",
        tls: bool = False,
        passwd: Path | None = None,
    ) -> None:
        """`passwd`: another password file than the test users' (then `url` and `client`
        know no passwords)."""
        self.workdir = workdir
        self.passwd = passwd
        self.port = port or free_port()
        self.tls_port = free_port() if tls else None
        self.store = workdir / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The bridge's URL: the `chargebridge` user, whose ACL covers `chargebridge/#`."""
        return self.url_for(BRIDGE_USER)

    def url_for(self, user: str) -> str:
        return f"mqtt://{user}:{USERS[user]}@127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        assert self.tls_port is not None, "start the broker with Mosquitto(..., tls=True)"
        return f"mqtts://{BRIDGE_USER}:{USERS[BRIDGE_USER]}@127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        return certificates() / "ca.crt"

    def client(self, user: str | None = BRIDGE_USER, **options: Any) -> aiomqtt.Client:
        """A raw aiomqtt client logged in as `user` (None: anonymous)."""
        password = USERS[user] if user is not None else None
        return aiomqtt.Client("127.0.0.1", self.port, username=user, password=password, **options)

    def start(self, timeout: float = 10.0) -> None:
        self.conf_path.write_text(
            render_conf(self.port, self.store, self.extra_conf, self.tls_port, self.passwd)
        )
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

    def wait_saved(self, since: float, timeout: float = 10.0) -> None:
        """Until the broker has written its store (autosave, 1 s here) after `since`
        (time.time()): what a SIGKILL then loses is only what came after that save."""
        db = self.store / "mosquitto.db"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if db.exists() and db.stat().st_mtime > since:
                return
            time.sleep(0.05)  # the broker announces its saves nowhere
        raise TimeoutError(f"mosquitto did not save {db}")

    def wipe_store(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)
        self.store.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)
