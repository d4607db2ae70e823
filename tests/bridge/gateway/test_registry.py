"""The device registry stays bounded whatever physical ids peers invent."""

from __future__ import annotations

from bridge.gateway.registry import Registry


def test_offline_devices_are_forgotten_beyond_the_bound() -> None:
    registry = Registry(max_devices=100)
    online = registry.device(1)
    online.online = True
    for pid in range(2, 1000):
        registry.device(pid).last_rx = pid
    assert len(registry.devices) <= 100
    assert 1 in registry.devices  # an online device is never forgotten
    assert 999 in registry.devices and 2 not in registry.devices  # the most silent go first
