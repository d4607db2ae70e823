"""The state dir: checked and locked before anything connects to the broker.

Two processes on one state dir would share its SQLite files and, worse, its MQTT client ids:
the second one's connection would knock the first one off the broker before any database
lock refused it. So every role takes `{state_dir}/{role}.lock` (an `flock`, released by the
kernel when the process dies, so a SIGKILL leaves no stale lock) before it opens a store or
a connection. Within one process the lock is re-entrant (`run` takes it, then its service).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bridge.errors import StartupError

# Lock files this process holds: resolved path -> (file descriptor, holders).
_held: dict[Path, tuple[int, int]] = {}


class StateDirLocked(StartupError):
    """Another process holds this state dir's lock."""


def prepare(state_dir: Path) -> None:
    """Create the state dir and check it is writable: one line naming it otherwise."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"state dir {state_dir} is not usable ({reason}): make it writable by this user"
            " or choose another with --state-dir"
        ) from None


@contextlib.contextmanager
def locked(state_dir: Path, role: str) -> Iterator[Path]:
    """Hold `{state_dir}/{role}.lock` for the block; `StateDirLocked` if another process has it."""
    prepare(state_dir)
    path = (state_dir / f"{role}.lock").resolve()
    if path in _held:
        fd, holders = _held[path]
        _held[path] = (fd, holders + 1)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateDirLocked(
                f"{path} is held by another chargebridge process (pid {holder}): stop it,"
                " or give this one another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[path] = (fd, 1)
    try:
        yield path
    finally:
        fd, holders = _held[path]
        if holders > 1:
            _held[path] = (fd, holders - 1)
        else:
            del _held[path]
            os.close(fd)  # releases the flock
