"""The device registry stays bounded whatever physical ids peers invent."""

from __future__ import annotations

from bridge.gateway.registry import Registry


def test_offline_devices_are_forgotten_beyond_the_bound() -> None:
    registry = Registry(max_devices=100)
    online = registry.device(1)
    assert online is not None
    online.online = True
    for pid in range(2, 1000):
        dev = registry.device(pid)
        assert dev is not None
        dev.last_rx = pid
    assert len(registry.devices) <= 100
    assert 1 in registry.devices  # an online device is never forgotten
    assert 999 in registry.devices and 2 not in registry.devices  # the most silent go first


def test_a_new_device_is_refused_when_all_known_ones_are_online() -> None:
    registry = Registry(max_devices=3)
    for pid in (1, 2, 3):
        dev = registry.device(pid)
        assert dev is not None
        dev.online = True
    assert registry.device(4) is None
    assert registry.device(2) is not None  # known devices are still served
    registry.devices[1].online = False
    assert registry.device(4) is not None and 1 not in registry.devices
