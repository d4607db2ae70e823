"""`chargebridge service` as a process: bad options, clean shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from tests.bridge.charging.harness import BASE, watcher
from tests.broker import Mosquitto


def test_bad_option_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "service", "--max-retries", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "max_retries" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "chargebridge-state").exists()


async def test_sigterm_stops_the_service_cleanly(broker: Mosquitto, tmp_path: Path) -> None:
    args = ["-m", "bridge", "service", "--mqtt", broker.url, "--base-topic", BASE]
    args += ["--state-dir", str(tmp_path / "state")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with watcher(broker) as w:
            await w.until(lambda: w.stats, timeout=20)  # up and publishing
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
        assert (tmp_path / "state" / "charging.sqlite3").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
