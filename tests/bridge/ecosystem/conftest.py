"""The gateway fixtures (`mqtt`, `gateway`, `device`, `@pytest.mark.gateway(...)`), shared."""

from tests.bridge.gateway.conftest import device, gateway, mqtt, pytest_configure

__all__ = ["device", "gateway", "mqtt", "pytest_configure"]
