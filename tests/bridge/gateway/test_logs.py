"""Structured logging: JSON lines carry the `extra` fields."""

from __future__ import annotations

import json
import logging

import pytest

from bridge.logs import setup_logging


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("json", "debug")
        logging.getLogger("bridge.test").info("device online", extra={"device_id": "04AB373B"})
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["message"] == "device online" and line["device_id"] == "04AB373B"
        assert line["level"] == "info" and line["ts"].endswith("Z")
        setup_logging("text", "info")
        logging.getLogger("bridge.test").info("hello", extra={"peer": "tcp:1.2.3.4:5"})
        assert "hello peer=tcp:1.2.3.4:5" in capsys.readouterr().err
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
