"""The browser dashboard (`--web HOST:PORT`, docs/dashboard.md).

A static single-page app plus a relay that carries MQTT over WebSocket to the configured
broker, so everything the page shows or does goes through the MQTT contract and the broker's
users and ACL apply.
"""

from bridge.web.server import (
    DashboardServer,
    WebUnit,
    dashboard,
    parse_web_address,
    with_dashboard,
)

__all__ = ["DashboardServer", "WebUnit", "dashboard", "parse_web_address", "with_dashboard"]
