"""The shipped site bridge (deploy/mosquitto/site-bridge.conf) agrees with the shipped ACL:
every topic it forwards is one the central broker lets the `site-bridge` user publish or
read, QoS 1 each way, persistent with a fixed client id."""

from __future__ import annotations

import re

from tests.broker import ACL, DEPLOY

CONF = (DEPLOY / "site-bridge.conf").read_text()


def options() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in CONF.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value.strip())
    return found


def acl_of(user: str) -> set[tuple[str, str]]:
    """(access, pattern) of `user`'s lines in the ACL."""
    block = re.search(rf"^user {user}\n((?:topic .*\n?)+)", ACL.read_text(), flags=re.M)
    assert block, f"no user {user} in {ACL.name}"
    return {tuple(line.split()[1:3]) for line in block.group(1).splitlines()}


def test_persistent_tls_bridge_with_a_fixed_client_id() -> None:
    opts = options()
    assert opts["cleansession"] == ["false"] and opts["local_cleansession"] == ["false"]
    assert opts["persistence"] == ["true"] and int(opts["max_queued_messages"][0]) >= 100000
    assert len(opts["remote_clientid"]) == 1 and opts["remote_clientid"][0]
    assert opts["bridge_cafile"] and opts["bridge_insecure"] == ["false"]
    assert opts["bridge_protocol_version"] == ["mqttv50"]
    assert opts["remote_username"] == ["site-bridge"]


def test_every_bridged_topic_is_qos_1_and_allowed_by_the_central_acl() -> None:
    allowed = acl_of("site-bridge")
    topics = [line.split() for line in options()["topic"]]
    assert {direction for _, direction, _ in topics} == {"out", "in"}
    for pattern, direction, qos in topics:
        assert qos == "1", pattern
        access = "write" if direction == "out" else "read"
        assert (access, pattern) in allowed, f"{pattern} ({direction}) not in the ACL"
    # requests come in, never go out; retained state goes out, never comes in
    ins = {p for p, d, _ in topics if d == "in"}
    assert ins == {"chargebridge/devices/+/request/#"}
