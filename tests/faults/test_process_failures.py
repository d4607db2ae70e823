"""The process as systemd sees it: no role dies silently, start-up failures are one line.

Real `python -m bridge run|service` processes against the test's Mosquitto. A fault is
injected by running the command through a small wrapper (`-c`) that replaces one function
before `bridge.cli.main` runs, exactly as a full disk or a bug would make it raise.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.bridge.charging.harness import BASE, request, watcher
from tests.broker import Mosquitto

TIMEOUT = 30.0

# The service's on-connect path (adoption, then the republish) fails like the state dir on a
# full tmpfs did in issue 15: the MQTT client's connection task used to end without a word.
FULL_DISK = """
import sys
from bridge.charging.service import ChargingService
async def on_connect(self):
    raise OSError(28, "No space left on device")
ChargingService.on_connect = on_connect
from bridge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_args(broker: Mosquitto, state_dir: Path, *extra: str) -> list[str]:
    return [
        "run",
        *("--mqtt", broker.url, "--base-topic", BASE, "--tcp", "127.0.0.1:0"),
        *("--state-dir", str(state_dir), "--stats-interval", "0.05"),
        *extra,
    ]


async def finished(proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> int:
    """The exit status; fails the test if the process is still alive after `timeout`."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise AssertionError("the process is still running") from None


def spawn(args: list[str], log: Path, code: str | None = None) -> subprocess.Popen[bytes]:
    prefix = [sys.executable, "-c", code] if code else [sys.executable, "-m", "bridge"]
    with log.open("ab") as out:
        return subprocess.Popen([*prefix, *args], stdout=out, stderr=subprocess.STDOUT)


async def test_a_failing_on_connect_ends_run_with_one_traceback(
    broker: Mosquitto, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    proc = spawn(run_args(broker, tmp_path / "state"), log, FULL_DISK)
    status = await finished(proc)
    text = log.read_text()
    assert status == 1, text
    assert text.count("Traceback") == 1, text
    assert "No space left on device" in text
    assert "run stopped" in text  # the one line saying what ended the process


async def test_a_second_run_on_the_same_state_dir_does_not_disturb_the_first(
    broker: Mosquitto, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first_log = tmp_path / "first.log"
    first = spawn(run_args(broker, state), first_log)
    try:
        async with watcher(broker) as w, broker.client() as app:
            await w.until(lambda: w.stats, timeout=TIMEOUT)  # the first one's service is up
            second = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "bridge", *run_args(broker, state)],
                capture_output=True,
                timeout=TIMEOUT,
            )
            err = second.stderr.decode()
            assert second.returncode == 1, err
            assert len(err.strip().splitlines()) == 1, err
            assert str((state / "service.lock").resolve()) in err
            # The first one's service was never knocked off the broker and still answers.
            await request(app, "query", {"request_id": "still", "session_id": "0" * 32})
            reply = await w.response("query", "still", timeout=TIMEOUT)
            assert reply["ok"] is False and first.poll() is None
            assert "lost or refused" not in first_log.read_text()
    finally:
        first.terminate()
        await finished(first)


def one_line_failure(args: list[str]) -> str:
    """Run `chargebridge ARGS`, expect exit 1 or 2 and exactly one line on stderr; that line."""
    done = subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, timeout=TIMEOUT
    )
    err = done.stderr.decode()
    assert done.returncode in (1, 2), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_start_up_failures_are_one_line_naming_the_file(broker: Mosquitto, tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("mqtt = [unclosed\n")
    err = one_line_failure(["service", "--config", str(bad_toml)])
    assert str(bad_toml) in err

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    err = one_line_failure(["service", "--mqtt", broker.url, "--state-dir", str(not_a_dir)])
    assert str(not_a_dir) in err and "--state-dir" in err

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "charging.sqlite3").write_bytes(b"this is not a database" * 100)
    err = one_line_failure(["service", "--mqtt", broker.url, "--state-dir", str(corrupt)])
    assert str(corrupt / "charging.sqlite3") in err and "backup" in err

    err = one_line_failure(run_args(broker, not_a_dir))
    assert str(not_a_dir) in err
