"""docs/protocol.md's coverage table matches the registry (one row per command code)."""

from __future__ import annotations

from pathlib import Path

from protocol import Sender
from protocol.commands.registry import COMMAND_NAMES, models_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _cell(command: int, sender: Sender) -> str:
    return " / ".join(f"`{cls.__name__}`" for cls in models_for(command, sender)) or "—"


def test_coverage_table_matches_registry() -> None:
    text = DOC.read_text(encoding="utf-8")
    for command, name in COMMAND_NAMES.items():
        row = (
            f"| 0x{command:02X} | `{name}` | {_cell(command, Sender.SERVER)} | "
            f"{_cell(command, Sender.DEVICE)} |"
        )
        assert row in text, row
