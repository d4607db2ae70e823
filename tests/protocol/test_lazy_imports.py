"""The codec imports its model modules on first use: every public name must still resolve."""

from __future__ import annotations

import subprocess
import sys

import protocol
from protocol.commands import registry


def test_every_public_name_resolves_to_the_class_in_its_module() -> None:
    for name in protocol.__all__:
        value = getattr(protocol, name)
        if not isinstance(value, type):
            continue  # StreamItem, a union
        assert getattr(sys.modules[value.__module__], name) is value, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    for owner in (protocol, registry):
        try:
            owner.NoSuchThing  # noqa: B018
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        else:
            raise AssertionError(f"{owner.__name__}.NoSuchThing resolved")


def test_decoding_a_heartbeat_imports_only_its_model_module() -> None:
    # A fresh interpreter: this test process has imported everything already.
    code = (
        "import sys\n"
        "from protocol import Sender, decode_payload\n"
        "decode_payload(0x21, bytes.fromhex('57080101005A'), Sender.DEVICE)\n"
        "print(sorted(m for m in sys.modules if m.startswith('protocol.commands.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = eval(out)  # a printed list of str
    assert "protocol.commands.heartbeats" in loaded
    assert "protocol.commands.params" not in loaded
    assert "protocol.commands.host" not in loaded
